"""Greedy continuations of fixed prompts, and a measure of how much they read like the corpus.

The same prompts go to every checkpoint, so the report shows the random model's gibberish next
to the trained model's sentences. ``word_validity`` turns "reads like the corpus" into a number:
the share of generated words that occur in the training corpus' vocabulary.
"""

from __future__ import annotations

import re

import torch
from transformers import PreTrainedTokenizerFast

WORD = re.compile(r"[A-Za-z]+")


def corpus_vocabulary(docs: list[str]) -> set[str]:
    return {w.lower() for doc in docs for w in WORD.findall(doc)}


@torch.no_grad()
def greedy_samples(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    max_new_tokens: int,
) -> list[dict[str, str]]:
    """One batched, KV-cached greedy generation for all prompts (left padding)."""
    model.eval()
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [{"prompt": p, "completion": t} for p, t in zip(prompts, texts)]


def word_validity(samples: list[dict[str, str]], vocabulary: set[str]) -> float:
    """Share of generated words (letters only) found in the corpus vocabulary; 0 if none."""
    words = [w.lower() for s in samples for w in WORD.findall(s["completion"])]
    if not words:
        return 0.0
    return sum(w in vocabulary for w in words) / len(words)
