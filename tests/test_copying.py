"""The in-context copying suite: its losses line up with the two copies, and its score separates
a model that copies from one that does not."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from components.evaluate.copying import copy_losses, copy_score, in_context_copying

VOCAB = 50


class Copier(torch.nn.Module):
    """Predicts token t+1 as the token ``period`` places before it (an ideal induction head for
    a sequence repeated with that period); uniform where there is nothing to copy yet."""

    def __init__(self, period: int) -> None:
        super().__init__()
        self.period = period

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        n, t = input_ids.shape
        logits = torch.zeros(n, t, VOCAB)
        for pos in range(t):
            source = pos + 1 - self.period  # only ever an earlier position: no peeking ahead
            if 0 <= source <= pos:
                logits[torch.arange(n), pos, input_ids[:, source]] = 30.0
        return SimpleNamespace(logits=logits)


class Uniform(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB))


def _sequences(n: int = 4, length: int = 6) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(0))


def test_a_model_that_copies_predicts_the_second_copy_and_not_the_first() -> None:
    seqs = _sequences(length=6)
    first, second = copy_losses(Copier(period=6), seqs)
    assert first == pytest.approx(math.log(VOCAB), rel=1e-4)  # nothing to copy from yet
    assert second < 1e-6  # every scored token of the repeat is a copy
    assert copy_score(first, second) == pytest.approx(1.0, abs=1e-6)


def test_a_copier_with_the_wrong_period_gets_no_credit() -> None:
    """Catches an off-by-one in the slices: an induction head looking one token too far back
    must not score as if it copied."""
    first, second = copy_losses(Copier(period=5), _sequences(length=6))
    assert second > 10  # confidently wrong
    assert copy_score(first, second) < 0


def test_a_model_that_ignores_its_context_scores_zero() -> None:
    first, second = copy_losses(Uniform(), _sequences())
    assert first == pytest.approx(second)
    assert copy_score(first, second) == pytest.approx(0.0)


def test_bad_shapes_and_an_empty_pool_are_refused() -> None:
    with pytest.raises(ValueError, match="length >= 2"):
        copy_losses(Uniform(), torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="no held-out tokens"):
        in_context_copying(Uniform(), np.zeros((0, 8), dtype=np.int32), 4, 6, seed=0)


def test_the_suite_draws_from_the_held_out_tokens_and_is_seeded() -> None:
    blocks = np.arange(40, dtype=np.int32).reshape(4, 10)  # token ids 0..39, all < VOCAB
    a = in_context_copying(Copier(period=8), blocks, 5, 8, seed=3)
    b = in_context_copying(Copier(period=8), blocks, 5, 8, seed=3)
    assert a == b
    assert set(a) == {"copy.first_loss", "copy.second_loss", "copy.score"}
    assert a["copy.score"] == pytest.approx(1.0, abs=1e-6)
    assert in_context_copying(Uniform(), blocks, 5, 8, seed=3)["copy.score"] == pytest.approx(0.0)
