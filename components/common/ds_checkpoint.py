"""DeepSpeed checkpoints reported to Ray Train, shared by the hand-written loops (pre-training,
PPO): save on every rank, name the process that wrote each part, restore after a restart."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

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
        return load_engine_checkpoint(engine, ckpt_dir)


def load_engine_checkpoint(engine, ckpt_dir: str | Path) -> dict[str, Any]:
    """Load a checkpoint ``report_checkpoint`` wrote into ``engine``, reading every file as
    data only (``weights_only_loads``); returns its ``client_state``."""
    install_elastic_loader()
    with weights_only_loads():
        _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=CKPT_TAG)
    return dict(client_state or {})


# ---- resume reads data, never code -------------------------------------------------------------
#
# A checkpoint folder lives on shared storage (``<root>/<run>/ray/``): whoever can write there must
# not get code run in the workers on the next resume. DeepSpeed reads its files with
# ``torch.load(weights_only=False)``, i.e. full pickle; torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``
# turns every ``torch.load`` in the process into its restricted unpickler (tensors, containers,
# numbers, strings and the few classes allowed below), which refuses any other global instead of
# importing it. Model weights that leave a stage are safetensors (``save_pretrained``).


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds something other than data (a pickled callable or class)."""


def checkpoint_safe_globals() -> list[Any]:
    """The non-tensor objects DeepSpeed's own checkpoints contain (measured on 0.19 with ZeRO
    0-3, fp32 and bf16): the ZeRO stage enum and the loss scaler it stores beside the
    optimizer state, and the ``torch.Size`` shapes in its parameter maps."""
    from collections import OrderedDict

    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address, OrderedDict, torch.Size]


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside, every ``torch.load`` of this process uses torch's weights-only unpickler (DeepSpeed's
    explicit ``weights_only=False`` included); a file that needs anything else raises
    ``UnsafeCheckpointError`` naming it, before any of its code could run."""
    import pickle

    import torch

    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            yield
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        raise UnsafeCheckpointError(
            "refusing to resume: a checkpoint file holds more than weights and data "
            f"({lines[0] if lines else exc})"
        ) from exc
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


# ---- elastic checkpoints: restore into another number of workers ------------------------------
#
# With ``deepspeed.elastic_checkpoint`` (set whenever ``ray.min_workers`` allows a smaller worker
# group) ZeRO-1/2 save their optimizer state without DP padding, so it can be merged and re-split
# for another data-parallel size. DeepSpeed 0.19 still refuses such a load (and its merge expects
# the optimizer step per param group, which torch optimizers keep per parameter), so the engine's
# ``load_checkpoint`` is wrapped: for an elastic checkpoint it loads weights (the fp32 partitions of
# all ranks merged and re-split), scheduler and client state, then re-partitions the optimizer
# state itself. Our loops call it through ``restore_checkpoint``; HF/TRL trainers through their
# own resume, which calls the same method. Anything else goes to DeepSpeed unchanged.

_ORIGINAL_LOAD = None


def _resolve_tag(load_dir: str | Path, tag: str | None) -> str | None:
    if tag is not None:
        return tag
    latest = Path(load_dir, "latest")
    return latest.read_text().strip() if latest.is_file() else None


def saved_world_size(load_dir: str | Path, tag: str | None = CKPT_TAG) -> int:
    """How many data-parallel ranks wrote a ZeRO checkpoint (one optimizer file each; 0 without ZeRO)."""
    tag = _resolve_tag(load_dir, tag)
    if tag is None:
        return 0
    return len(list(Path(load_dir, tag).glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt")))


def install_elastic_loader() -> None:
    """Wrap ``DeepSpeedEngine.load_checkpoint`` once per process (see above)."""
    global _ORIGINAL_LOAD
    from deepspeed.runtime.engine import DeepSpeedEngine

    if _ORIGINAL_LOAD is not None:
        return
    _ORIGINAL_LOAD = DeepSpeedEngine.load_checkpoint

    def load_checkpoint(self, load_dir, tag=None, load_module_strict=True, load_optimizer_states=True,
                        load_lr_scheduler_states=True, load_module_only=False, custom_load_fn=None):
        optimizer = getattr(self, "optimizer", None)
        elastic = (
            getattr(optimizer, "elastic_checkpoint", False)
            and hasattr(optimizer, "_restore_elastic_base_optimizer_state")
            and load_optimizer_states and not load_module_only and custom_load_fn is None
        )
        if not elastic:
            return _ORIGINAL_LOAD(self, load_dir, tag, load_module_strict, load_optimizer_states,
                                  load_lr_scheduler_states, load_module_only, custom_load_fn)
        return _load_elastic(self, load_dir, _resolve_tag(load_dir, tag), load_module_strict,
                             load_lr_scheduler_states)

    DeepSpeedEngine.load_checkpoint = load_checkpoint


def _load_elastic(engine, load_dir, tag, load_module_strict, load_lr_scheduler_states):
    import logging

    from deepspeed.checkpoint.constants import BASE_OPTIMIZER_STATE_STEP

    log = logging.getLogger("fromscratch.checkpoint")
    saved_world = saved_world_size(load_dir, tag)
    path, client_state = _ORIGINAL_LOAD(
        engine, load_dir, tag, load_module_strict, False, load_lr_scheduler_states, False, None
    )
    if path is None:
        return path, client_state
    optimizer = engine.optimizer
    states = engine._get_all_zero_checkpoints(load_dir, tag)
    # a torch optimizer keeps its step per parameter, not per group: DeepSpeed's merge expects
    # the group's, so hand it a placeholder and take it out again
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
    if saved_world != engine.dp_world_size:
        log.warning(
            "checkpoint written by %d workers, restored into %d: weights, schedule and step exact, "
            "optimizer state re-partitioned", saved_world, engine.dp_world_size,
        )
    return path, client_state
