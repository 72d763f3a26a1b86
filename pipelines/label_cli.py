"""``fromscratch label``: the preference-collection web page and its export (issue #9).

    fromscratch label --model models:/fromscratch@champion [--prompts FILE | --run-id RUN]
    fromscratch label serve ...                 (the same; without --model: serve stored pairs)
    fromscratch label export --out prefs.jsonl  (JSONL + agreement, logged to MLflow)

The database is ``--db`` or ``FROMSCRATCH_LABEL_DB`` (SQLite file by default, PostgreSQL by
URL); the access token is ``--token`` or ``FROMSCRATCH_LABEL_TOKEN`` (a random one is made and
printed when neither is set). The signing key is ``FROMSCRATCH_LABEL_SECRET`` (needed for
sessions that survive a restart or work across replicas), else random for this process.
"""

from __future__ import annotations

import argparse
import os
import sys

from components.label.settings import DB_ENV, DEFAULT_DB, SECRET_ENV


def _config(args: argparse.Namespace):
    from components.common import storage
    from components.common.config import load_config

    cfg = load_config(args.preset, list(args.set or []))
    cfg.storage.root = storage.normalize(cfg.storage.root)
    return cfg


def _serve_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """The serve options; on the ``serve`` sub-command they default to SUPPRESS so that
    ``label --model X serve`` keeps X (argparse lets a sub-parser's defaults win)."""

    def d(value):
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--model", default=d(None), help="checkpoint folder/URI or registry reference "
                   "(models:/fromscratch@champion, models:/<name>/<version>, models:/m-...); "
                   "without it the stored pairs are served")
    p.add_argument("--model-b", default=d(None), help="a second checkpoint: one reply from each (default: two samples of --model)")
    p.add_argument("--prompts", default=d(None), help="prompts file/folder/URI (.jsonl prompt/messages records or .txt lines)")
    p.add_argument("--run-id", default=d(None), help="use this pipeline run's labelling pool: its training prompts, none of them "
                   "in any held-out suite (default with a registry alias: the run that produced the model)")
    p.add_argument("--num-pairs", type=int, default=d(50), help="at most this many prompts (default 50)")
    p.add_argument("--temperature", type=float, default=d(0.8), help="0 = greedy (default 0.8)")
    p.add_argument("--top-p", type=float, default=d(0.95))
    p.add_argument("--max-new-tokens", type=int, default=d(64))
    p.add_argument("--seed", type=int, default=d(0))
    p.add_argument("--db", default=d(None), help=f"SQLAlchemy URL (default ${DB_ENV} or {DEFAULT_DB})")
    p.add_argument("--token", default=d(None), help="access token (default $FROMSCRATCH_LABEL_TOKEN, else a random one)")
    p.add_argument("--host", default=d("127.0.0.1"), help="bind address (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=d(8765))
    p.add_argument("--cookie-secure", action="store_true", default=d(False), help="HTTPS-only session cookie")
    p.add_argument("--session-ttl-s", type=int, default=d(12 * 3600), help="session lifetime in seconds (default 12 h)")
    p.add_argument("--login-max-failures", type=int, default=d(10),
                   help="wrong tokens from one address within --login-window-s before it is locked out (default 10)")
    p.add_argument("--login-window-s", type=int, default=d(900), help="default 900")
    p.add_argument("--login-lockout-s", type=int, default=d(900), help="how long a locked-out address is refused (default 900)")
    p.add_argument("--no-serve", action="store_true", default=d(False), help="only sample and store the pairs")
    p.add_argument("--preset", default=d("tiny"), help="preset for MLflow/storage settings (default: tiny)")
    p.add_argument("--set", action="append", default=d(None), metavar="KEY=VALUE", help="dotted config override")


def cmd_serve(args: argparse.Namespace) -> int:
    from components.label.repository import Repository
    from components.label.settings import LabelSettings, token_from_env_or_new

    db_url = args.db or os.environ.get(DB_ENV) or DEFAULT_DB
    repo = Repository.from_url(db_url)
    if args.model:
        _generate(args, repo)
    elif args.model_b or args.prompts or args.run_id:
        print("fromscratch: --model-b/--prompts/--run-id need --model", file=sys.stderr)
        return 2
    if args.no_serve:
        return 0
    token, generated = token_from_env_or_new(args.token)
    secret = os.environ.get(SECRET_ENV, "")
    settings = LabelSettings(
        db_url=db_url, token=token, secret=secret, cookie_secure=args.cookie_secure,
        session_ttl_s=args.session_ttl_s, login_max_failures=args.login_max_failures,
        login_window_s=args.login_window_s, login_lockout_s=args.login_lockout_s,
    )
    import uvicorn

    from components.label.app import create_app

    progress = repo.progress("")
    if not progress.total_pairs:
        print("fromscratch: the database holds no pairs yet; start with --model to sample some", file=sys.stderr)
    print(f"labelling page: http://{args.host}:{args.port}/  ({progress.total_pairs} pairs, {progress.total_votes} votes; db {db_url})")
    if generated:
        print(f"access token (set FROMSCRATCH_LABEL_TOKEN to choose one): {token}")
    if not secret:
        print(f"signing key: random for this process ({SECRET_ENV} unset): a restart signs everyone out")
    uvicorn.run(create_app(settings, repo), host=args.host, port=args.port, log_level="info")
    return 0


def _generate(args: argparse.Namespace, repo) -> None:
    from components.common.tracking import resolve_tracking_uri
    from components.label.pairs import Sampling, generate_pairs, resolve_model
    from components.label.prompts import label_pool, load_prompts

    cfg = _config(args)
    tracking = resolve_tracking_uri(cfg)
    model_a = resolve_model(args.model, tracking)
    model_b = resolve_model(args.model_b, tracking) if args.model_b else None
    prompts_uri = args.prompts
    if prompts_uri:
        prompts = load_prompts(prompts_uri)[: args.num_pairs]
    else:
        run_id = args.run_id or model_a.run_id
        if not run_id:
            from components.common.errors import DataError

            raise DataError("no prompts: pass --prompts FILE, or --run-id RUN for a run's labelling pool")
        pool, prompts_uri = label_pool(cfg.storage.root, run_id)
        prompts = pool[: args.num_pairs]
    sampling = Sampling(args.temperature, args.top_p, args.max_new_tokens, args.seed)
    key, n = generate_pairs(repo, prompts, model_a, model_b, sampling)
    print(f"pairs: {n} in batch {key[:12]} from {len(prompts)} prompts of {prompts_uri}")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Sample pairs (with --model), then let scripted people with a stated taste vote on them
    through the real page on a loopback port."""
    from components.label.repository import Repository
    from components.label.simulate import label_pairs_over_http

    db_url = args.db or os.environ.get(DB_ENV) or DEFAULT_DB
    repo = Repository.from_url(db_url)
    if args.model:
        _generate(args, repo)
    result = label_pairs_over_http(db_url, args.prefer, args.labelers)
    counts = result.counts()
    print(f"simulated labelers ({args.labelers}, prefer {args.prefer}) cast {len(result.votes)} votes over HTTP: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for error in result.errors:
        print(f"  error: {error}", file=sys.stderr)
    progress = repo.progress("")
    print(f"database {db_url}: {progress.total_pairs} pairs, {progress.total_votes} votes")
    return 1 if result.errors else 0


def cmd_export(args: argparse.Namespace) -> int:
    from components.label.export import agreement_lines, log_export, write_export
    from components.label.repository import Repository

    db_url = args.db or os.environ.get(DB_ENV) or DEFAULT_DB
    result = write_export(Repository.from_url(db_url), args.out, args.mode)
    c = result.counts
    print(
        f"exported {c['records']} pairs to {result.uri} (digest {result.digest[:16]}) from {c['votes']} votes "
        f"by {c['labelers']} labelers; left out: {c['tie_votes']} tie, {c['both_bad_votes']} both-bad votes, "
        f"{c['level_pairs']} pairs with level A/B votes"
    )
    print("\n".join(agreement_lines(result.agreement)))
    if not args.no_mlflow:
        run_id = log_export(result, _config(args))
        print(f"mlflow: dataset 'label-preferences' logged to run {run_id}")
    from components.common import storage

    print(f"train on it: --set \"data.preferences.sources=['{storage.normalize(result.uri)}']\" "
          "[--set data.preferences.mix_generated=true]")
    return 0


def add_label_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``label`` (serve the page) and ``label export``."""
    label = subparsers.add_parser(
        "label", help="the preference-labelling web page (serve) and its export",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _serve_options(label, suppress=False)
    label.set_defaults(fn=cmd_serve)
    sub = label.add_subparsers(dest="label_command", metavar="{serve,export,simulate}")
    serve = sub.add_parser("serve", help="sample pairs (with --model) and serve the page (the default)")
    _serve_options(serve, suppress=True)
    serve.set_defaults(fn=cmd_serve)
    simulate = sub.add_parser(
        "simulate", help="sample pairs (with --model) and let scripted labelers with a stated taste vote "
        "through the real page on loopback (the one-machine loop)")
    _serve_options(simulate, suppress=True)
    simulate.add_argument("--prefer", choices=("shorter", "longer"), default="shorter",
                          help="the simulated people's taste: the reply with fewer (more) words is better")
    simulate.add_argument("--labelers", type=int, default=1, help="simulated people, each votes on every pair")
    simulate.set_defaults(fn=cmd_simulate)
    export = sub.add_parser("export", help="write the votes as prompt/chosen/rejected JSONL and log it to MLflow")
    export.add_argument("--out", required=True, help="output file or URI (.jsonl); agreement goes beside it")
    export.add_argument("--db", default=None, help=f"SQLAlchemy URL (default ${DB_ENV} or {DEFAULT_DB})")
    export.add_argument("--mode", choices=("majority", "each"), default="majority",
                        help="majority: one record per pair (default); each: one per A/B vote")
    export.add_argument("--no-mlflow", action="store_true", help="write the files only")
    export.add_argument("--preset", default="tiny", help="preset for the MLflow settings (default: tiny)")
    export.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted config override")
    export.set_defaults(fn=cmd_export)
