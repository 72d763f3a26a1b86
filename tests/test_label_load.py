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


def test_check_stored_notices_lost_and_changed_votes(tmp_path):
    from components.label.loadtest import seed_pairs
    from components.label.repository import Repository

    db = f"sqlite:///{tmp_path / 'labels.db'}"
    seed_pairs(db, 3)
    repo = Repository.from_url(db)
    repo.record_vote(1, "labeler-00", "a", "", "n1")
    repo.record_vote(2, "labeler-00", "tie", "", "n2")
    result = LoadResult(1, 3, 1.0)
    result.sent = {("labeler-00", 1): "a", ("labeler-00", 2): "b", ("labeler-00", 3): "a"}
    assert check_stored(db, result) == [
        "vote ('labeler-00', 2): sent b, stored tie", "vote ('labeler-00', 3): sent a, stored None",
    ]
    result.sent = {("labeler-00", 1): "a", ("labeler-00", 2): "tie"}
    result.votes_each = 2
    assert check_stored(db, result) == []


def test_percentile_is_nearest_rank():
    values = [i / 1000 for i in range(1, 21)]  # 1..20 ms
    assert LoadResult.percentile(values, 95) == 0.019 and LoadResult.percentile(values, 50) == 0.010
