"""The pre-training loop that runs inside each Ray Train worker, under DeepSpeed.

Next-token prediction on packed blocks, streamed: each micro-step every worker reads only its
own slice of the global batch from the token shards (memory-mapped locally, range-read from
S3), in a seeded per-epoch permutation computed on the fly. The data position (the next global
sample position) and a digest of the block ids consumed so far are part of the checkpoint, so a
worker group restarted from it continues exactly where the lost one stopped: no block skipped
or seen twice, across epoch boundaries and whatever the new number of workers. Checkpoints
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
    """Which blocks each worker reads: global sample positions mapped through ``BlockOrder``.

    A global batch covers positions ``[position, position + world * micro_batch * grad_accum)``;
    micro-step ``m`` of rank ``r`` takes ``micro_batch`` consecutive positions starting at
    ``position + (m * world + r) * micro_batch``. ``position`` is the only state: it goes into
    the checkpoint, so a restarted group (of any size) resumes at the first sample not trained.
    """

    def __init__(self, num_blocks: int, seed: int, rank: int, world: int, micro_batch: int, grad_accum: int,
                 position: int = 0):
        from components.data_prep.shards import BlockOrder

        self.order = BlockOrder(num_blocks, seed)
        self.num_blocks = num_blocks
        self.rank, self.world = rank, world
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.position = position

    @property
    def global_batch(self) -> int:
        return self.world * self.micro_batch * self.grad_accum

    def positions(self, micro: int, rank: int | None = None) -> np.ndarray:
        r = self.rank if rank is None else rank
        base = self.position + (micro * self.world + r) * self.micro_batch
        return np.arange(base, base + self.micro_batch, dtype=np.int64)

    def ids(self, micro: int) -> list[int]:
        return self.order.blocks(self.positions(micro)).tolist()

    def global_ids(self) -> np.ndarray:
        """Every block of the current global batch, in position order (for the digest)."""
        return self.order.blocks(np.arange(self.position, self.position + self.global_batch, dtype=np.int64))

    def advance(self) -> None:
        self.position += self.global_batch

    def indices(self, step: int, micro: int) -> list[int]:
        """The blocks of ``micro`` in optimizer step ``step`` counted from position 0."""
        saved, self.position = self.position, step * self.global_batch
        try:
            return self.ids(micro)
        finally:
            self.position = saved


def chain_digest(previous: str, block_ids: np.ndarray) -> str:
    """The consumed-data digest after one more global batch (a hash chain over block ids)."""
    import hashlib

    return hashlib.sha256(previous.encode() + np.asarray(block_ids, dtype=np.int64).tobytes()).hexdigest()


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
    from components.common.ds_checkpoint import prepare_resume_config, report_checkpoint, restore_checkpoint
    from components.common.deepspeed_config import build_deepspeed_config
    from components.common.logs import setup_logging
    from components.common.metrics_sink import MetricsSink
    from components.common.modeling import load_model, zero3_loading
    from components.data_prep.manifest import TokenSplit
    from components.data_prep.shards import BlockReader

    setup_logging()
    cfg = Config.from_json(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.ray.torch_threads_per_worker or max(1, int(cfg.ray.cpus_per_worker))
    torch.set_num_threads(threads)
    pc = cfg.pretrain

    reader = BlockReader(TokenSplit.from_manifest({"pretrain": {"train": config["train_split"]}}, "train"))
    sampler = BlockSampler(len(reader), cfg.seed, rank, world, pc.micro_batch_size, pc.grad_accum)

    ds_config = build_deepspeed_config(cfg.deepspeed, pc.micro_batch_size, pc.grad_accum, pc.precision)
    universal = prepare_resume_config(ds_config)  # another worker count than the checkpoint's
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
    data_digest = ""
    if restored and "data" in restored:
        state = restored["data"]
        if int(state["num_blocks"]) != sampler.num_blocks or int(state["seed"]) != cfg.seed:
            raise RuntimeError(
                f"the checkpoint was trained on {state['num_blocks']} blocks with seed {state['seed']}, "
                f"this run has {sampler.num_blocks} with seed {cfg.seed}: not the same data"
            )
        sampler.position, data_digest = int(state["position"]), state["digest"]
    elif restored:  # a checkpoint from before the position was saved: derive it from the step
        sampler.position = start_step * sampler.global_batch
    if restored and rank == 0:
        log.info("resumed from checkpoint at step %d (data position %d)", start_step, sampler.position)
    consumed_log = config.get("consumed_log")  # tests: every block id this rank reads, per step

    sink = MetricsSink(config.get("tracking_uri"), config.get("mlflow_run_id"), enabled=rank == 0)
    tokens_per_step = sampler.global_batch * reader.seq_len
    timed_tokens, timed_seconds = 0, 0.0
    window_loss, window_steps = 0.0, 0
    last: dict[str, float] = {}
    engine.train()
    timer = StepTimer(pc.steps, start_step)
    loop_started = time.perf_counter()
    for step in range(start_step, pc.steps):
        step_start = time.perf_counter()
        step_loss = 0.0
        read_ids: list[int] = []
        for micro in range(pc.grad_accum):
            ids = sampler.ids(micro)
            upcoming = sampler.ids(micro + 1) if micro + 1 < pc.grad_accum else None
            batch = torch.from_numpy(reader.read(ids, upcoming).astype(np.int64)).to(device)
            read_ids.extend(ids)
            loss = engine(input_ids=batch, labels=batch).loss
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach().float().item() / pc.grad_accum
        data_digest = chain_digest(data_digest, sampler.global_ids())
        sampler.advance()
        if consumed_log:
            with open(os.path.join(consumed_log, f"rank-{rank}.jsonl"), "a") as fh:
                fh.write(json.dumps({"step": step, "ids": read_ids}) + "\n")
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
                step=done, final=done == pc.steps, resumed_from=start_step, resumed_universal=universal,
                tokens_per_s=timed_tokens / timed_seconds if timed_seconds else 0.0,
                train_seconds=time.perf_counter() - loop_started, **peak_gpu_memory(),
                data_position=sampler.position, data_digest=data_digest,
            )
            if done == pc.steps:
                _save_hf_model(engine, cfg.deepspeed.zero_stage, config["output_uri"], tokenizer_dir, rank, report)
            data_state = {"position": sampler.position, "digest": data_digest,
                          "num_blocks": sampler.num_blocks, "seed": cfg.seed}
            report_checkpoint(engine, rank, done, report, client_state={"step": done, "data": data_state})
