"""Reasoning on held-out problems with a known answer: pass@1 and pass@k, per difficulty.

pass@1 is greedy (what a user gets by default). pass@k is the chance that at least one of ``k``
sampled replies is right, estimated without bias from ``n >= k`` samples per problem of which
``c`` are right: ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021), averaged over problems. (Counting
a problem solved when any of ``k`` samples is right is the same estimator with n = k, and the
noisiest one; more samples than ``k`` narrow it.) The greedy reply plays no part in pass@k. The
gap between the two is what RLVR can harvest: GRPO learns only from problems the model sometimes
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


def _share(flags: list[bool] | list[float]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples of which ``c`` are correct:
    ``1 - C(n-c, k) / C(n, k)``, computed as a product so large ``n`` cannot overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def score_problems(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    problems: list[dict[str, Any]],
    k: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    n: int | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, list[float]]]:
    """Metrics (overall, per difficulty ``.d<N>``, per family), one sample per (family,
    difficulty), and the per-problem verdicts (``pass_at_1``: greedy 1.0 / 0.0; ``pass_at_k``:
    the problem's unbiased estimate; in problem order) that let two checkpoints be compared
    problem by problem. ``n`` samples per problem (default ``k``) estimate pass@k; ``k`` = 0
    is greedy only. ``problems`` are data_prep's problem records."""
    n = k if n is None else n
    if k > 0 and n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    prompts = [p["prompt"] for p in problems]
    greedy = generate_replies(model, tokenizer, prompts, max_new_tokens)
    sampled = sample_replies(
        model, tokenizer, [p for p in prompts for _ in range(n)], max_new_tokens, temperature, seed
    ) if k > 0 else []
    first: list[bool] = []
    any_k: list[float] = []
    groups: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    samples: dict[tuple[str, int], dict[str, Any]] = {}
    for i, (problem, reply) in enumerate(zip(problems, greedy)):
        answer = str(problem["answer"])
        ok = reply["ended"] and is_correct(reply["text"], answer)
        right = sum(is_correct(r, answer) for r in sampled[i * n : (i + 1) * n])
        solved = pass_at_k(n, right, k) if k > 0 else float(ok)
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
    verdicts = {"pass_at_1": [float(ok) for ok in first], "pass_at_k": list(any_k)}
    metrics = {
        "pass_at_1": _share(first),
        **interval_metrics("pass_at_1", verdicts["pass_at_1"]),
        "pass_at_k": _share(any_k),
        **interval_metrics("pass_at_k", verdicts["pass_at_k"]),
        "pass_k": float(k),
        "pass_n": float(n if k > 0 else 0),
        "answered": _share([final_answer(r["text"]) is not None for r in greedy]),
        "mean_reply_chars": sum(len(r["text"]) for r in greedy) / max(1, len(greedy)),
    }
    for name, rows in sorted(groups.items()):
        metrics[f"pass_at_1.{name}"] = _share([a for a, _ in rows])
        metrics[f"pass_at_k.{name}"] = _share([b for _, b in rows])
    return metrics, [samples[key] for key in sorted(samples)], verdicts
