"""Flawed demonstrations: a seeded share, each worse than the ideal reply by the oracle."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from components.data_prep.demonstrations import FLAW_WEIGHTS, flaw_demonstrations, flawed_reply
from components.data_prep.instructions import generate_instructions
from components.data_prep.preferences import FILLERS, RUDE, oracle_score
from components.data_prep.world import build_world

SEED = 1234


@pytest.fixture(scope="module")
def examples():
    train, _ = generate_instructions(build_world(SEED, 40), SEED, 400, 20)
    return train


def test_share_of_flawed_replies_and_every_one_is_dispreferred(examples):
    flawed, counts = flaw_demonstrations(examples, 0.4, SEED)
    changed = [(a, b) for a, b in zip(examples, flawed) if a.answer != b.answer]
    assert len(changed) == sum(counts.values()) == 160
    assert set(counts) == set(FLAW_WEIGHTS) and counts["padded"] > counts["rude"]
    assert [e.id for e in flawed] == [e.id for e in examples]
    for ideal, bad in changed:
        assert bad.messages[:-1] == ideal.messages[:-1] and bad.messages[-1]["content"] == bad.answer
        assert oracle_score(bad.answer, ideal.answer, ideal.family) < oracle_score(ideal.answer, ideal.answer, ideal.family)


def test_flaws_are_seeded_and_zero_share_changes_nothing(examples):
    a, _ = flaw_demonstrations(examples, 0.3, SEED)
    b, _ = flaw_demonstrations(examples, 0.3, SEED)
    c, _ = flaw_demonstrations(examples, 0.3, SEED + 1)
    assert a == b and a != c
    same, counts = flaw_demonstrations(examples, 0.0, SEED)
    assert same == examples and not counts


def test_each_kind_of_flaw():
    rng = random.Random(0)
    padded = flawed_reply("Mira lives in Ashford.", "padded", rng)
    assert padded.startswith("Mira lives in Ashford. ") and any(f in padded for f in FILLERS)
    rude = flawed_reply("Mira lives in Ashford.", "rude", rng)
    assert rude.startswith("Mira lives in Ashford. ") and any(rude.endswith(r) for r in RUDE)
    with pytest.raises(ValueError, match="unknown flaw 'sloppy'"):
        flawed_reply("x", "sloppy", rng)
    with pytest.raises(ValueError, match="flawed share"):
        flaw_demonstrations([], 1.0, SEED)


def test_kinds_follow_their_weights(examples):
    _, counts = flaw_demonstrations(examples * 10, 0.5, SEED)
    total = sum(counts.values())
    for kind, weight in FLAW_WEIGHTS.items():
        assert abs(counts[kind] / total - weight) < 0.05, Counter(counts)
