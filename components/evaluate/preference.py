"""Preference evaluation: does a checkpoint reply the way the labeler prefers?

On held-out preference prompts every checkpoint *samples* a reply (policies are deployed
with sampling, and RLHF's effect shows in the distribution, not only its mode). Each reply is
scored by the reward model and by the oracle (the labeler's written-down taste), and compared
with the SFT checkpoint's reply to the same prompt: win rate by the reward model and by the
oracle. A policy that games the reward model wins by the first and not by the second; that is
what reward hacking looks like here. KL to SFT says how far the policy moved.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from components.common.modeling import model_device
from components.data_prep.preferences import PreferencePair, oracle_prefers, oracle_score
from components.evaluate.intervals import interval_metrics
from components.preference.ppo import token_logprobs
from components.preference.reward import reward_scores


@torch.no_grad()
def sample_replies(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompts: list[list[dict[str, str]]],
    max_new_tokens: int, temperature: float, seed: int, batch_size: int = 32,
) -> list[str]:
    """One sampled reply per prompt (text before EOS), reproducible by seed."""
    model.eval()
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts[start : start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model_device(model))
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
            use_cache=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )[:, enc["input_ids"].shape[1] :]
        for row in out.tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return replies


@torch.no_grad()
def reply_logprobs(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompts: list[list[dict[str, str]]], replies: list[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """log p(reply + EOS | prompt) under ``model``, one value per reply, scored in batches.

    Rows are right-padded: with causal attention a token never sees the padding after it, so
    each row's log-probs are those of the row alone; padding positions are masked out."""
    model.eval()
    device = model_device(model)
    rows: list[tuple[list[int], int]] = []
    for prompt, reply in zip(prompts, replies):
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((head_ids + reply_ids, len(head_ids)))
    totals: list[torch.Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width - 1))
        for i, (row, head_len) in enumerate(chunk):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, head_len - 1 : len(row) - 1] = 1.0  # positions predicting reply tokens
        ids, mask = ids.to(device), mask.to(device)
        attention = (torch.arange(width, device=device)[None, :] < torch.tensor([len(r) for r, _ in chunk], device=device)[:, None]).long()
        logprobs = token_logprobs(model(input_ids=ids, attention_mask=attention).logits, ids)
        totals.append((logprobs * mask).sum(dim=1).float().cpu())
    return torch.cat(totals) if totals else torch.zeros(0)


def ranked_right(reward_model, tokenizer, pairs: list[PreferencePair]) -> torch.Tensor:
    """Per pair: does the reward model score chosen above rejected?"""
    prompts = [p.prompt for p in pairs]
    chosen = reward_scores(reward_model, tokenizer, prompts, [p.chosen for p in pairs])
    rejected = reward_scores(reward_model, tokenizer, prompts, [p.rejected for p in pairs])
    return chosen > rejected


def pair_group(pair: PreferencePair) -> str:
    """What a pair tests: why its rejected reply loses (``kind``) and, for wrong answers, the
    task as well (``wrong.arithmetic``): judging a wrong answer takes knowing the right one,
    which a small backbone has for some tasks and not others."""
    return f"{pair.kind}.{pair.family}" if pair.kind == "wrong" else pair.kind


def reward_model_metrics(reward_model, tokenizer, pairs: list[PreferencePair]) -> dict[str, float]:
    """Pairwise accuracy overall and per ``pair_group`` (``accuracy.<group>``, with the number of
    pairs as ``pairs.<group>``), so the report shows where the reward model errs, not only how
    often."""
    return accuracy_by_group(pairs, ranked_right(reward_model, tokenizer, pairs).tolist())


def accuracy_by_group(pairs: list[PreferencePair], right: list[bool]) -> dict[str, float]:
    """``reward_model_metrics`` from the per-pair verdicts."""
    if len(pairs) != len(right):
        raise ValueError(f"{len(right)} verdicts for {len(pairs)} pairs")
    groups: dict[str, list[bool]] = {}
    for pair, ok in zip(pairs, right):
        groups.setdefault(pair_group(pair), []).append(bool(ok))
    metrics = {"pairwise_accuracy": sum(right) / len(right) if right else 0.0}
    metrics.update(interval_metrics("pairwise_accuracy", right))
    for group in sorted(groups):
        metrics[f"accuracy.{group}"] = sum(groups[group]) / len(groups[group])
        metrics[f"pairs.{group}"] = float(len(groups[group]))
    return metrics


def preference_metrics(
    replies: list[str], baseline: list[str], pairs: list[PreferencePair], reward_model, tokenizer,
    logprob_gap: torch.Tensor | None,
) -> dict[str, Any]:
    """Reward-model and oracle scores of ``replies`` and their win rates over ``baseline``."""
    prompts = [p.prompt for p in pairs]
    rm = reward_scores(reward_model, tokenizer, prompts, replies)
    rm_base = reward_scores(reward_model, tokenizer, prompts, baseline)
    oracle = [oracle_score(r, p.reference, p.family) for r, p in zip(replies, pairs)]
    rm_wins = ((rm > rm_base).float() + 0.5 * (rm == rm_base).float()).tolist()
    oracle_wins = [oracle_prefers(r, b, p.reference, p.family) for r, b, p in zip(replies, baseline, pairs)]
    metrics = {
        "rm_score": float(rm.mean()),
        "oracle_score": sum(oracle) / len(oracle),
        "win_rate_rm_vs_sft": sum(rm_wins) / len(rm_wins),
        "win_rate_oracle_vs_sft": sum(oracle_wins) / len(oracle_wins),
        **interval_metrics("win_rate_rm_vs_sft", rm_wins),
        **interval_metrics("win_rate_oracle_vs_sft", oracle_wins),
    }
    if logprob_gap is not None:
        metrics["kl_to_sft"] = float(logprob_gap.mean())
    return metrics
