"""The RLVR loop inside each Ray Train worker: TRL's GRPOTrainer with the verifiers as rewards.

For every problem the policy samples a group of replies (KV-cache generation); the verifiers
score each reply against the known answer (correct final answer, well-formed reply); each
reply's advantage is its reward relative to its own group, so only problems the model
sometimes gets right teach it anything; a KL term keeps the policy near the checkpoint it
started from (the preference stage's policy). TRL does all of that; this module feeds it the
problems, the verifiers and the pipeline's precision/DeepSpeed/checkpoint settings, measures
rollout throughput so the benchmark can compare it with plain ``model.generate``, and adds one
thing TRL lacks: ``rlvr.guidance``, a worked solution in the groups the policy cannot solve
(``guide_stuck_groups``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from components.common.config import Config
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


def grpo_config(cfg: Config, **overrides: Any):
    """GRPOConfig for this preset (the benchmark builds the same trainer outside Ray)."""
    from trl import GRPOConfig

    from components.common import hf_worker

    rc = cfg.rlvr
    args = {
        **hf_worker.common_training_args(cfg, rc, "rlvr"),
        "num_generations": rc.num_generations,
        "max_completion_length": rc.max_new_tokens,
        "temperature": rc.temperature,
        "beta": rc.beta,
        "reward_weights": rc.reward_weights,
        "loss_type": "dapo",
        "log_completions": False,
        "use_vllm": rc.use_vllm,
        # vLLM inside the training process, sharing its GPU (one GPU is enough); weights are
        # pushed to it after every step
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": rc.vllm_gpu_memory_utilization,
        "lr_scheduler_type": "constant_with_warmup",
        **overrides,
    }
    return GRPOConfig(**args)


def guide_stuck_groups(
    completion_ids: list[list[int]],
    rows: Sequence[dict[str, Any]],
    num_generations: int,
    guidance: float,
    decode: Callable[[list[int]], str],
    reference_ids: Callable[[dict[str, Any]], list[int]],
    rng: random.Random,
) -> int:
    """Give groups the policy cannot solve one correct reply: the problem's worked solution.

    GRPO learns only from groups whose rewards differ; on a problem where none of the
    ``num_generations`` sampled replies is correct, every reply gets the same advantage and the
    problem teaches nothing, however often it is drawn. Measured on the tiny model: its correct
    samples are mostly the problems greedy decoding already solves (or lucky guesses), so
    sharpening them barely moves pass@1. With chance ``guidance``, such a stuck group's last
    reply is replaced by the known worked solution (``reference_ids``: its tokens as the chat
    template renders the assistant turn, end-of-turn included). The verifiers then score it
    like any other reply; its advantage comes from its group as usual (off-policy guidance in
    the manner of LUFFY, Yan et al. 2025). Groups with a correct sample, rows without a
    ``solution`` (instruction rows, user problems without worked answers) are left alone.

    ``rows`` are the dataset rows aligned with ``completion_ids``: TRL repeats each row
    ``num_generations`` times in a row. Changes ``completion_ids`` in place; returns the number
    of groups guided.
    """
    from components.rlvr.verifiers import is_correct

    if guidance <= 0:
        return 0
    if len(rows) != len(completion_ids) or len(rows) % num_generations:
        raise ValueError(
            f"{len(completion_ids)} completions for {len(rows)} rows in groups of {num_generations}"
        )
    guided = 0
    for start in range(0, len(rows), num_generations):
        row = rows[start]
        solution, answer = row.get("solution"), row.get("answer")
        if not solution or answer is None:
            continue
        group = range(start, start + num_generations)
        if any(rows[i].get("solution") != solution for i in group):
            raise ValueError(f"rows {start}..{start + num_generations - 1} are not one problem's group")
        if any(is_correct(decode(completion_ids[i]), str(answer)) for i in group):
            continue
        if rng.random() < guidance:
            completion_ids[start + num_generations - 1] = reference_ids(row)
            guided += 1
    return guided


def reference_completion_ids(tokenizer, prompt: list[dict[str, str]], reply: str, max_tokens: int) -> list[int]:
    """The tokens the policy would have to generate to give ``reply`` after ``prompt``: the chat
    template's assistant turn (end-of-turn token included) less the generation prompt, cut at
    the first EOS and to ``max_tokens``, as a sampled completion would be."""
    def render(messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
        )
        return list(out)

    head = render(prompt, True)
    full = render([*prompt, {"role": "assistant", "content": reply}], False)
    if full[: len(head)] != head:
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + reply")
    ids = full[len(head) :]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
    return ids[:max_tokens]


def timed_grpo_trainer_class():
    """GRPOTrainer that reports its rollout throughput (generated tokens per second of
    generation time) as ``rollout/tokens_per_second`` and, with ``guidance`` > 0, hands stuck
    groups a worked solution (``guide_stuck_groups``, logged as ``rollout/guided_share``);
    defined lazily so importing this module does not import TRL."""
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        rollout_tokens = 0
        rollout_seconds = 0.0
        guidance = 0.0
        _rows: list[dict[str, Any]] | None = None

        def _generate_and_score_completions(self, inputs):
            self._rows = inputs
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                self._rows = None

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            started = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            seconds = time.perf_counter() - started
            tokens = sum(len(c) for c in completion_ids)
            self.rollout_tokens += tokens
            self.rollout_seconds += seconds
            if seconds > 0:
                self._log_metric("rollout/tokens_per_second", tokens / seconds)
            if self.guidance > 0 and self.model.training and self._rows is not None:
                self._guide(completion_ids)
            return completion_ids, logprobs

        def _guide(self, completion_ids: list[list[int]]) -> None:
            tok = self.processing_class
            rng = random.Random(f"{self.args.seed}/{self.state.global_step}/{self.accelerator.process_index}")
            guided = guide_stuck_groups(
                completion_ids,
                self._rows,
                self.num_generations,
                self.guidance,
                decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
                reference_ids=lambda row: reference_completion_ids(
                    tok, row["prompt"], row["solution"], self.max_completion_length
                ),
                rng=rng,
            )
            self._log_metric("rollout/guided_share", guided * self.num_generations / len(completion_ids))

    return TimedGRPOTrainer


def build_trainer(cfg: Config, model, tokenizer, train, args=None, **overrides: Any):
    """The trainer every worker (and the benchmark) runs; ``args`` defaults to ``grpo_config``."""
    from components.rlvr.verifiers import get_verifiers

    trainer_cls = timed_grpo_trainer_class()
    trainer = trainer_cls(
        model=model,
        reward_funcs=get_verifiers(cfg.rlvr.rewards),
        args=args if args is not None else grpo_config(cfg, **overrides),
        train_dataset=train,
        processing_class=tokenizer,
    )
    trainer.guidance = cfg.rlvr.guidance
    return trainer


@cleans_scratch
def rlvr_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    from components.common import hf_worker, storage
    from components.common.logs import setup_logging
    from components.common.modeling import load_tokenizer

    setup_logging()
    cfg = Config.from_json(config["cfg"])
    rank, _ = hf_worker.worker_setup(cfg)
    source = hf_worker.fetch_checkpoint(config["base_uri"])
    tokenizer = load_tokenizer(source)
    instructions = storage.read_jsonl(config["instructions_uri"]) if config.get("instructions_uri") else None
    train = problems_dataset(
        storage.read_jsonl(config["train_uri"]), instructions, cfg.rlvr.instruction_share, cfg.seed
    )
    args = grpo_config(cfg)
    model = hf_worker.load_trainer_model(source, args, cfg.rlvr)  # after args: ZeRO-3 partitions it as it loads
    trainer = build_trainer(cfg, model, tokenizer, train, args=args)

    def rollout_summary() -> dict[str, Any]:
        seconds = trainer.rollout_seconds
        return {
            "rollout_tokens": trainer.rollout_tokens,
            "rollout_seconds": round(seconds, 3),
            "rollout_tokens_per_second": trainer.rollout_tokens / seconds if seconds else 0.0,
        }

    hf_worker.train_and_publish(trainer, tokenizer, rank, config, extra_fn=rollout_summary)
