"""95 % intervals for the evaluation's shares, so a reader can tell a gap from noise.

The held-out suites are a few hundred items, so a share like the reward model's pairwise
accuracy on 400 pairs moves by about ±2 points between two trainings for no reason but chance
(the tiny preset measured 0.9275 and 0.95 from the same seed). Each share is the mean of
per-item values (0/1 verdicts, or 0 / 0.5 / 1 for a comparison that can tie), and a
percentile bootstrap over the items gives its interval without assuming a distribution. The
items are resampled as independent; where a suite asks the same prompt more than once the
true interval is somewhat wider.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
# Fixed, so the same verdicts always give the same interval (results stay reproducible).
SEED = 0


def bootstrap_interval(
    values: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of the mean of ``values``."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of values, got shape {data.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def interval_metrics(key: str, values: Sequence[float]) -> dict[str, float]:
    """``{key.ci_low, key.ci_high}`` for the share ``key`` computed from ``values``; empty when
    there are no values (the share itself is then reported as 0 with nothing to bound)."""
    if len(values) == 0:
        return {}
    low, high = bootstrap_interval(values)
    return {f"{key}.ci_low": low, f"{key}.ci_high": high}


def is_interval_key(key: str) -> bool:
    return key.endswith(".ci_low") or key.endswith(".ci_high")


def change_metrics(key: str, before: Sequence[float], after: Sequence[float]) -> dict[str, float]:
    """What a stage bought on ``key``: the mean per-item change from the checkpoint before it,
    with a paired bootstrap interval (``change.<key>``, ``.ci_low``, ``.ci_high``).

    Pairing matters: both checkpoints answer the same items, and most items are solved by both
    or by neither, so the interval of the difference is much narrower than the two separate
    intervals suggest. Empty when the two lists do not cover the same items.
    """
    if len(before) != len(after) or len(after) == 0:
        return {}
    diff = [float(b) - float(a) for a, b in zip(before, after)]
    low, high = bootstrap_interval(diff)
    name = f"change.{key}"
    return {name: sum(diff) / len(diff), f"{name}.ci_low": low, f"{name}.ci_high": high}
