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
        saved_world = saved_world_size(ckpt_dir)
        if saved_world and saved_world != engine.dp_world_size:
            return _restore_resized(engine, ckpt_dir, saved_world)
        _, client_state = engine.load_checkpoint(ckpt_dir, tag=CKPT_TAG)
    return dict(client_state or {})


def saved_world_size(ckpt_dir: str | Path) -> int:
    """How many data-parallel ranks wrote a ZeRO checkpoint (one optimizer file each; 0 without ZeRO)."""
    return len(list(Path(ckpt_dir, CKPT_TAG).glob("zero_pp_rank_*_mp_rank_00_optim_states.pt")))


def _restore_resized(engine, ckpt_dir: str, saved_world: int) -> dict[str, Any]:
    """Elastic restart (a node was lost): the checkpoint was written by another number of
    workers. DeepSpeed refuses optimizer state across data-parallel sizes, so load the weights
    (the fp32 partitions of all ranks merged and re-split), scheduler and client state, then
    re-partition the saved optimizer state of an elastic ZeRO-1/2 checkpoint for this size."""
    import logging

    log = logging.getLogger("fromscratch.checkpoint")
    _, client_state = engine.load_checkpoint(ckpt_dir, tag=CKPT_TAG, load_optimizer_states=False)
    optimizer = getattr(engine, "optimizer", None)
    moments = "re-initialised"
    if getattr(optimizer, "elastic_checkpoint", False) and hasattr(optimizer, "_restore_elastic_base_optimizer_state"):
        try:
            from deepspeed.checkpoint.constants import BASE_OPTIMIZER_STATE_STEP

            states = engine._get_all_zero_checkpoints(ckpt_dir, CKPT_TAG)
            # a torch optimizer keeps its step per parameter, not per group: DeepSpeed's merge
            # expects the group's, so hand it a placeholder and take it out again
            no_group_step = BASE_OPTIMIZER_STATE_STEP not in states[0]
            if no_group_step:
                for state in states:
                    state[BASE_OPTIMIZER_STATE_STEP] = None
            optimizer._restore_elastic_base_optimizer_state(states)
            if no_group_step:
                for group in optimizer.optimizer.param_groups:
                    if group.get("step", 0) is None:
                        del group["step"]
            optimizer._link_all_hp_params()
            moments = "re-partitioned"
        except Exception as err:  # noqa: BLE001 - weights are exact; only the moments restart
            log.warning("could not re-partition the optimizer state (%r); it restarts from zero", err)
    log.warning(
        "checkpoint written by %d workers, restored into %d: weights, schedule and step exact, optimizer state %s",
        saved_world, engine.dp_world_size, moments,
    )
    return dict(client_state or {})
