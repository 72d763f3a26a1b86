"""95 % intervals of the evaluation's shares, and how the report card shows them."""

from __future__ import annotations

import math

import pytest

from components.evaluate.intervals import bootstrap_interval, change_metrics, interval_metrics, is_interval_key
from components.evaluate.report import change_keys, fmt_metric, metric_table, other_metric_keys


def _verdicts(right: int, total: int) -> list[float]:
    return [1.0] * right + [0.0] * (total - right)


def test_the_interval_of_a_share_matches_the_textbook_width() -> None:
    """380 of 400 right: the normal approximation gives 0.95 +- 1.96 * sqrt(.95 * .05 / 400),
    i.e. about +-0.021; the bootstrap must agree to within a few thousandths."""
    low, high = bootstrap_interval(_verdicts(380, 400))
    half = 1.96 * math.sqrt(0.95 * 0.05 / 400)
    assert low < 0.95 < high
    assert low == pytest.approx(0.95 - half, abs=0.006)
    assert high == pytest.approx(0.95 + half, abs=0.006)


def test_more_items_give_a_narrower_interval() -> None:
    small = bootstrap_interval(_verdicts(70, 100))
    large = bootstrap_interval(_verdicts(700, 1000))
    assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])


def test_values_that_never_vary_have_no_spread_and_ties_count_half() -> None:
    assert bootstrap_interval([1.0] * 50) == (1.0, 1.0)
    assert bootstrap_interval([0.5] * 50) == (0.5, 0.5)
    low, high = bootstrap_interval([1.0, 0.5, 0.0, 0.5] * 25)  # mean 0.5
    assert low < 0.5 < high


def test_intervals_are_reproducible_and_bad_input_is_refused() -> None:
    values = _verdicts(33, 60)
    assert bootstrap_interval(values) == bootstrap_interval(values)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(values, level=1.5)


def test_interval_metrics_name_their_share() -> None:
    out = interval_metrics("pairwise_accuracy", _verdicts(9, 10))
    assert set(out) == {"pairwise_accuracy.ci_low", "pairwise_accuracy.ci_high"}
    assert all(is_interval_key(k) for k in out)
    assert out["pairwise_accuracy.ci_low"] <= 0.9 <= out["pairwise_accuracy.ci_high"]
    assert interval_metrics("pairwise_accuracy", []) == {}


def test_the_report_shows_the_interval_beside_its_metric_not_as_a_row() -> None:
    metrics = {"reason.pass_at_1": 0.3367, "reason.pass_at_1.ci_low": 0.2833, "reason.pass_at_1.ci_high": 0.39,
               "pref.kl_to_sft": 0.75}
    assert fmt_metric(metrics, "reason.pass_at_1") == "0.3367 [0.2833, 0.39]"
    assert fmt_metric(metrics, "pref.kl_to_sft") == "0.75"
    assert fmt_metric(metrics, "instruct.compliance") == "–"
    results = {"rlvr": {"metrics": metrics}}
    table = metric_table(results, [("reason.pass_at_1", "reasoning pass@1")])
    assert table.rows == [["reasoning pass@1", "reason.pass_at_1", "0.3367 [0.2833, 0.39]"]]
    assert [k for k, _ in other_metric_keys(results)] == ["pref.kl_to_sft"]


def test_a_stage_change_is_paired_item_by_item() -> None:
    """300 problems: the start solves 56; the next stage solves those and 45 more. The change is
    +0.15 and its paired interval is narrower than the two separate intervals would suggest."""
    before = _verdicts(56, 300)
    after = [1.0] * 101 + [0.0] * 199
    out = change_metrics("reason.pass_at_1", before, after)
    assert out["change.reason.pass_at_1"] == pytest.approx(0.15)
    low, high = out["change.reason.pass_at_1.ci_low"], out["change.reason.pass_at_1.ci_high"]
    assert 0.0 < low < 0.15 < high
    separate = bootstrap_interval(after)[1] - bootstrap_interval(before)[0]  # unpaired upper reach
    assert high - low < separate - 0.15
    # no change at all: zero, with no spread
    assert change_metrics("k", before, before) == {"change.k": 0.0, "change.k.ci_low": 0.0, "change.k.ci_high": 0.0}
    assert change_metrics("k", before, after[:-1]) == {}  # not the same items
    assert change_metrics("k", [], []) == {}


def test_the_report_shows_changes_with_their_sign_in_a_table_of_their_own() -> None:
    metrics = {"reason.pass_at_1": 0.3367, "change.reason.pass_at_1": 0.15,
               "change.reason.pass_at_1.ci_low": 0.1, "change.reason.pass_at_1.ci_high": 0.2,
               "change.instruct.compliance": -0.0238}
    assert fmt_metric(metrics, "change.reason.pass_at_1") == "+0.15 [+0.1, +0.2]"
    assert fmt_metric(metrics, "change.instruct.compliance") == "-0.0238"
    results = {"preference": {"metrics": {"reason.pass_at_1": 0.1867}}, "rlvr": {"metrics": metrics}}
    assert [k for k, _ in change_keys(results)] == ["change.reason.pass_at_1", "change.instruct.compliance"]
    table = metric_table(results, change_keys(results))
    assert table.rows[0] == ["reasoning pass@1", "change.reason.pass_at_1", "–", "+0.15 [+0.1, +0.2]"]
    assert not any(k.startswith("change.") for k, _ in other_metric_keys(results))
