"""Fault injection for the training tests: kill one of *this* run's Ray Train workers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def _owner_pid(checkpoint_dir: Path, rank: int) -> int:
    for candidate in (checkpoint_dir / f"rank-{rank}.json", checkpoint_dir / "checkpoint" / f"rank-{rank}.json"):
        if candidate.is_file():
            return int(json.loads(candidate.read_text())["pid"])
    raise FileNotFoundError(checkpoint_dir)


def kill_worker_after_first_checkpoint(ray_run_dir: str | Path, killed: list[int], rank: int = 1) -> threading.Thread:
    """SIGKILL the given rank's worker once Ray Train has registered a checkpoint.

    Checkpoints name the process that wrote them (``rank-N.json``), so only this run's worker
    is killed, never another Ray job's on the same machine.
    """
    run_dir = Path(ray_run_dir)

    def watch() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                registered = json.loads((run_dir / RAY_SNAPSHOT).read_text())["checkpoint_results"]
                pid = _owner_pid(run_dir / registered[0]["checkpoint_dir_name"], rank)
            except (OSError, ValueError, KeyError, IndexError):
                time.sleep(0.05)
                continue
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
            return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def pretrain_with_a_killed_worker(cfg, run_id: str) -> tuple[dict, list[int]]:
    """Data prep, then pre-training of ``run_id`` while a worker is killed after the first
    checkpoint; returns the stage's output and the killed pid (empty if none was found)."""
    from components.data_prep.step import run_data_prep
    from components.pretrain.step import run_pretrain

    manifest = run_data_prep(cfg, run_id)
    killed: list[int] = []
    watcher = kill_worker_after_first_checkpoint(os.path.join(cfg.storage.root, run_id, "ray", "pretrain"), killed)
    out = run_pretrain(cfg, run_id, manifest["data_uri"])
    watcher.join(timeout=5)
    return out, killed
