"""Kill-and-resume of pre-training under ZeRO-3 (issue 19): bf16, every parameter partitioned
(persistence threshold 0), gradient checkpointing on, two Ray Train workers over gloo. A worker
is killed after the first checkpoint; the restarted group resumes through DeepSpeed's own
checkpoint load (read weights-only) and publishes a model with all its weights."""

from __future__ import annotations

import os

import pytest
from safetensors.torch import load_file

from components.common import storage
from tests.faults import pretrain_with_a_killed_worker

ZERO3 = [
    "deepspeed.zero_stage=3", "deepspeed.precision=bf16", "deepspeed.stage3_param_persistence_threshold=0",
    "pretrain.gradient_checkpointing=true",
    "pretrain.steps=40", "pretrain.checkpoint_every=10", "pretrain.log_every=10", "pretrain.warmup_steps=5",
]


def test_zero3_pretrain_killed_worker_resumes(make_config, local_ray):
    cfg = make_config(*ZERO3)
    out, killed = pretrain_with_a_killed_worker(cfg, "z3kill")
    assert killed, "no training worker was found to kill"
    assert out["pretrain"]["resumed_from_step"] >= 10
    assert storage.is_complete(out["pretrain"]["uri"])
    # the published model holds every weight (gathered from the shards), the same shapes as init
    final = load_file(os.path.join(out["pretrain"]["uri"], "model.safetensors"))
    init = load_file(os.path.join(cfg.storage.root, "z3kill", "checkpoints", "init", "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in final.items()} == {k: tuple(v.shape) for k, v in init.items()}
    assert all(v.numel() > 0 for v in final.values())
    assert out["pretrain"]["final_train_loss"] < 7.0


def test_zero3_pretrain_resumes_into_fewer_workers_through_universal_checkpoint(make_config, local_ray):
    """Two workers under ZeRO-3 lose one after the first checkpoint and give up (no retries);
    the re-run has one worker: the checkpoint, partitioned for two ranks, is converted to a
    universal checkpoint and loaded (weights, Adam state, step and data position kept)."""
    from components.pretrain.step import run_pretrain

    cfg = make_config(*ZERO3, "ray.max_failures=0")
    with pytest.raises(Exception):
        pretrain_with_a_killed_worker(cfg, "z3shrink")
    ray_dir = os.path.join(cfg.storage.root, "z3shrink", "ray", "pretrain")
    assert os.path.exists(os.path.join(ray_dir, "checkpoint_manager_snapshot.json"))

    one = make_config(*ZERO3, "ray.num_workers=1")
    manifest = storage.read_json(os.path.join(one.storage.root, "z3shrink", "data", "manifest.json"))
    out = run_pretrain(one, "z3shrink", manifest["data_uri"])["pretrain"]
    assert out["resumed_from_step"] >= 10 and out["resumed_universal"] is True
    assert storage.is_complete(out["uri"])
    final = load_file(os.path.join(out["uri"], "model.safetensors"))
    assert all(v.numel() > 0 for v in final.values())
    assert out["final_train_loss"] < 7.0


@pytest.mark.slow  # 80 s; the pre-training case above covers the shared Ray path in the default suite
def test_zero3_sft_resumes_into_fewer_workers_through_universal_checkpoint(make_config, local_ray):
    """The same for a TRL stage: the trainer's own resume reads the universal conversion of its
    2-rank ZeRO-3 checkpoint (``global_step*_universal``, ``latest_universal``) in one worker."""
    from components.data_prep.step import run_data_prep
    from components.pretrain.step import run_pretrain
    from components.sft.step import run_sft
    from tests.faults import kill_worker_after_first_checkpoint

    settings = [
        "deepspeed.zero_stage=3", "deepspeed.stage3_param_persistence_threshold=0",
        "pretrain.steps=20", "pretrain.checkpoint_every=20",
        "data.instructions.num_train=400", "data.instructions.num_heldout=35",
        "sft.steps=40", "sft.checkpoint_every=20", "sft.micro_batch_size=8",
    ]
    cfg = make_config(*settings, "ray.max_failures=0")
    manifest = run_data_prep(cfg, "sftshrink")
    base = run_pretrain(cfg, "sftshrink", manifest["data_uri"])["pretrain"]
    killed: list[int] = []
    watcher = kill_worker_after_first_checkpoint(os.path.join(cfg.storage.root, "sftshrink", "ray", "sft"), killed)
    with pytest.raises(Exception):
        run_sft(cfg, "sftshrink", manifest["data_uri"], base)
    watcher.join(timeout=5)
    assert killed, "no SFT worker was killed"

    out = run_sft(make_config(*settings, "ray.num_workers=1"), "sftshrink", manifest["data_uri"], base)
    assert out["resumed_from_step"] >= 20 and out["resumed_universal"] is True
    assert storage.is_complete(out["uri"])
