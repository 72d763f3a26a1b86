"""The RLVR loop inside each Ray Train worker: TRL's GRPOTrainer with the verifiers as rewards.

For every problem the policy samples a group of replies (KV-cache generation); the verifiers
score each reply against the known answer (correct final answer, well-formed reply); each
reply's advantage is its reward relative to its own group, so only problems the model
sometimes gets right teach it anything; a KL term keeps the policy near the checkpoint it
started from (the preference stage's policy). TRL does all of that; this module only feeds it
the problems, the verifiers and the pipeline's precision/DeepSpeed/checkpoint settings, and
measures rollout throughput so the benchmark can compare it with plain ``model.generate``.
"""

from __future__ import annotations

import random
import time
from types import SimpleNamespace
from typing import Any

from components.common.config import Config, RlvrStageConfig
from components.common.scratch import cleans_scratch


def problems_dataset(
    records: list[dict[str, Any]],
    instructions: list[dict[str, Any]] | None = None,
    instruction_share: float = 0.0,
    seed: int = 0,
):
    """GRPO rows: a conversational ``prompt`` plus the columns the verifiers read (``answer``,
    ``solution``, ``reference``) and the ones the logs group by (``family``, ``difficulty``).

    With ``instruction_share`` > 0, instruction rows (data_prep's ``rlvr/instructions.jsonl``:
    a prompt and its ideal reply as ``reference``) are drawn, seeded, until they make up that
    share of all rows, then shuffled in. Problem rows have no reference and instruction rows
    no answer, so each verifier scores only the rows it applies to (``None`` elsewhere).
    """
    from datasets import Dataset

    rows = [
        {
            "prompt": r["prompt"],
            "answer": str(r["answer"]),
            "family": r.get("family", "user"),
            "difficulty": int(r.get("difficulty", 1)),
            "solution": r.get("solution"),
            "reference": None,
        }
        for r in records
    ]
    if instruction_share > 0 and instructions:
        rng = random.Random(seed)
        count = round(len(rows) * instruction_share / (1 - instruction_share))
        rows += [
            {
                "prompt": r["prompt"],
                "answer": None,
                "family": r.get("family", "instruction"),
                "difficulty": 1,
                "solution": None,
                "reference": r["reference"],
            }
            for r in (rng.choice(instructions) for _ in range(count))
        ]
        rng.shuffle(rows)
    return Dataset.from_list(rows)


def trainer_batch(rc: RlvrStageConfig) -> SimpleNamespace:
    """The stage's settings in the shape ``hf_worker.common_training_args`` reads.

    TRL counts GRPO batches in *replies*: each worker trains on ``prompts_per_step`` problems
    times ``num_generations`` sampled replies per step, with no gradient accumulation.
    """
    return SimpleNamespace(
        steps=rc.steps,
        micro_batch_size=rc.prompts_per_step * rc.num_generations,
        grad_accum=1,
        lr=rc.lr,
        warmup_steps=rc.warmup_steps,
        checkpoint_every=rc.checkpoint_every,
        log_every=rc.log_every,
    )


def grpo_config(cfg: Config, **overrides: Any):
    """GRPOConfig for this preset (the benchmark builds the same trainer outside Ray)."""
    from trl import GRPOConfig

    from components.common import hf_worker

    rc = cfg.rlvr
    args = {
        **hf_worker.common_training_args(cfg, trainer_batch(rc), "rlvr"),
        "num_generations": rc.num_generations,
        "max_completion_length": rc.max_new_tokens,
        "temperature": rc.temperature,
        "beta": rc.beta,
        "reward_weights": rc.reward_weights,
        "loss_type": "dapo",
        "log_completions": False,
        "use_vllm": rc.use_vllm,
        "lr_scheduler_type": "constant_with_warmup",
        **overrides,
    }
    return GRPOConfig(**args)


def timed_grpo_trainer_class():
    """GRPOTrainer that also reports its rollout throughput (generated tokens per second of
    generation time) as ``rollout/tokens_per_second``; defined lazily so importing this module
    does not import TRL."""
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        rollout_tokens = 0
        rollout_seconds = 0.0

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            started = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            seconds = time.perf_counter() - started
            tokens = sum(len(c) for c in completion_ids)
            self.rollout_tokens += tokens
            self.rollout_seconds += seconds
            if seconds > 0:
                self._log_metric("rollout/tokens_per_second", tokens / seconds)
            return completion_ids, logprobs

    return TimedGRPOTrainer


def build_trainer(cfg: Config, model, tokenizer, train, **overrides: Any):
    """The trainer every worker (and the benchmark) runs."""
    from components.rlvr.verifiers import get_verifiers

    trainer_cls = timed_grpo_trainer_class()
    return trainer_cls(
        model=model,
        reward_funcs=get_verifiers(cfg.rlvr.rewards),
        args=grpo_config(cfg, **overrides),
        train_dataset=train,
        processing_class=tokenizer,
    )


@cleans_scratch
def rlvr_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    from components.common import hf_worker, storage
    from components.common.logs import setup_logging
    from components.common.modeling import load_model, load_tokenizer

    setup_logging()
    cfg = Config.from_json(config["cfg"])
    rank, _ = hf_worker.worker_setup(cfg)
    source = hf_worker.fetch_checkpoint(config["base_uri"])
    tokenizer = load_tokenizer(source)
    model = load_model(source)
    instructions = storage.read_jsonl(config["instructions_uri"]) if config.get("instructions_uri") else None
    train = problems_dataset(
        storage.read_jsonl(config["train_uri"]), instructions, cfg.rlvr.instruction_share, cfg.seed
    )
    trainer = build_trainer(cfg, model, tokenizer, train)
    def rollout_summary() -> dict[str, Any]:
        seconds = trainer.rollout_seconds
        return {
            "rollout_tokens": trainer.rollout_tokens,
            "rollout_seconds": round(seconds, 3),
            "rollout_tokens_per_second": trainer.rollout_tokens / seconds if seconds else 0.0,
        }

    hf_worker.train_and_publish(trainer, tokenizer, rank, config, extra_fn=rollout_summary)
