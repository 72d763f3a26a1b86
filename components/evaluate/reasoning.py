"""Reasoning on held-out problems with a known answer: pass@1 and pass@k, per difficulty.

pass@1 is greedy (what a user gets by default); pass@k samples ``k`` replies per problem and
counts a problem solved when any of them is right (the estimator with n = k samples). The gap
between the two is what RLVR can harvest: GRPO learns only from problems the model sometimes
solves, and should move pass@1 towards pass@k. Correctness is decided by the same verifier the
RLVR stage is rewarded with, so evaluation and training agree on what "right" means.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from components.evaluate.instruct import generate_replies
from components.evaluate.intervals import interval_metrics
from components.evaluate.preference import sample_replies
from components.rlvr.verifiers import final_answer, is_correct


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def score_problems(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    problems: list[dict[str, Any]],
    k: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, list[float]]]:
    """Metrics (overall, per difficulty ``.d<N>``, per family), one sample per (family,
    difficulty), and the per-problem greedy verdicts (``pass_at_1``: 1.0 / 0.0, in problem
    order) that let two checkpoints be compared problem by problem. ``problems`` are
    data_prep's problem records."""
    prompts = [p["prompt"] for p in problems]
    greedy = generate_replies(model, tokenizer, prompts, max_new_tokens)
    sampled = sample_replies(
        model, tokenizer, [p for p in prompts for _ in range(k)], max_new_tokens, temperature, seed
    ) if k > 0 else []
    first: list[bool] = []
    any_k: list[bool] = []
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    samples: dict[tuple[str, int], dict[str, Any]] = {}
    for i, (problem, reply) in enumerate(zip(problems, greedy)):
        answer = str(problem["answer"])
        ok = reply["ended"] and is_correct(reply["text"], answer)
        solved = ok or any(is_correct(r, answer) for r in sampled[i * k : (i + 1) * k])
        first.append(ok)
        any_k.append(solved)
        difficulty = int(problem.get("difficulty", 1))
        family = problem.get("family", "user")
        groups[f"d{difficulty}"].append((ok, solved))
        groups[family].append((ok, solved))
        samples.setdefault(
            (family, difficulty),
            {
                "family": family, "difficulty": difficulty, "prompt": problem["prompt"][-1]["content"],
                "reply": reply["text"], "answer": answer, "extracted": final_answer(reply["text"]),
                "correct": ok,
            },
        )
    verdicts = {"pass_at_1": [float(ok) for ok in first]}
    metrics = {
        "pass_at_1": _share(first),
        **interval_metrics("pass_at_1", verdicts["pass_at_1"]),
        "pass_at_k": _share(any_k),
        "answered": _share([final_answer(r["text"]) is not None for r in greedy]),
        "mean_reply_chars": sum(len(r["text"]) for r in greedy) / max(1, len(greedy)),
    }
    for name, rows in sorted(groups.items()):
        metrics[f"pass_at_1.{name}"] = _share([a for a, _ in rows])
        metrics[f"pass_at_k.{name}"] = _share([b for _, b in rows])
    return metrics, [samples[key] for key in sorted(samples)], verdicts
