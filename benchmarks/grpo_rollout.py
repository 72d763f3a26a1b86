"""GRPO rollout throughput: generation inside the rlvr stage's trainer against plain
``model.generate`` with the KV cache, on the same prompts, batch and weights.

Why this exists: in GRPO most of the wall time is sampling replies, and a trainer can lose a
lot there (no KV cache, padding every prompt to the longest, syncing weights into a separate
engine, gathering ZeRO-3 shards). This script puts a number on it. It builds the very trainer
the rlvr stage runs (``components.rlvr.grpo.build_trainer``: TRL GRPOTrainer with the
verifiers, rollout timing included) in one process with one worker's thread count and batch,
and trains for a few steps. Right before each of the trainer's rollouts, the same prompt batch
is generated with plain ``model.generate`` (left-padded, ``use_cache=True``, the trainer's own
generation config) by the same weights; then the trainer generates it its own way. Both are
timed identically and count the same tokens (up to and including EOS).

Usage::

    python benchmarks/grpo_rollout.py [--checkpoint URI] [--problems URI] [--steps N] [--set key=value ...]

Without ``--checkpoint``/``--problems`` it uses the newest finished run under the preset's
storage root (its preference policy, else its SFT model, and its RLVR training problems).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from components.common import storage
from components.common.config import Config, load_config
from components.common.modeling import load_model, load_tokenizer

GOAL_RATIO = 0.8
STARTING_POINTS = ("ppo", "dpo", "sft")


def newest_run(cfg: Config) -> tuple[str, str]:
    """(checkpoint URI, problems URI) of the newest run under the storage root that has both."""
    root = Path(cfg.storage.root)
    runs = sorted((p for p in root.glob("*") if (p / "data" / "rlvr" / "train.jsonl").is_file()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for run in runs:
        for stage in STARTING_POINTS:
            if storage.is_complete(str(run / "checkpoints" / stage)):
                return str(run / "checkpoints" / stage), str(run / "data" / "rlvr" / "train.jsonl")
    raise SystemExit(f"no finished run with RLVR problems under {root}; run the pipeline first or pass "
                     "--checkpoint and --problems")


def completion_tokens(rows: torch.Tensor, eos_id: int) -> int:
    """Tokens per row up to and including the first EOS (what the trainer keeps)."""
    total = 0
    for row in rows.tolist():
        total += row.index(eos_id) + 1 if eos_id in row else len(row)
    return total


def benchmark_trainer(cfg: Config, model, tokenizer, train):
    """The stage's trainer, also generating each rollout batch with plain ``generate`` first."""
    from components.rlvr.grpo import grpo_config, timed_grpo_trainer_class
    from components.rlvr.verifiers import get_verifiers

    class Bench(timed_grpo_trainer_class()):  # type: ignore[misc]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.plain_tokens = 0
            self.plain_seconds = 0.0
            self.lengths: list[tuple[float, float]] = []

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            pad = self.processing_class.pad_token_id
            width = max(len(p) for p in prompt_ids)
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompt_ids])
            mask = (ids != pad).long()
            was_training = self.model.training
            self.model.eval()
            started = time.perf_counter()
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, generation_config=self.generation_config, use_cache=True
                )
            seconds = time.perf_counter() - started
            self.model.train(was_training)
            tokens = completion_tokens(out[:, width:], self.processing_class.eos_token_id)
            self.plain_tokens += tokens
            self.plain_seconds += seconds
            before = self.rollout_tokens
            result = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            self.lengths.append((tokens / len(prompt_ids), (self.rollout_tokens - before) / len(prompt_ids)))
            return result

    args = grpo_config(cfg, deepspeed=None, save_strategy="no", output_dir=tempfile.mkdtemp(prefix="grpo-bench-"))
    return Bench(model=model, reward_funcs=get_verifiers(cfg.rlvr.rewards), args=args, train_dataset=train,
                 processing_class=tokenizer)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoint", help="starting checkpoint URI (default: newest run's policy)")
    parser.add_argument("--problems", help="RLVR problems JSONL URI (default: newest run's training problems)")
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps (one rollout batch each)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--fail-below", type=float, default=None, help="exit 1 when the ratio is below this")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(args.preset, [f"rlvr.steps={args.steps}", *args.overrides])
    checkpoint, problems = (args.checkpoint, args.problems) if args.checkpoint and args.problems else newest_run(cfg)
    threads = cfg.ray.torch_threads_per_worker or max(1, int(cfg.ray.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    from components.rlvr.grpo import problems_dataset

    with storage.local_copy(checkpoint, "checkpoint") as local:
        tokenizer = load_tokenizer(local)
        model = load_model(local)
    train = problems_dataset(storage.read_jsonl(problems))
    trainer = benchmark_trainer(cfg, model, tokenizer, train)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    grpo_tps = trainer.rollout_tokens / trainer.rollout_seconds
    plain_tps = trainer.plain_tokens / trainer.plain_seconds
    ratio = grpo_tps / plain_tps
    plain_len = sum(a for a, _ in trainer.lengths) / len(trainer.lengths)
    grpo_len = sum(b for _, b in trainer.lengths) / len(trainer.lengths)
    batch = cfg.rlvr.prompts_per_step * cfg.rlvr.num_generations
    print(f"checkpoint {checkpoint}\nproblems   {problems}")
    print(f"{args.steps} GRPO steps, batch {batch} replies ({cfg.rlvr.prompts_per_step} prompts x "
          f"{cfg.rlvr.num_generations}), max {cfg.rlvr.max_new_tokens} new tokens, {threads} thread(s), "
          f"load avg {load_before:.2f} -> {os.getloadavg()[0]:.2f}, wall {wall:.1f}s")
    print(f"{'':<28}{'tokens':>9}{'seconds':>10}{'tokens/s':>11}{'mean reply':>12}")
    print(f"{'plain model.generate + KV':<28}{trainer.plain_tokens:>9}{trainer.plain_seconds:>10.2f}{plain_tps:>11.0f}{plain_len:>12.1f}")
    print(f"{'GRPO stage rollout':<28}{trainer.rollout_tokens:>9}{trainer.rollout_seconds:>10.2f}{grpo_tps:>11.0f}{grpo_len:>12.1f}")
    print(f"ratio (GRPO / plain): {ratio:.3f}  (goal >= {GOAL_RATIO})")
    if os.getloadavg()[0] > os.cpu_count():
        print("note: the machine was loaded beyond its cores; figures are noisy, rerun when quiet")
    if args.json:
        print(json.dumps({"grpo_tokens_per_s": grpo_tps, "plain_tokens_per_s": plain_tps, "ratio": ratio,
                          "batch": batch, "steps": args.steps}))
    if args.fail_below is not None and ratio < args.fail_below:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
