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


@cleans_scratch
def ppo_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    import deepspeed
    import torch

    from components.common import hf_worker, storage
    from components.common.config import Config
    from components.common.deepspeed_config import build_deepspeed_config
    from components.common.ds_checkpoint import report_checkpoint, restore_checkpoint
    from components.common.logs import setup_logging
    from components.common.metrics_sink import MetricsSink
    from components.common.modeling import load_model, load_tokenizer
    from components.common.progress import StepTimer
    from components.preference.ppo import PolicyWithValue, ppo_iteration
    from components.preference.reward import load_reward_model, reward_scores

    setup_logging()
    log = hf_worker.log
    cfg = Config.from_json(config["cfg"])
    pc = cfg.preference.ppo
    rank, world = hf_worker.worker_setup(cfg)
    sft_dir = hf_worker.fetch_checkpoint(config["base_uri"])
    rm_dir = hf_worker.fetch_checkpoint(config["reward_uri"])
    tokenizer = load_tokenizer(sft_dir)
    policy = PolicyWithValue(load_model(sft_dir))
    reference = load_model(sft_dir).eval().requires_grad_(False)
    reward_model = load_reward_model(str(rm_dir), tokenizer.pad_token_id).eval().requires_grad_(False)
    prompts = unique_prompts(storage.read_jsonl(config["train_uri"]))

    optimizer = torch.optim.AdamW(policy.parameters(), lr=pc.lr, betas=(0.9, 0.95), weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(
        model=policy, optimizer=optimizer,
        config=build_deepspeed_config(cfg.deepspeed, pc.minibatch_size, 1),
    )

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
        }
        with tempfile.TemporaryDirectory() as tmp:
            engine.module.save_policy(tmp)
            tokenizer.save_pretrained(tmp)
            Path(tmp, hf_worker.SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            storage.upload_dir(tmp, config["output_uri"])
