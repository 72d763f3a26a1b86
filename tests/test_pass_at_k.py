"""pass@k is the unbiased estimator from n >= k samples per problem, not "greedy or any of k"."""

from __future__ import annotations

import itertools
import math

import pytest

from components.common.config import load_config
from components.common.config.base import ConfigError
from components.evaluate import reasoning
from components.evaluate.reasoning import pass_at_k


@pytest.mark.parametrize("n,c,k", [(8, 0, 4), (8, 1, 4), (8, 3, 4), (8, 5, 4), (8, 8, 1), (5, 2, 2), (4, 1, 4), (10, 3, 1)])
def test_pass_at_k_is_the_chance_that_k_of_the_n_samples_hold_a_correct_one(n, c, k):
    """Checked by counting: over every k-subset of the n samples, the share with a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    counted = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(counted)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_refuses_fewer_samples_than_k():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 4)
    with pytest.raises((ValueError, ConfigError)):
        load_config("tiny", ["evaluate.pass_k=8", "evaluate.pass_n=4"])


def test_score_problems_estimates_pass_at_k_from_n_samples_without_the_greedy_reply(monkeypatch):
    """Two problems, n = 4 samples each, k = 2. Problem 0: greedy right, no sample right (the old
    "greedy or any of k" counted it solved); problem 1: greedy wrong, 1 of 4 samples right."""
    problems = [{"prompt": [{"role": "user", "content": f"p{i}"}], "answer": "yes"} for i in range(2)]
    greedy = [{"text": "yes", "ended": True}, {"text": "no", "ended": True}]
    sampled = ["no", "no", "no", "no", "no", "yes", "no", "no"]
    calls = {}

    def fake_sample(model, tokenizer, prompts, max_new_tokens, temperature, seed):
        calls["prompts"] = len(prompts)
        return sampled

    monkeypatch.setattr(reasoning, "generate_replies", lambda *a, **k: greedy)
    monkeypatch.setattr(reasoning, "sample_replies", fake_sample)
    monkeypatch.setattr(reasoning, "is_correct", lambda text, answer: text == answer)
    monkeypatch.setattr(reasoning, "final_answer", lambda text: text)
    metrics, _, verdicts = reasoning.score_problems(None, None, problems, 2, 8, 1.0, 0, n=4)
    assert calls["prompts"] == 8  # n samples per problem
    assert metrics["pass_at_1"] == 0.5
    assert verdicts["pass_at_k"] == [0.0, pytest.approx(0.5)]  # 1 - C(3,2)/C(4,2) = 0.5
    assert metrics["pass_at_k"] == pytest.approx(0.25)
    assert metrics["pass_k"] == 2 and metrics["pass_n"] == 4
