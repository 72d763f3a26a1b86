"""DeepSpeed checkpoints reported to Ray Train, shared by the hand-written loops (pre-training,
PPO) and the HF/TRL stages: save on every rank, name the process that wrote each part, restore
after a restart (into another number of workers through DeepSpeed's universal checkpoints)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from components.common.scratch import scratch_dir

log = logging.getLogger(__name__)

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
    after loading it into ``engine``; ``None`` on a fresh start.

    An engine configured by ``load_universal_config`` (the group has another number of workers
    than the one that saved) gets the checkpoint converted to a universal one first."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt_dir:
        if not engine.load_universal_checkpoint():
            return load_engine_checkpoint(engine, ckpt_dir)
        universal = scratch_dir("universal")
        try:
            to_universal(ckpt_dir, CKPT_TAG, universal)
            return load_engine_checkpoint(engine, universal, tag=f"{CKPT_TAG}_universal")
        finally:
            shutil.rmtree(universal, ignore_errors=True)


def load_engine_checkpoint(engine, ckpt_dir: str | Path, tag: str = CKPT_TAG) -> dict[str, Any]:
    """Load a checkpoint ``report_checkpoint`` wrote (or its universal conversion) into
    ``engine``, reading every file as data only (``weights_only_loads``); its ``client_state``.

    DeepSpeed 0.19's universal load under ZeRO-3 gives every parameter group the first group's
    hyperparameters, so the no-decay group (norms, biases) would start decaying after a resume
    (measured: the next step off by lr x weight_decay x |bias|). The groups' own settings are
    ours, not the checkpoint's: they are put back after the load; the learning rate, which the
    schedule owns, is left as loaded. The same load hands one ``step`` tensor to every group's
    state, which torch's AdamW then advances once per group at every step (a later group's bias
    correction runs ahead): each state gets its own copy."""
    universal = engine.load_universal_checkpoint()  # only ZeRO engines load universal checkpoints
    configured = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
                  for g in engine.optimizer.optimizer.param_groups] if universal else []
    with weights_only_loads():
        _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if universal:
        for group, settings in zip(engine.optimizer.optimizer.param_groups, configured):
            group.update(settings)
        untie_step_tensors(engine.optimizer)
    return dict(client_state or {})


def untie_step_tensors(optimizer: Any) -> None:
    """Give every parameter state of the torch optimizer inside ``optimizer`` (DeepSpeed's ZeRO
    optimizer, or accelerate's wrapper around it) its own ``step`` tensor, after a universal load
    handed them one shared tensor (see ``load_engine_checkpoint``)."""
    import torch

    inner = optimizer
    while getattr(inner, "optimizer", None) is not None:
        inner = inner.optimizer
    for state in inner.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


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


# ---- resuming into another number of workers: DeepSpeed's universal checkpoints ----------------
#
# A ZeRO checkpoint holds each data-parallel rank's partition of the optimizer state (and, under
# ZeRO-3, of the weights), cut for the number of ranks that wrote it. When Ray Train restarts the
# group with fewer workers (``ray.min_workers``, a node lost) or more, the checkpoint is converted
# with DeepSpeed's own ``ds_to_universal`` into per-parameter files any partitioning can load, and
# the engine is built with ``checkpoint.load_universal``. Same world size: the checkpoint loads
# as saved, nothing is converted. Each restarted worker converts its own copy (in its scratch
# folder): a rare event (a lost node) that needs no coordination between workers.

_OPTIM_FILES = "*zero_pp_rank_*_mp_rank_00_optim_states.pt"  # one per data-parallel rank (bf16_ prefix too)


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
    return len(list(Path(load_dir, tag).glob(_OPTIM_FILES)))


def restored_world_size() -> int:
    """Data-parallel ranks that wrote the checkpoint Ray Train restored to this worker, counted
    from a listing of its files (nothing is downloaded); 0 without a checkpoint or without ZeRO."""
    import fnmatch

    import pyarrow.fs
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    infos = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(checkpoint.path, recursive=True))
    ranks = {info.base_name for info in infos if fnmatch.fnmatch(info.base_name, _OPTIM_FILES)}
    return len(ranks)


def load_universal_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """Switch a DeepSpeed config to load universal checkpoints (set before ``initialize``)."""
    ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return ds_config


def prepare_resume_config(ds_config: dict[str, Any]) -> bool:
    """Before the engine is built: if Ray Train restored a checkpoint written by another number
    of data-parallel ranks than this group has, configure ``ds_config`` to load it as a universal
    checkpoint (``restore_checkpoint`` and ``universal_resume_dir`` then convert it). True if so."""
    import ray.train

    saved = restored_world_size()
    world = ray.train.get_context().get_world_size()
    if not saved or saved == world:
        return False
    log.warning("checkpoint written by %d workers, resuming with %d: through a universal checkpoint", saved, world)
    load_universal_config(ds_config)
    return True


def to_universal(load_dir: str | Path, tag: str, out_dir: str | Path) -> str:
    """Convert ``<load_dir>/<tag>`` with DeepSpeed's ``ds_to_universal`` into
    ``<out_dir>/<tag>_universal`` (and ``<out_dir>/latest_universal``); the new tag."""
    from deepspeed.checkpoint import ds_to_universal

    universal = f"{tag}_universal"
    args = argparse.Namespace(
        input_folder=str(Path(load_dir, tag)), output_folder=str(Path(out_dir, universal)),
        num_extract_workers=1, num_merge_workers=1,  # in this process: a Ray worker, no forking
        keep_temp_folder=False, strict=True, inject_missing_state=True,
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with weights_only_loads(), contextlib.redirect_stdout(io.StringIO()):
        ds_to_universal.main(args)
    return universal


def universal_resume_dir(hf_checkpoint: str | Path) -> None:
    """An HF/TRL trainer's restored checkpoint folder (its own copy): add the universal
    conversion of its ``global_step*`` DeepSpeed folder beside it, with ``latest_universal``,
    which the engine reads when configured by ``prepare_resume_config``."""
    tag = _resolve_tag(hf_checkpoint, None)
    if tag is None:
        steps = sorted(p.name for p in Path(hf_checkpoint).glob("global_step*") if p.is_dir())
        tag = steps[-1] if steps else None
    if tag is None:
        raise FileNotFoundError(f"{hf_checkpoint}: no DeepSpeed checkpoint folder (global_step*) to convert")
    to_universal(hf_checkpoint, tag, hf_checkpoint)
