"""Instruction following on held-out prompts: format compliance and exact-match accuracy.

Each held-out conversation (without its last turn) is rendered with the chat template plus
the generation prompt, and the checkpoint answers greedily. A reply *complies* when the model
closes its turn with EOS within the token budget, writes no role markers inside it, and the
text has the family's expected shape. It is *correct* when it also matches the reference
exactly. The random and pre-trained models have never seen the chat format, so they should
score about zero here; that gap is what SFT buys.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from components.common.modeling import model_device
from components.data_prep.instructions import Example, check_reply, well_formed
from components.evaluate.intervals import interval_metrics


@torch.no_grad()
def generate_replies(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Greedy replies with the KV cache; per reply: text before EOS, and whether EOS came."""
    model.eval()
    tokenizer.padding_side = "left"
    special = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    out: list[dict[str, Any]] = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chunk]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model_device(model))
        generated = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )[:, enc["input_ids"].shape[1] :]
        for row in generated.tolist():
            ended = tokenizer.eos_token_id in row
            body = row[: row.index(tokenizer.eos_token_id)] if ended else row
            body = [t for t in body if t != tokenizer.pad_token_id]
            out.append(
                {
                    "text": tokenizer.decode(body, skip_special_tokens=True),
                    "ended": ended,
                    "clean": not any(t in special for t in body),
                }
            )
    return out


def score_instructions(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    examples: list[Example],
    max_new_tokens: int,
) -> tuple[dict[str, float], list[dict[str, str]], dict[str, list[float]]]:
    """Compliance and accuracy overall and per family, one sample reply per family, and the
    per-prompt verdicts (``compliance`` / ``accuracy``: 1.0 / 0.0, in prompt order) that let two
    checkpoints be compared prompt by prompt."""
    replies = generate_replies(model, tokenizer, [e.prompt_messages for e in examples], max_new_tokens)
    per_family: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    samples: dict[str, dict[str, str]] = {}
    in_order: list[tuple[bool, bool]] = []
    for example, reply in zip(examples, replies):
        complies = reply["ended"] and reply["clean"] and well_formed(example.family, reply["text"])
        correct = complies and check_reply(example, reply["text"])["exact"]
        per_family[example.family].append((complies, correct))
        in_order.append((complies, correct))
        samples.setdefault(
            example.family,
            {"family": example.family, "prompt": example.prompt_messages[-1]["content"],
             "reply": reply["text"], "expected": example.answer},
        )
    verdicts = {"compliance": [float(c) for c, _ in in_order], "accuracy": [float(a) for _, a in in_order]}
    metrics = {
        "compliance": sum(verdicts["compliance"]) / len(in_order),
        "accuracy": sum(verdicts["accuracy"]) / len(in_order),
        **interval_metrics("compliance", verdicts["compliance"]),
    }
    for family, rows in sorted(per_family.items()):
        metrics[f"acc.{family}"] = sum(a for _, a in rows) / len(rows)
    return metrics, list(samples.values()), verdicts
