"""Many labelers at once on loopback: every vote stored exactly once, as sent, none lost.

The default run has 20 labelers × 10 votes (a few seconds); the issue's 20 × 50 is marked slow.
Response-time figures come from ``benchmarks/label_load.py``, never asserted here."""

from __future__ import annotations

import pytest

from components.label.loadtest import LoadResult, check_stored, run_load


def _check(tmp_path, labelers: int, votes: int) -> None:
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    result = run_load(db, labelers, votes)
    assert result.errors == []
    assert len(result.sent) == labelers * votes
    assert check_stored(db, result) == []
    assert len(result.latencies["vote"]) == labelers * votes


def test_concurrent_labelers_lose_no_vote(tmp_path):
    _check(tmp_path, 20, 10)


@pytest.mark.slow
def test_twenty_labelers_fifty_votes_each(tmp_path):
    _check(tmp_path, 20, 50)


def test_check_stored_notices_a_lost_vote(tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    result = run_load(db, 2, 3)
    result.sent[("labeler-00", 999)] = "a"  # a vote the server never stored
    result.labelers = 2
    problems = check_stored(db, result)
    assert "vote ('labeler-00', 999): sent a, stored None" in problems


def test_percentile_is_nearest_rank():
    values = [i / 1000 for i in range(1, 21)]  # 1..20 ms
    assert LoadResult.percentile(values, 95) == 0.019 and LoadResult.percentile(values, 50) == 0.010
