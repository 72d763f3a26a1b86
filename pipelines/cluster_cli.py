"""``fromscratch submit | upload | schedule``: the pipeline on a Kubeflow Pipelines server.

- ``submit``   compile the preset (plus ``--set``) and start one run, optionally ``--wait``.
- ``upload``   compile and register it as a new version of a named pipeline (idempotent: the
               default version name carries the project version, git commit and a hash of the
               compiled YAML, so uploading the same thing twice reuses the version).
- ``schedule`` upload as above, then create the recurring retraining run on that version:
               KFP cron with 6 fields (seconds first), at most one run at a time, no catch-up of
               missed slots; ``--replace`` (default) swaps an earlier schedule of the same name.

``--set`` changes the compiled config (it is baked into the ``config_json`` default, visible in
the YAML and the KFP UI); ``--param NAME=VALUE`` sets a pipeline parameter of this one run or
schedule (``overrides``, ``run_id``). The server is ``--host`` or ``$KFP_HOST``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

from components.common.config import Config, load_config

# What ``--from-champion`` adds to the ``overrides`` parameter: data_prep resolves the
# registry's champion when each scheduled run starts (not now), takes its tokenizer, and
# pre-training continues from its weights (components/common/start.py). A preset can say the
# same with ``pretrain.init_from: champion``.
FROM_CHAMPION_OVERRIDE = "pretrain.init_from=champion"

# What ``--votes-secret NAME`` wires in: every task pod reads the labelling page's database URL
# (and, for the chart's PostgreSQL, its password: libpq reads PGPASSWORD) from that Secret, and
# data prep snapshots the votes through ``env:`` so the URL is never written into the compiled
# pipeline, the preset or MLflow (components/data_prep/votes.py).
VOTES_DB_ENV = "FROMSCRATCH_LABEL_DB"
VOTES_SECRET_KEYS = {VOTES_DB_ENV: VOTES_DB_ENV, "PGPASSWORD": "PGPASSWORD"}

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?#LW]+$")


class ClusterCliError(RuntimeError):
    """A usage problem the user can fix; printed as one line."""


def validate_cron(expr: str) -> str:
    """KFP's scheduler takes 6 fields, seconds first (``0 0 3 * * *`` = daily at 03:00)."""
    expr = " ".join(expr.split())
    if expr.startswith("@"):
        return expr
    fields = expr.split(" ")
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        hint = f" (did you mean '0 {expr}'?)" if len(fields) == 5 else ""
        raise ClusterCliError(
            f"cron '{expr}' must have 6 fields, seconds first, e.g. '0 0 3 * * *'{hint}"
        )
    return expr


def parse_params(items: list[str] | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ClusterCliError(f"--param '{item}' must look like NAME=VALUE")
        name, value = item.split("=", 1)
        params[name.strip()] = value
    return params


def project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fromscratch")
    except PackageNotFoundError:
        return "0.0.0"


def git_commit() -> str | None:
    """The short commit of this checkout (CI sets GITHUB_SHA); None outside git."""
    sha = os.environ.get("GITHUB_SHA")
    if sha:
        return sha[:7]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def default_version_name(package: Path) -> str:
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:8]
    parts = [project_version(), git_commit(), digest]
    return "-".join(p for p in parts if p)


def kfp_host(args: argparse.Namespace) -> str:
    host = args.host or os.environ.get("KFP_HOST")
    if not host:
        raise ClusterCliError("no KFP server: pass --host or set KFP_HOST (e.g. http://ml-pipeline.kubeflow:8888)")
    return host.rstrip("/")


def make_client(host: str, namespace: str) -> Any:
    """The one place a ``kfp.Client`` is made (tests point it at tests/kfp_api_server.py, a
    local HTTP server answering the KFP REST API).

    ``$KFP_TOKEN`` is sent as a bearer token, for a KFP behind an authenticating proxy (CI).
    """
    import kfp

    return kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("KFP_TOKEN") or None)


@contextmanager
def compiled_package(cfg: Config, output: str | None) -> Iterator[Path]:
    """The compiled pipeline YAML: at ``--output`` (kept), or in a temporary folder that is
    removed when the command is done with it (CI submits many times a day)."""
    from pipelines.compiled import compile_pipeline

    with nullcontext(None) if output else tempfile.TemporaryDirectory(prefix="fromscratch-") as tmp:
        path = Path(output) if output else Path(tmp) / "pipeline.yaml"
        compile_pipeline(cfg, path)
        yield path


def run_arguments(args: argparse.Namespace, package: Path) -> dict[str, str]:
    """``--param`` values (checked against the compiled pipeline) plus ``--from-champion``."""
    from pipelines.compiled import read_compiled

    params = parse_params(args.param)
    known = read_compiled(package).parameters
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ClusterCliError(f"unknown pipeline parameter(s) {unknown}; the pipeline takes {sorted(known)}")
    if getattr(args, "from_champion", False):
        chosen = load_config(args.preset, list(args.set or [])).pretrain.init_from
        if chosen not in ("random", "champion"):
            raise ClusterCliError(
                f"--from-champion contradicts pretrain.init_from={chosen} (set in the preset or --set); "
                "drop one of them"
            )
        params["overrides"] = "; ".join(p for p in (params.get("overrides", ""), FROM_CHAMPION_OVERRIDE) if p)
    return params


def _filter_by_name(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def upload_version(client: Any, package: Path, pipeline_name: str, version_name: str, description: str) -> tuple[str, str]:
    """Register ``package`` as ``pipeline_name``/``version_name``; reuse what already exists."""
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(
            str(package), pipeline_name=pipeline_name, description=description
        ).pipeline_id
        print(f"created pipeline {pipeline_name} ({pipeline_id})")
    found = client.list_pipeline_versions(pipeline_id, filter=_filter_by_name(version_name))
    versions = getattr(found, "pipeline_versions", None) or []
    if versions:
        version_id = versions[0].pipeline_version_id
        print(f"pipeline {pipeline_name} already has version {version_name} ({version_id})")
    else:
        version_id = client.upload_pipeline_version(
            str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id, description=description
        ).pipeline_version_id
        print(f"uploaded {pipeline_name} version {version_name} ({version_id})")
    return pipeline_id, version_id


def _config(args: argparse.Namespace) -> Config:
    secret = getattr(args, "votes_secret", None)
    sets = list(args.set or [])
    if not secret:
        return load_config(args.preset, sets)
    return with_votes_secret(load_config(args.preset, [f"data.preferences.votes.source=env:{VOTES_DB_ENV}", *sets]), secret)


def with_votes_secret(cfg: Config, secret: str) -> Config:
    """``cfg`` whose task pods read the label database's URL and password from ``secret``."""
    from components.common.config.kubernetes import SecretEnv

    cfg.kubernetes.extra_secrets = [
        *[s for s in cfg.kubernetes.extra_secrets if s.name != secret], SecretEnv(name=secret, keys=dict(VOTES_SECRET_KEYS)),
    ]
    return cfg


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = _config(args)
    host = kfp_host(args)
    with compiled_package(cfg, args.output) as package:
        arguments = run_arguments(args, package)
        client = make_client(host, args.namespace or cfg.kubernetes.namespace)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=args.run_name,
            experiment_name=args.experiment or cfg.tracking.experiment,
            enable_caching=False,
            service_account=args.service_account or cfg.kubernetes.service_account,
        )
        run_id = result.run_id
        print(f"submitted run {run_id}: {host}/#/runs/details/{run_id}")
        if not args.wait:
            return 0
        run = client.wait_for_run_completion(run_id, timeout=args.timeout)
        state = str(getattr(run, "state", "") or "").upper()
        print(f"run {run_id} finished: {state or 'unknown state'}")
        return 0 if state == "SUCCEEDED" else 1


def cmd_upload(args: argparse.Namespace) -> int:
    cfg = _config(args)
    host = kfp_host(args)
    with compiled_package(cfg, args.output) as package:
        client = make_client(host, args.namespace or cfg.kubernetes.namespace)
        upload_version(
            client, package, args.name or cfg.pipeline.name, args.version or default_version_name(package),
            args.description or f"fromscratch {cfg.preset} preset",
        )
        return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    cfg = _config(args)
    cron = validate_cron(args.cron)
    host = kfp_host(args)
    with compiled_package(cfg, args.output) as package:
        params = run_arguments(args, package)
        client = make_client(host, args.namespace or cfg.kubernetes.namespace)
        pipeline_name = args.name or cfg.pipeline.name
        pipeline_id, version_id = upload_version(
            client, package, pipeline_name, args.version or default_version_name(package),
            f"fromscratch {cfg.preset} preset",
        )
        experiment = client.create_experiment(args.experiment or cfg.tracking.experiment, namespace=args.namespace)
        job_name = args.job_name or f"{pipeline_name}-retrain"
        if args.replace:
            listed = client.list_recurring_runs(
                experiment_id=experiment.experiment_id, filter=_filter_by_name(job_name)
            )
            for old in getattr(listed, "recurring_runs", None) or []:
                client.delete_recurring_run(old.recurring_run_id)
                print(f"replaced recurring run {job_name} ({old.recurring_run_id})")
        recurring = client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=job_name,
            description=f"retrain {pipeline_name} on '{cron}'"
            + (" from the champion" if args.from_champion or cfg.pretrain.init_from == "champion" else ""),
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=params,
            pipeline_id=pipeline_id,
            version_id=version_id,
            enable_caching=False,
            service_account=args.service_account or cfg.kubernetes.service_account,
        )
        print(f"scheduled {job_name} ({recurring.recurring_run_id}) on '{cron}'")
        return 0


def _handle(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Usage mistakes end with one line and exit code 2, like the config errors of cli.main."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ClusterCliError as err:
            print(f"fromscratch {args.command}: {err}", file=sys.stderr)
            return 2

    return wrapped


def add_cluster_commands(subparsers: Any) -> None:
    """Add ``submit``, ``upload`` and ``schedule`` to the ``fromscratch`` CLI."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="tiny", help="preset name or YAML file (default: tiny)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, compiled in; repeatable")
        p.add_argument("--host", help="KFP API server (default: $KFP_HOST)")
        p.add_argument("--namespace", help="KFP namespace (default: kubernetes.namespace)")
        p.add_argument("-o", "--output", help="also keep the compiled YAML here")
        p.add_argument(
            "--votes-secret", metavar="SECRET",
            help=f"people's votes in every run: task pods read {VOTES_DB_ENV} (the labelling page's database "
            "URL) and PGPASSWORD from this Secret and data prep snapshots the votes when the run starts "
            "(data.preferences.votes.source=env:FROMSCRATCH_LABEL_DB)",
        )

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--param", action="append", metavar="NAME=VALUE", help="pipeline parameter; repeatable")
        p.add_argument("--experiment", help="KFP experiment (default: tracking.experiment)")
        p.add_argument("--service-account", help="run as this ServiceAccount (default: kubernetes.service_account)")

    submit = subparsers.add_parser("submit", help="compile and start one run on a KFP server")
    common(submit)
    run_options(submit)
    submit.add_argument("--run-name")
    submit.add_argument("--wait", action="store_true", help="wait for the run; exit 1 unless it succeeds")
    submit.add_argument("--timeout", type=int, default=7 * 24 * 3600, help="seconds --wait waits (default: a week)")
    submit.set_defaults(fn=_handle(cmd_submit))

    upload = subparsers.add_parser("upload", help="compile and upload as a new pipeline version")
    common(upload)
    upload.add_argument("--name", help="pipeline name (default: pipeline.name)")
    upload.add_argument("--version", help="version name (default: <project version>-<commit>-<yaml hash>)")
    upload.add_argument("--description")
    upload.set_defaults(fn=_handle(cmd_upload))

    schedule = subparsers.add_parser("schedule", help="upload, then create the recurring retraining run")
    common(schedule)
    run_options(schedule)
    schedule.add_argument("--cron", required=True, help="6 fields, seconds first: '0 0 3 * * 0' = Sundays 03:00")
    schedule.add_argument("--name", help="pipeline name (default: pipeline.name)")
    schedule.add_argument("--version", help="pipeline version name (default as for upload)")
    schedule.add_argument("--job-name", help="recurring run name (default: <pipeline>-retrain)")
    schedule.add_argument(
        "--from-champion", action="store_true",
        help=f"start retraining from the registry's champion (adds '{FROM_CHAMPION_OVERRIDE}' to overrides)",
    )
    schedule.add_argument("--replace", action=argparse.BooleanOptionalAction, default=True,
                          help="delete an earlier recurring run of the same name first (default: yes)")
    schedule.set_defaults(fn=_handle(cmd_schedule))
