"""PPO (RLHF) inside Ray Train workers: rollouts and updates are data-parallel.

Each iteration every worker samples replies for its own share of a seeded prompt batch (KV
cache generation), the reward model scores them, and ``ppo.ppo_iteration`` turns scores into
KL-penalised rewards, GAE advantages and several clipped minibatch epochs. The policy+value
model is a DeepSpeed engine, so gradients are averaged across workers by DeepSpeed (ZeRO from
the preset). Checkpoints hold the policy, the value head, the optimizer and the iteration, and
a restarted worker group continues from the last one.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from components.common.scratch import cleans_scratch


def unique_prompts(records: list[dict[str, Any]]) -> list[list[dict[str, str]]]:
    """The distinct prompts of the preference pairs, in a stable order."""
    seen: dict[str, list[dict[str, str]]] = {}
    for record in records:
        seen.setdefault(json.dumps(record["prompt"], sort_keys=True), record["prompt"])
    return list(seen.values())


def prompt_batch(prompts: list, iteration: int, per_worker: int, rank: int, world: int, seed: int) -> list:
    """This worker's prompts for one iteration: a seeded draw of the global batch, sliced."""
    rng = random.Random(seed * 100_003 + iteration)
    batch = [prompts[rng.randrange(len(prompts))] for _ in range(per_worker * world)]
    return batch[rank::world]


def engine_dtype(ds_config: dict[str, Any]):
    """The dtype DeepSpeed trains the weights in under ``ds_config``."""
    import torch

    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def load_frozen_models(sft_dir, rm_dir, pad_token_id: int, ds_config: dict[str, Any], pc, device):
    """The reference policy and the reward model: frozen, whole on every rank (inference only,
    never partitioned), in the engine's dtype, on ``device`` — where the engine puts the policy,
    so rollout tokens never cross devices."""
    import torch

    from components.common.modeling import load_model
    from components.preference.reward import load_reward_model

    dtype = engine_dtype(ds_config)
    reference = load_model(sft_dir, dtype=dtype, attn_implementation=pc.attn_implementation, device=device)
    reward_model = load_reward_model(str(rm_dir), pad_token_id, dtype=dtype, attn_implementation=pc.attn_implementation)
    reward_model.to(device)
    return reference.eval().requires_grad_(False), reward_model.eval().requires_grad_(False)


def build_policy(sft_dir, ds_config: dict[str, Any], pc):
    """The trained policy: under ZeRO-3 its LM is partitioned while it loads (DeepSpeed's init
    path); the value head is built outside, whole, and DeepSpeed partitions it at initialize."""
    from components.common.modeling import load_model, zero3_loading
    from components.preference.ppo import PolicyWithValue

    dtype = engine_dtype(ds_config)
    with zero3_loading(ds_config):
        lm = load_model(sft_dir, dtype=dtype, attn_implementation=pc.attn_implementation)
    if pc.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = PolicyWithValue(lm)
    policy.value_head.to(dtype)  # ZeRO-3 partitions all parameters in one dtype
    return policy


def save_full_policy(engine, path: str | Path, rank: int) -> None:
    """Write the policy's LM as a Hugging Face folder from rank 0, with its full weights.

    Under ZeRO-3 each rank holds only a shard: every rank must join the gather
    (``_zero3_consolidated_16bit_state_dict``, what DeepSpeed's own ``save_16bit_model`` uses),
    which hands rank 0 the whole state dict; saving ``engine.module`` directly would write
    empty tensors. The value head is a training-time crutch and stays out."""
    from components.common.modeling import is_zero3_partitioned

    module = engine.module
    if is_zero3_partitioned(module):
        state = engine._zero3_consolidated_16bit_state_dict()
        if rank == 0:
            lm_state = {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}
            module.lm.save_pretrained(str(path), state_dict=lm_state, safe_serialization=True)
        return
    if rank == 0:
        module.save_policy(path)


@cleans_scratch
def ppo_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    import deepspeed
    import torch

    from components.common import hf_worker, storage
    from components.common.config import Config
    from components.common.deepspeed_config import build_deepspeed_config
    from components.common.ds_checkpoint import prepare_resume_config, report_checkpoint, restore_checkpoint
    from components.common.logs import setup_logging
    from components.common.metrics_sink import MetricsSink
    from components.common.modeling import load_tokenizer
    from components.common.progress import StepTimer
    from components.preference.ppo import ppo_iteration
    from components.preference.reward import reward_scores

    setup_logging()
    log = hf_worker.log
    cfg = Config.from_json(config["cfg"])
    pc = cfg.preference.ppo
    rank, world = hf_worker.worker_setup(cfg)
    sft_dir = hf_worker.fetch_checkpoint(config["base_uri"])
    rm_dir = hf_worker.fetch_checkpoint(config["reward_uri"])
    tokenizer = load_tokenizer(sft_dir)
    ds_config = build_deepspeed_config(cfg.deepspeed, pc.minibatch_size, 1, pc.precision)
    prepare_resume_config(ds_config)  # another worker count than the checkpoint's: universal checkpoint
    policy = build_policy(sft_dir, ds_config, pc)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=pc.lr, betas=(0.9, 0.95), weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=optimizer, config=ds_config)
    # the frozen models load whole (never partitioned), on the device the engine trains on
    reference, reward_model = load_frozen_models(
        sft_dir, rm_dir, tokenizer.pad_token_id, ds_config, pc, engine.device
    )
    prompts = unique_prompts(storage.read_jsonl(config["train_uri"]))

    def optimizer_step(loss: torch.Tensor) -> None:
        engine.backward(loss)
        engine.step()

    restored = restore_checkpoint(engine)
    start = int(restored["iteration"]) if restored else 0
    if restored:
        log.info("PPO resumed from checkpoint at iteration %d", start)

    sink = MetricsSink(config.get("tracking_uri"), config.get("mlflow_run_id"), enabled=rank == 0)
    prefix = config.get("metric_prefix", "")
    history: list[dict[str, float]] = []
    timer = StepTimer(pc.iterations, start)
    loop_started = time.perf_counter()
    for iteration in range(start, pc.iterations):
        batch = prompt_batch(prompts, iteration, pc.prompts_per_worker, rank, world, cfg.seed)
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]

        def score(_texts: list[str], replies: list[str], _batch=batch) -> torch.Tensor:
            return reward_scores(reward_model, tokenizer, _batch, replies)

        torch.manual_seed(cfg.seed * 1_000_003 + iteration * world + rank)
        generator = torch.Generator().manual_seed(cfg.seed + iteration)
        stats = ppo_iteration(engine.module, reference, tokenizer, texts, score, optimizer_step, pc, generator)
        done = iteration + 1
        # the mean over workers is what the run did; every rank takes part in the reduce
        keys = sorted(stats)
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(values)
            values /= world
        stats = dict(zip(keys, values.tolist()))
        history.append(stats)
        sink.log({f"{prefix}{k}": v for k, v in stats.items()}, step=done)
        if rank == 0:
            shown = {k: stats[k] for k in ("score_mean", "kl", "reply_length_mean", "ended_fraction")}
            log.info("%s", timer.line("ppo", done, shown))
        if done % pc.checkpoint_every == 0 or done == pc.iterations:
            report_checkpoint(engine, rank, done, {"iteration": done, **stats}, client_state={"iteration": done})

    summary: dict[str, Any] = {}
    if rank == 0:
        first = history[0] if history else {}
        last = history[-1] if history else {}
        summary = {
            "iterations": pc.iterations,
            "resumed_from": start,
            "score_first": first.get("score_mean", float("nan")),
            "score_last": last.get("score_mean", float("nan")),
            "kl_last": last.get("kl", float("nan")),
            "ended_fraction_last": last.get("ended_fraction", float("nan")),
            "train_seconds": time.perf_counter() - loop_started,
            **hf_worker.peak_gpu_memory(),
        }
    with tempfile.TemporaryDirectory() as tmp:
        save_full_policy(engine, tmp, rank)  # every rank: ZeRO-3 gathers the shards
        if rank == 0:
            tokenizer.save_pretrained(tmp)
            Path(tmp, hf_worker.SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            storage.upload_dir(tmp, config["output_uri"])
