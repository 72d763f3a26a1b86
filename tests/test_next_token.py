"""The next-token picture: top-k probabilities and entropy per prompt, the mean entropy and
the KL to the stage before on held-out text, and the figure on the report card."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from components.evaluate.next_token import (
    PLOT_NAME,
    heldout_next_token,
    kl_divergence,
    plot_next_tokens,
    top_next_tokens,
)
from components.evaluate.report_card import build_report_card

VOCAB = 16


class FixedModel(torch.nn.Module):
    """Logits that do not depend on the input: ``bias`` at every position."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(bias.clone())

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, VOCAB))


class Tokens:
    """A tokenizer stand-in: a character per token."""

    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        return {"input_ids": torch.tensor([[ord(c) % VOCAB for c in text]])}

    def decode(self, ids):
        return f"t{ids[0]}"


def _sharp() -> torch.Tensor:
    bias = torch.zeros(VOCAB)
    bias[3] = 8.0
    bias[5] = 6.0
    return bias


def test_a_flat_model_has_the_largest_entropy_and_a_sharp_one_puts_its_mass_on_top():
    flat = top_next_tokens(FixedModel(torch.zeros(VOCAB)), Tokens(), ["ab"], top_k=4)[0]
    assert flat["entropy"] == pytest.approx(math.log(VOCAB)) == pytest.approx(flat["max_entropy"])
    assert [p for _, p in flat["top"]] == pytest.approx([1 / VOCAB] * 4)
    sharp = top_next_tokens(FixedModel(_sharp()), Tokens(), ["ab"], top_k=4)[0]
    assert [t for t, _ in sharp["top"]][:2] == ["t3", "t5"]
    assert sharp["top"][0][1] > 0.8 and sharp["entropy"] < 0.6 * math.log(VOCAB)


def test_kl_to_the_stage_before_is_zero_for_the_same_model_and_matches_the_formula():
    blocks = np.arange(40).reshape(4, 10) % VOCAB
    flat_metrics, flat_lp = heldout_next_token(FixedModel(torch.zeros(VOCAB)), blocks, 20, 2, None)
    assert "next_token.kl_to_previous" not in flat_metrics  # nothing before the first checkpoint
    assert flat_lp.shape == (20, VOCAB)
    same, _ = heldout_next_token(FixedModel(torch.zeros(VOCAB)), blocks, 20, 2, flat_lp)
    assert same["next_token.kl_to_previous"] == pytest.approx(0.0, abs=1e-6)
    sharp, sharp_lp = heldout_next_token(FixedModel(_sharp()), blocks, 20, 2, flat_lp)
    p = torch.softmax(_sharp(), -1)
    expected = float((p * (p.log() - math.log(1 / VOCAB))).sum())  # KL(sharp || flat)
    assert sharp["next_token.kl_to_previous"] == pytest.approx(expected, rel=1e-5)
    assert sharp["next_token.entropy"] < flat_metrics["next_token.entropy"]
    assert kl_divergence(sharp_lp, flat_lp) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        kl_divergence(sharp_lp[:5], flat_lp)
    assert heldout_next_token(FixedModel(_sharp()), blocks, 0, 2, None) == ({}, None)  # kl_tokens=0: off


def test_the_report_card_draws_the_picture_and_lists_the_kl():
    flat = top_next_tokens(FixedModel(torch.zeros(VOCAB)), Tokens(), ["ab", "cd"], top_k=5)
    sharp = top_next_tokens(FixedModel(_sharp()), Tokens(), ["ab", "cd"], top_k=5)
    png = plot_next_tokens({"init": flat, "pretrain": sharp})
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_next_tokens({"init": [], "pretrain": []}) is None
    results = {
        "init": {"metrics": {"perplexity": 16.0, "next_token.entropy": 2.77}, "next_token": flat},
        "pretrain": {"metrics": {"perplexity": 3.0, "next_token.entropy": 0.5, "next_token.kl_to_previous": 1.9},
                     "next_token": sharp},
    }
    card = build_report_card(results, {}, None, "nt")
    assert PLOT_NAME in card.images
    assert "The next-token picture" in card.markdown and f"]({PLOT_NAME})" in card.markdown
    assert "next_token.kl_to_previous" in card.markdown and "| 1.9 |" in card.markdown
    assert card.html.count("data:image/png;base64,") == 1  # the picture (no training curves given)
