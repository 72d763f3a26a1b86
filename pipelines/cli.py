"""``fromscratch``: run the pipeline locally, compile it for a cluster, read lineage, rebuild a
run's report card.

``run`` executes the real KFP pipeline with ``kfp.local`` (SubprocessRunner, no containers),
after starting Ray once for the whole run so each training stage joins it instead of paying
for its own start-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from components.common import storage
from components.common.config import Config, ConfigError, load_config
from components.common.errors import DataError
from components.common.run_id import check_run_id, new_run_id
from components.data_prep.sources import check_sources
from pipelines.cluster_cli import add_cluster_commands
from pipelines.console import add_console_arguments
from pipelines.label_cli import add_label_commands
from pipelines.stack_cli import add_stack_commands
from components.common.logs import setup_logging

log = logging.getLogger("fromscratch")


def resolved_config(args: argparse.Namespace) -> Config:
    """The preset plus overrides, with a local storage root made absolute (subprocesses and
    Ray workers may run in other working directories)."""
    overrides = list(args.set or [])
    if getattr(args, "ray_address", None):
        overrides.append(f"ray.address={args.ray_address}")
    cfg = load_config(args.preset, overrides)
    cfg.storage.root = storage.normalize(cfg.storage.root)
    return cfg


def _start_ray(cfg: Config) -> None:
    """One Ray for the pipeline run; stages find it through RAY_ADDRESS."""
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    from components.common.ray_launch import ensure_ray
    import ray

    ensure_ray(cfg)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def _check_run_id_arg(args: argparse.Namespace) -> str | None:
    """The problem with ``--run-id``/``--new-run-id``, or None: checked before anything loads."""
    given = args.run_id if args.run_id is not None else args.new_run_id
    if args.rerun_changed and args.run_id is None:
        return "--rerun-changed only applies to a resume (--run-id ID)"
    if given is None:
        return None
    try:
        check_run_id(given)
    except ValueError as err:
        return str(err)
    return None


def _open_run(cfg: Config, args: argparse.Namespace) -> tuple[str, str]:
    """``(run_id, run_dir)`` of the run to start or resume; ``RunRefused`` when it may not.

    ``--run-id`` resumes a run that exists under the storage root (comparing its configuration
    with the one recorded at its start); ``--new-run-id`` (or no id) starts a new one and
    records its configuration."""
    from components.common import run_record

    root = cfg.storage.root
    if args.run_id is not None:
        run_id = args.run_id
        run_dir = storage.join(root, run_id)
        if not storage.exists(run_dir):
            raise RunRefused(
                f"no run '{run_id}' under the storage root {root}: nothing to resume (check the id "
                f"and storage.root; `--new-run-id {run_id}` starts a new run under this id)"
            )
        try:
            plan = run_record.check_resume(cfg, run_dir, run_id, rerun_changed=args.rerun_changed)
        except run_record.ResumeError as err:
            raise RunRefused(str(err)) from None
        if not plan.recorded:
            log.warning("run %s has no recorded configuration (%s); recording this one", run_id,
                        run_record.record_uri(run_dir))
        if plan.rerun:
            from components.common.tracking import Tracker

            stages = [name for stage in plan.rerun for name in run_record.MLFLOW_STAGES[stage]]
            Tracker(cfg).retire_stage_runs(run_id, stages)
            print(f"configuration changed ({', '.join(plan.changed)}): re-running {', '.join(plan.rerun)}",
                  flush=True)
        return run_id, run_dir
    run_id = args.new_run_id or new_run_id()
    run_dir = storage.join(root, run_id)
    if storage.exists(run_dir):
        raise RunRefused(
            f"a run '{run_id}' already exists under the storage root {root}: resume it with "
            f"`--run-id {run_id}`, or choose another id"
        )
    run_record.write_record(cfg, run_dir, run_id)
    return run_id, run_dir


class RunRefused(RuntimeError):
    """The run id or the recorded configuration forbids this start; nothing was started."""


def cmd_run(args: argparse.Namespace) -> int:
    problem = _check_run_id_arg(args)
    if problem:
        print(f"fromscratch: {problem}; nothing was started", file=sys.stderr)
        return 2
    cfg = resolved_config(args)
    storage.use_endpoint(cfg.storage.s3_endpoint_url)
    check_sources(cfg.data.sources)
    if not args.skip_preflight:
        from components.common.preflight import PreflightError, run_preflight

        try:
            run_preflight(cfg)
        except PreflightError as err:
            print(f"fromscratch: preflight failed, nothing was started:\n{err}", file=sys.stderr)
            return 2
    try:
        run_id, run_dir = _open_run(cfg, args)
    except RunRefused as err:
        print(f"fromscratch: {err}", file=sys.stderr)
        return 2
    return _execute(args, cfg, run_id, run_dir)


def _execute(args: argparse.Namespace, cfg: Config, run_id: str, run_dir: str) -> int:
    """Run the pipeline under the live view (pipelines/console.py): everything the processes
    print goes to the run's log file, the console gets progress, stage ends and the summary."""
    from kfp import local

    from pipelines.console import live_view, log_tail
    from pipelines.pipeline import build_pipeline

    started = time.perf_counter()
    if storage.is_remote(cfg.storage.root):
        pipeline_root = str(Path(".fromscratch-kfp").resolve() / run_id)
    else:
        pipeline_root = storage.join(run_dir, "kfp")
    pipeline = build_pipeline(cfg)
    verbose = getattr(args, "verbose", False)
    with live_view(run_dir, run_id, verbose, getattr(args, "progress_every", 60.0)) as view:
        view.print(f"fromscratch run {run_id}  preset={cfg.preset}  storage={run_dir}")
        failed: RuntimeError | None = None
        _start_ray(cfg)
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
        try:
            pipeline(config_json=cfg.to_json(), run_id=run_id)
        except RuntimeError as err:
            failed = err
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    if failed is not None:
        if not verbose:
            print(f"--- the last lines of {view.files.log}:", file=sys.stderr)
            print("\n".join(log_tail(view.files.log)), file=sys.stderr)
        print(f"fromscratch: run {run_id} failed: {failed}", file=sys.stderr)
        print(f"  full log: {view.files.log}" if not verbose else "  the failing task's error is printed above", file=sys.stderr)
        print("  finished stages are kept, and", file=sys.stderr)
        print(f"  `fromscratch run --run-id {run_id}` resumes from them", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    from components.common.tracking import Tracker
    from pipelines.reporting import run_summary

    print("\n".join(run_summary(Tracker(cfg), run_id, run_dir, elapsed, view.files.log, full=verbose)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild a run's report card from MLflow (results, curves, promotion) and write it."""
    from components.common.tracking import Tracker
    from components.evaluate.report_card import publish_report_card
    from pipelines.reporting import ReportError, default_report_dir, rebuild_report_card

    try:
        check_run_id(args.run_id)  # the card is written under <root>/<run-id>/eval
    except ValueError as err:
        print(f"fromscratch: {err}", file=sys.stderr)
        return 2
    cfg = resolved_config(args)
    try:
        card = rebuild_report_card(Tracker(cfg), args.run_id)
    except ReportError as err:
        print(f"fromscratch: {err}", file=sys.stderr)
        return 1
    out = args.out or default_report_dir(cfg, args.run_id)
    if not storage.is_remote(out):
        out = str(Path(out).resolve())
    paths = publish_report_card(card, out)
    print(f"report card of run {args.run_id}:")
    print(f"  html:     {paths['html']}")
    print(f"  markdown: {paths['markdown']}")
    for name in card.images:
        print(f"  plot:     {storage.join(out, name)}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    from pipelines.pipeline import build_pipeline

    cfg = load_config(args.preset, list(args.set or []))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg), str(output))
    print(f"compiled {cfg.preset} pipeline to {output}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from components.common.tracking import Tracker

    champion = args.target == "champion"
    if not args.target.startswith("m-") and not champion:
        try:
            check_run_id(args.target)  # it goes into an MLflow search filter
        except ValueError as err:
            print(f"fromscratch: {err}", file=sys.stderr)
            return 2
    cfg = resolved_config(args)
    tracker = Tracker(cfg)
    model_id = args.target
    if champion:
        from components.common.registry import champion_version
        from components.common.tracking import version_model_id

        name, alias = cfg.promotion.model_name, cfg.promotion.alias
        version = champion_version(tracker.client, name, alias)
        if version is None:
            print(f"no model holds {name}@{alias} yet", file=sys.stderr)
            return 1
        model_id = version_model_id(version)
    elif not model_id.startswith("m-"):
        found = tracker.find_model(args.target, args.stage)
        if not found:
            print(f"no finished '{args.stage}' model in run {args.target}", file=sys.stderr)
            return 1
        model_id = found
    chain = tracker.lineage(model_id)
    if args.json:
        print(json.dumps(chain, indent=2))
        return 0
    for depth, link in enumerate(chain):
        arrow = "" if depth == 0 else "  ↑ from "
        print(f"{arrow}{link['stage']}: model {link['model_id']}  run {link['source_run_id']}")
        print(f"      checkpoint: {link['checkpoint_uri']}")
        for ds in link["datasets"]:
            print(f"      dataset:    {ds}")
        reward = link.get("reward_model")
        if reward:  # a PPO policy: the reward model it was trained against, and the votes behind it
            print(f"      ← reward model {reward['model_id']}  run {reward['source_run_id']}"
                  + (f"  (init: {reward['params']['init_from']})" if reward["params"].get("init_from") else ""))
            print(f"          checkpoint: {reward['checkpoint_uri']}")
            votes = reward.get("votes")
            if votes:
                print(f"          ← votes snapshot {votes['digest']}  {votes['uri']}")
                for session in votes["sessions"]:
                    print(f"              ← labelling session {session['session'][:16]}: {session['votes']} votes "
                          f"{session['first_vote'][:19]} .. {session['last_vote'][:19]}, models {', '.join(session['models'])}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved configuration, or with ``--explain`` every setting documented."""
    if args.explain:
        from components.common.config.explain import explain_table

        print(explain_table())
        return 0
    import yaml

    print(yaml.safe_dump(json.loads(resolved_config(args).to_json()), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fromscratch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="tiny", help="preset name or YAML file (default: tiny)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, repeatable")

    run = sub.add_parser("run", help="run the whole pipeline locally (kfp.local + Ray on this machine)")
    common(run)
    ids = run.add_mutually_exclusive_group()
    ids.add_argument(
        "--run-id", metavar="ID",
        help="resume the run ID that exists under storage.root (an error if there is none): finished "
        "stages are reused, training continues from its last checkpoint. The configuration must "
        "match the one recorded at the run's start (<run>/config.json) in every setting that "
        "changes results",
    )
    ids.add_argument(
        "--new-run-id", metavar="ID",
        help="start a new run under this id (an error if it exists); default: a fresh id. Ids: "
        "letters, digits, '-', '_', '.', no '..', at most 128 characters",
    )
    run.add_argument(
        "--rerun-changed", action="store_true",
        help="with --run-id: where the configuration differs from the recorded one in settings that "
        "change results, remove the outputs of the stages they change and run those stages again "
        "(instead of refusing)",
    )
    run.add_argument("--ray-address", help="join an existing Ray cluster instead of starting one")
    run.add_argument(
        "--skip-preflight", action="store_true",
        help="do not check storage, tracking server, Ray and the input files before starting",
    )
    add_console_arguments(run)
    run.set_defaults(fn=cmd_run)

    comp = sub.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    common(comp)
    comp.add_argument("-o", "--output", default="build/fromscratch-pipeline.yaml")
    comp.set_defaults(fn=cmd_compile)

    lin = sub.add_parser("lineage", help="print a checkpoint's chain back to random init")
    common(lin)
    lin.add_argument("target", help="an MLflow model id (m-...), a run id, or 'champion' (the model holding "
                     "promotion.alias)")
    lin.add_argument(
        "--stage", default="rlvr",
        help="with a run id: whose checkpoint (rlvr, ppo, dpo, reward, sft, pretrain, init; default rlvr, the last)",
    )
    lin.add_argument("--json", action="store_true")
    lin.set_defaults(fn=cmd_lineage)

    conf = sub.add_parser("config", help="print the resolved configuration (--explain: every setting documented)")
    common(conf)
    conf.add_argument("--explain", action="store_true", help="a table of every setting: key, type, default, meaning")
    conf.set_defaults(fn=cmd_config)

    rep = sub.add_parser("report", help="rebuild a run's report card (HTML + Markdown + plots) from MLflow")
    common(rep)
    rep.add_argument("run_id", help="the pipeline run id (as printed by `fromscratch run`)")
    rep.add_argument("--out", help="output folder or URI (default: the run's eval folder, else ./report-<run-id>)")
    rep.set_defaults(fn=cmd_report)
    add_cluster_commands(sub)
    add_label_commands(sub)
    add_stack_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as err:
        print(f"fromscratch: config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"fromscratch: data error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
