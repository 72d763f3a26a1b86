"""``fromscratch stack up|down|run``: the pipeline against real S3, a tracking server and a
two-node Ray on this machine (``pipelines/local_stack.py``).

``stack run`` is the one command: bring the three up, run the pipeline against them with
``fromscratch run --ray-address …``, check what it left (the lineage from the last checkpoint
back to random init, read from the tracking server's REST API; every checkpoint in the bucket),
and take everything down again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.local_stack import LocalStack, StackError, StackInfo, stop_saved

DEFAULT_DIR = ".fromscratch-stack"
LAST_STAGE = "rlvr"


def _print_env(info: StackInfo) -> None:
    print(f"S3 (SeaweedFS)   {info.s3_endpoint}  bucket {info.bucket}")
    print(f"MLflow server    {info.tracking_uri}  (artifacts in s3://{info.bucket}/mlartifacts)")
    if info.ray_address:
        print(f"Ray              {info.ray_address}  (head + {len([p for p in info.pids if p.startswith('ray-node')])} worker node)")
    print(f"logs             {info.dir}/logs")


def _start(stack: LocalStack) -> StackInfo | None:
    """Start the services and say where they are; None (after one line) if one fails to."""
    try:
        info = stack.start()
    except StackError as err:
        print(f"fromscratch: stack failed to start: {err}", file=sys.stderr)
        return None
    _print_env(info)
    return info


def cmd_stack_up(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    if (directory / "stack.json").is_file():
        try:
            info = StackInfo.load(directory)
            if info.pids:
                print(f"a stack is already recorded in {directory}; `fromscratch stack down --dir {args.dir}` first",
                      file=sys.stderr)
                return 1
        except (StackError, TypeError, ValueError):
            pass
    info = _start(LocalStack(directory, bucket=args.bucket))
    if info is None:
        return 1
    print("\n# use it from this shell:")
    for key, value in info.env().items():
        print(f"export {key}={value}")
    sets = " ".join(f"--set {o}" for o in info.overrides())
    print(f"\nfromscratch run --ray-address {info.ray_address} {sets}")
    print(f"fromscratch stack down --dir {args.dir}")
    return 0


def cmd_stack_down(args: argparse.Namespace) -> int:
    try:
        stop_saved(Path(args.dir).resolve())
    except StackError as err:
        print(f"fromscratch: {err}", file=sys.stderr)
        return 1
    print(f"stack in {args.dir} stopped")
    return 0


# ---- checks of a finished run ----------------------------------------------------------------


def _rest(tracking_uri: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One call of the tracking server's REST API (GET without a body, POST with one)."""
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def _tags(entity: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in entity.get("tags", []) or []}


def rest_lineage(tracking_uri: str, run_id: str, stage: str = LAST_STAGE, experiment: str = "fromscratch") -> list[dict[str, Any]]:
    """The chain from a run's ``stage`` checkpoint back to random init, from REST calls only:
    find the stage's LoggedModel, then follow each model's source run and parent model."""
    exp = _rest(tracking_uri, "experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": experiment}))
    exp_id = exp["experiment"]["experiment_id"]
    runs = _rest(tracking_uri, "runs/search", {
        "experiment_ids": [exp_id], "filter": f"tags.`fromscratch.run_id` = '{run_id}'", "max_results": 100,
    }).get("runs", [])
    run_ids = {r["info"]["run_id"] for r in runs}
    models = _rest(tracking_uri, "logged-models/search", {
        "experiment_ids": [exp_id], "filter": f"name = '{stage}'", "max_results": 100,
    }).get("models", [])
    current = next((m["info"]["model_id"] for m in models if m["info"].get("source_run_id") in run_ids), None)
    if current is None:
        raise RuntimeError(f"no '{stage}' model of run {run_id} at {tracking_uri}")
    chain: list[dict[str, Any]] = []
    while current:
        model = _rest(tracking_uri, f"logged-models/{current}")["model"]
        tags = _tags(model["info"])
        source = model["info"].get("source_run_id")
        run = _rest(tracking_uri, "runs/get?" + urllib.parse.urlencode({"run_id": source}))["run"] if source else {}
        inputs = [m["model_id"] for m in (run.get("inputs", {}) or {}).get("model_inputs", []) or []]
        parent = tags.get("fromscratch.parent_model_id") or None
        if parent and inputs and parent not in inputs:
            raise RuntimeError(f"model {current}: parent tag {parent} is not among its run's model inputs {inputs}")
        chain.append({
            "model_id": current,
            "stage": tags.get("fromscratch.stage", model["info"].get("name")),
            "checkpoint_uri": tags.get("fromscratch.checkpoint_uri", ""),
            "source_run_id": source,
            "parent_model_id": parent,
            "artifact_location": model["info"].get("artifact_uri", ""),
        })
        if len(chain) > 20:
            raise RuntimeError("lineage does not end (a cycle?)")
        current = parent
    return chain


def verify_run(info: StackInfo, run_id: str, stage: str = LAST_STAGE) -> dict[str, Any]:
    """What a stack run must leave: lineage to random init over HTTP, and every checkpoint it
    names (plus Ray Train's and MLflow's files) in the bucket."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=info.access_key, secret=info.secret_key, skip_instance_cache=True,
        client_kwargs={"endpoint_url": info.s3_endpoint},
    )
    chain = rest_lineage(info.tracking_uri, run_id, stage)
    problems = []
    if chain[-1]["stage"] != "init":
        problems.append(f"lineage ends at {chain[-1]['stage']}, not init")
    run_prefix = f"{info.storage_root}/{run_id}"
    checkpoints = {}
    for link in chain:
        uri = link["checkpoint_uri"]
        if not uri.startswith(f"{run_prefix}/checkpoints/"):
            problems.append(f"{link['stage']} checkpoint {uri!r} is not in the run's bucket folder")
            continue
        path = uri[len("s3://"):]
        complete = fs.exists(f"{path}/_COMPLETE")
        weights = fs.exists(f"{path}/model.safetensors")
        checkpoints[link["stage"]] = {"uri": uri, "complete": complete, "safetensors": weights}
        if not (complete and weights):
            problems.append(f"{link['stage']} checkpoint {uri} is missing _COMPLETE or model.safetensors")
    bucket_path = f"{info.bucket}/runs/{run_id}"
    stored = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket_path}/checkpoints"))
    ray_files = [p for p in fs.find(f"{bucket_path}/ray") if "/checkpoint_" in p]
    mlflow_files = fs.find(f"{info.bucket}/mlartifacts")
    return {
        "lineage": [f"{link['stage']}:{link['model_id']}" for link in chain],
        "chain": chain,
        "checkpoints": checkpoints,
        "checkpoint_folders_in_bucket": stored,
        "ray_checkpoint_files_in_bucket": len(ray_files),
        "mlflow_artifact_files_in_bucket": len(mlflow_files),
        "problems": problems,
    }


def pipeline_command(info: StackInfo, run_id: str, preset: str, overrides: list[str]) -> list[str]:
    sets = [x for o in [*info.overrides(), *overrides] for x in ("--set", o)]
    # a stack run always starts a new run (a fresh stack holds none to resume)
    return [sys.executable, "-m", "pipelines.cli", "run", "--preset", preset, "--new-run-id", run_id,
            "--ray-address", info.ray_address, *sets]


def client_env(info: StackInfo) -> dict[str, str]:
    env = {**os.environ, **info.env()}
    env.pop("RAY_ADDRESS", None)
    return env


def cmd_stack_run(args: argparse.Namespace) -> int:
    from components.common.run_id import check_run_id, new_run_id

    if args.run_id is not None:
        try:
            check_run_id(args.run_id)
        except ValueError as err:
            print(f"fromscratch: {err}; the stack was not started", file=sys.stderr)
            return 2
    run_id = args.run_id or new_run_id()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    directory = Path(args.dir).resolve() if args.dir else None
    stack = LocalStack(directory, bucket=args.bucket)
    info = _start(stack)
    if info is None:
        return 1
    timings["stack_up_s"] = time.perf_counter() - started
    code = 1
    report: dict[str, Any] = {}
    try:
        cmd = pipeline_command(info, run_id, args.preset, list(args.set or []))
        print("$ fromscratch " + " ".join(cmd[3:]), flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=client_env(info), check=False)
        timings["pipeline_s"] = time.perf_counter() - t
        if proc.returncode != 0:
            print(f"fromscratch: the pipeline failed against the stack (exit {proc.returncode})", file=sys.stderr)
            code = proc.returncode
        else:
            t = time.perf_counter()
            report = verify_run(info, run_id)
            timings["verify_s"] = time.perf_counter() - t
            print("\nlineage over HTTP (REST):  " + " → ".join(report["lineage"]))
            for stage, ckpt in report["checkpoints"].items():
                print(f"  {stage:9s} {ckpt['uri']}  complete={ckpt['complete']}")
            print(f"checkpoint folders in the bucket: {', '.join(report['checkpoint_folders_in_bucket'])}")
            print(f"Ray Train checkpoint files in the bucket: {report['ray_checkpoint_files_in_bucket']}; "
                  f"MLflow artifact files in the bucket: {report['mlflow_artifact_files_in_bucket']}")
            for problem in report["problems"]:
                print(f"PROBLEM: {problem}", file=sys.stderr)
            code = 1 if report["problems"] else 0
    finally:
        if args.keep:
            print(f"stack kept running: fromscratch stack down --dir {info.dir}")
        else:
            t = time.perf_counter()
            stack.__exit__(None, None, None)
            timings["stack_down_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    print("timings: " + "  ".join(f"{k}={v:.0f}" for k, v in timings.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"run_id": run_id, "timings": timings, **report}, indent=2))
    return code


def add_stack_commands(sub: argparse._SubParsersAction) -> None:
    stack = sub.add_parser("stack", help="S3 + MLflow server + two-node Ray on this machine (local_stack)")
    ssub = stack.add_subparsers(dest="stack_command", required=True)

    up = ssub.add_parser("up", help="start the stack and leave it running; prints how to use it")
    up.add_argument("--dir", default=DEFAULT_DIR, help=f"the stack's folder (default {DEFAULT_DIR})")
    up.add_argument("--bucket", default="fromscratch")
    up.set_defaults(fn=cmd_stack_up)

    down = ssub.add_parser("down", help="stop a stack started with `stack up`")
    down.add_argument("--dir", default=DEFAULT_DIR)
    down.set_defaults(fn=cmd_stack_down)

    run = ssub.add_parser("run", help="start the stack, run the pipeline against it, check it, stop the stack")
    run.add_argument("--preset", default="tiny")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, repeatable")
    run.add_argument("--run-id", help="id of the new run (default: a fresh one); checked before the stack starts")
    run.add_argument("--dir", help="the stack's folder (default: a temporary one, removed afterwards)")
    run.add_argument("--bucket", default="fromscratch")
    run.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    run.add_argument("--json", help="write lineage, checks and timings to this file")
    run.set_defaults(fn=cmd_stack_run)
