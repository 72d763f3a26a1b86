"""DeepSpeed checkpoints reported to Ray Train, shared by the hand-written loops (pre-training,
PPO): save on every rank, name the process that wrote each part, restore after a restart."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

CKPT_TAG = "ds"
STATE_FILE = "trainer_state.json"


def write_owner(folder: str | Path, rank: int, step: int) -> None:
    """``rank-N.json``: which process (pid, host) wrote this part of a checkpoint — for
    operators reading a failure, and for the fault-injection tests."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "step": step}
    Path(folder, f"rank-{rank}.json").write_text(json.dumps(info))


def report_checkpoint(engine, rank: int, step: int, metrics: dict[str, Any], client_state: dict[str, Any]) -> None:
    """Save the engine's state (model, optimizer, scheduler, ``client_state``) on every rank
    and report it to Ray Train, which merges the ranks' files into one checkpoint."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=CKPT_TAG, client_state=client_state)
        write_owner(tmp, rank, step)
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps({"step": step}))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def restore_checkpoint(engine) -> dict[str, Any] | None:
    """The ``client_state`` of the checkpoint Ray Train handed this (restarted) worker group,
    after loading it into ``engine``; ``None`` on a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt_dir:
        _, client_state = engine.load_checkpoint(ckpt_dir, tag=CKPT_TAG)
    return dict(client_state or {})
