"""Greedy continuations of fixed prompts, and a measure of how much they read like the corpus.

The same prompts go to every checkpoint, so the report shows the random model's gibberish next
to the trained model's sentences. ``bigram_validity`` turns "reads like the corpus" into a
number: the share of consecutive word pairs in the generated text that also occur in the
training corpus. Single words are not enough: a random model happily repeats one real word
("seventeen seventeen seventeen"), while only a model that learned the language puts words
in an order the corpus uses.
"""

from __future__ import annotations

import re

import torch
from transformers import PreTrainedTokenizerFast

from components.common.modeling import model_device

WORD = re.compile(r"[A-Za-z]+|[0-9]+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def corpus_bigrams(docs: list[str]) -> set[tuple[str, str]]:
    """Every adjacent word pair of the corpus (documents kept apart)."""
    pairs: set[tuple[str, str]] = set()
    for doc in docs:
        words = _words(doc)
        pairs.update(zip(words, words[1:]))
    return pairs


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
    enc = enc.to(model_device(model))
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


def bigram_validity(samples: list[dict[str, str]], bigrams: set[tuple[str, str]]) -> float:
    """Share of word pairs in prompt+completion (pairs crossing into the completion) that the
    corpus contains; 0 when nothing word-like was generated."""
    hits = total = 0
    for sample in samples:
        prompt_words = _words(sample["prompt"])
        words = prompt_words + _words(sample["completion"])
        for pair in list(zip(words, words[1:]))[max(0, len(prompt_words) - 1) :]:
            total += 1
            hits += pair in bigrams
    return hits / total if total else 0.0
