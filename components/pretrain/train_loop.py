"""The pre-training loop that runs inside each Ray Train worker, under DeepSpeed.

Next-token prediction on packed blocks. Each step every worker takes its own slice of a
seeded permutation of the blocks, so the data order depends only on (seed, step): a worker
group restarted from a checkpoint continues exactly where the lost one stopped. Checkpoints
are DeepSpeed checkpoints (model, optimizer and scheduler state, the step) reported to Ray
Train; world rank 0 alone logs metrics to MLflow and writes the final Hugging Face folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common.hf_worker import SUMMARY_FILE, peak_gpu_memory
from components.common.progress import StepTimer
from components.common.scratch import cleans_scratch, scratch_dir

log = logging.getLogger("fromscratch.pretrain")



class BlockSampler:
    """Deterministic global batches: sample positions map onto per-epoch permutations."""

    def __init__(self, num_blocks: int, seed: int, rank: int, world: int, micro_batch: int, grad_accum: int):
        self.num_blocks = num_blocks
        self.seed = seed
        self.rank = rank
        self.world = world
        self.micro_batch = micro_batch
        self.grad_accum = grad_accum
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng(self.seed + epoch).permutation(self.num_blocks)}
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> list[int]:
        base = ((step * self.grad_accum + micro) * self.world + self.rank) * self.micro_batch
        out = []
        for pos in range(base, base + self.micro_batch):
            epoch, offset = divmod(pos, self.num_blocks)
            out.append(int(self._perm(epoch)[offset]))
        return out


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up then cosine decay to ``min_ratio`` of the peak."""

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without decay on norms and biases (a torch optimizer: no DeepSpeed op to compile)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # under ZeRO-3 a parameter is a flat shard: its own shape is in ds_shape
        ndim = len(getattr(param, "ds_shape", param.shape))
        (no_decay if ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def _save_hf_model(
    engine, zero_stage: int, out_uri: str, tokenizer_dir: str, rank: int, summary: dict[str, Any]
) -> None:
    """Write the final Hugging Face folder (safetensors + tokenizer + the training summary the
    stage driver reads) from rank 0."""
    from components.common import storage

    state = None
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # every rank must take part
    if rank != 0:
        return
    module = engine.module
    with tempfile.TemporaryDirectory() as tmp:
        module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        for file in Path(tokenizer_dir).iterdir():
            if file.is_file():
                (Path(tmp) / file.name).write_bytes(file.read_bytes())
        Path(tmp, SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        storage.upload_dir(tmp, out_uri)


@cleans_scratch
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    import deepspeed
    import ray.train

    from components.common import storage
    from components.common.config import Config
    from components.common.ds_checkpoint import report_checkpoint, restore_checkpoint
    from components.common.deepspeed_config import build_deepspeed_config
    from components.common.logs import setup_logging
    from components.common.metrics_sink import MetricsSink
    from components.common.modeling import load_model, zero3_loading
    from components.data_prep.shards import read_shards

    setup_logging()
    cfg = Config.from_json(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.ray.torch_threads_per_worker or max(1, int(cfg.ray.cpus_per_worker))
    torch.set_num_threads(threads)
    pc = cfg.pretrain

    train = read_shards(config["shard_uri"], config["train_files"])
    blocks = torch.from_numpy(train.astype(np.int64))
    sampler = BlockSampler(len(blocks), cfg.seed, rank, world, pc.micro_batch_size, pc.grad_accum)

    ds_config = build_deepspeed_config(cfg.deepspeed, pc.micro_batch_size, pc.grad_accum, pc.precision)
    with tempfile.TemporaryDirectory() as init_dir:
        storage.download_dir(config["init_uri"], init_dir)
        with zero3_loading(ds_config):  # ZeRO-3: each rank keeps only its shard as it loads
            model = load_model(init_dir, attn_implementation=pc.attn_implementation)
        tokenizer_dir = scratch_dir("tok")
        for name in os.listdir(init_dir):
            if "token" in name or name.endswith(".jinja"):
                Path(tokenizer_dir, name).write_bytes(Path(init_dir, name).read_bytes())
    model.config.use_cache = False
    if pc.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(model, pc.lr, pc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(pc.warmup_steps, pc.steps, pc.min_lr_ratio)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    device = engine.device

    restored = restore_checkpoint(engine)
    start_step = int(restored["step"]) if restored else 0
    if restored and rank == 0:
        log.info("resumed from checkpoint at step %d", start_step)

    sink = MetricsSink(config.get("tracking_uri"), config.get("mlflow_run_id"), enabled=rank == 0)
    tokens_per_step = pc.micro_batch_size * pc.grad_accum * world * blocks.shape[1]
    timed_tokens, timed_seconds = 0, 0.0
    window_loss, window_steps = 0.0, 0
    last: dict[str, float] = {}
    engine.train()
    timer = StepTimer(pc.steps, start_step)
    loop_started = time.perf_counter()
    for step in range(start_step, pc.steps):
        step_start = time.perf_counter()
        step_loss = 0.0
        for micro in range(pc.grad_accum):
            batch = blocks[sampler.indices(step, micro)].to(device)
            loss = engine(input_ids=batch, labels=batch).loss
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach().float().item() / pc.grad_accum
        elapsed = time.perf_counter() - step_start
        if step - start_step >= 2:  # the first steps pay for warm-up, not throughput
            timed_tokens += tokens_per_step
            timed_seconds += elapsed
        window_loss += step_loss
        window_steps += 1
        done = step + 1
        if done % pc.log_every == 0 or done == pc.steps:
            mean = torch.tensor([window_loss / window_steps])
            if world > 1:
                torch.distributed.all_reduce(mean)
                mean /= world
            tps = timed_tokens / timed_seconds if timed_seconds else 0.0
            last = {
                "train_loss": float(mean.item()),
                "lr": float(scheduler.get_last_lr()[0]),
                "tokens_per_s": tps,
                "step": done,
            }
            sink.log({k: v for k, v in last.items() if k != "step"}, step=done)
            if rank == 0:
                shown = {"loss": last["train_loss"], "lr": last["lr"], "tok/s": round(tps)}
                log.info("%s", timer.line("pretrain", done, shown))
            window_loss, window_steps = 0.0, 0
        if done % pc.checkpoint_every == 0 or done == pc.steps:
            report = dict(last) if last else {}
            report.update(
                step=done, final=done == pc.steps, resumed_from=start_step,
                tokens_per_s=timed_tokens / timed_seconds if timed_seconds else 0.0,
                train_seconds=time.perf_counter() - loop_started, **peak_gpu_memory(),
            )
            if done == pc.steps:
                _save_hf_model(engine, cfg.deepspeed.zero_stage, config["output_uri"], tokenizer_dir, rank, report)
            report_checkpoint(engine, rank, done, report, client_state={"step": done})
