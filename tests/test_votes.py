"""Votes as a versioned dataset (issue #23): the snapshot's watermark, the leak check, how votes
combine with other pairs, exports under a prefix, and the labelling pool."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from components.common.errors import DataError
from components.data_prep.preferences import PreferencePair
from components.data_prep.votes import (
    VOTE_KIND,
    combine,
    label_prompt_pool,
    prompt_key,
    redact,
    snapshot_database,
    snapshot_exports,
    take_snapshot,
    vote_pairs,
)
from components.label.repository import Repository


def _pairs(repo: Repository, prompts: list[str], batch: str = "session-1") -> list[int]:
    return repo.add_pairs(
        {
            "batch": batch, "position": i, "prompt_id": f"p{i}",
            "prompt": [{"role": "user", "content": text}],
            "reply_a": f"good answer {i}", "reply_b": f"bad answer {i}, you fool",
            "model_a": "models:/fromscratch@champion", "model_b": "models:/fromscratch@champion",
            "sampling": {"temperature": 0.8},
        }
        for i, text in enumerate(prompts)
    )


def _vote(repo: Repository, pair_id: int, who: str, choice: str = "a") -> int:
    return repo.record_vote(pair_id, who, choice, "", uuid.uuid4().hex)


@pytest.fixture()
def repo(tmp_path):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    r = Repository.from_url(url)
    r.url = url
    return r


def test_vote_cast_while_reading_lands_in_the_next_snapshot(repo):
    ids = _pairs(repo, [f"question {i}" for i in range(4)])
    first = [_vote(repo, ids[0], "ann"), _vote(repo, ids[1], "ann")]
    late: list[int] = []

    def cast_meanwhile() -> None:  # another process votes after the watermark is read
        late.append(_vote(repo, ids[2], "ann"))

    snap = snapshot_database(repo.url, _between=cast_meanwhile)
    assert [v.id for v in snap.votes] == first
    assert snap.watermark == max(first)
    nxt = snapshot_database(repo.url, after=snap.watermark)
    assert [v.id for v in nxt.votes] == late  # in the next one, once
    full = snapshot_database(repo.url)
    assert [v.id for v in full.votes] == first + late


def test_snapshots_under_concurrent_voting_lose_nothing_and_count_nothing_twice(repo):
    ids = _pairs(repo, [f"question {i}" for i in range(60)])
    cast: list[int] = []
    done = threading.Event()

    def labeler(name: str) -> None:
        for pid in ids:
            cast.append(_vote(repo, pid, name, "a" if pid % 3 else "b"))

    threads = [threading.Thread(target=labeler, args=(n,)) for n in ("ann", "bob")]
    for t in threads:
        t.start()
    seen: list[int] = []
    watermark = 0
    while not done.is_set():
        alive = any(t.is_alive() for t in threads)
        snap = snapshot_database(repo.url, after=watermark)
        assert all(v.id > watermark for v in snap.votes)
        seen += [v.id for v in snap.votes]
        watermark = snap.watermark
        if not alive:
            done.set()
    for t in threads:
        t.join()
    assert len(cast) == 120
    assert sorted(seen) == sorted(cast)  # every vote in exactly one snapshot's new part
    assert len(seen) == len(set(seen))


def test_snapshot_digest_is_stable_and_changes_with_a_new_vote(repo):
    ids = _pairs(repo, ["a", "b"])
    _vote(repo, ids[0], "ann")
    one, again = snapshot_database(repo.url), snapshot_database(repo.url)
    assert one.digest == again.digest and len(one.votes) == 1
    _vote(repo, ids[1], "ann")
    assert snapshot_database(repo.url).digest != one.digest


def test_snapshot_refuses_a_database_without_label_tables(tmp_path):
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE x (id INTEGER)").connection.commit()
    with pytest.raises(DataError, match="no label tables"):
        snapshot_database(f"sqlite:///{tmp_path / 'other.db'}")


def test_env_source_reads_the_url_from_the_environment(repo, monkeypatch):
    ids = _pairs(repo, ["x"])
    _vote(repo, ids[0], "ann")
    monkeypatch.setenv("FROMSCRATCH_LABEL_DB", repo.url)
    assert len(take_snapshot("env:FROMSCRATCH_LABEL_DB").votes) == 1
    monkeypatch.delenv("FROMSCRATCH_LABEL_DB")
    with pytest.raises(DataError, match="FROMSCRATCH_LABEL_DB is not set"):
        take_snapshot("env:FROMSCRATCH_LABEL_DB")
    assert redact("postgresql://label:s3cret@db:5432/label") == "postgresql://label:***@db:5432/label"


def test_leak_check_drops_and_counts_votes_on_heldout_prompts(repo):
    ids = _pairs(repo, ["What is 2 + 2?", "Name a colour.", "Who is Ada?", "Say hi."])
    for pid in ids:
        _vote(repo, pid, "ann")
    _vote(repo, ids[0], "bob")
    held = {prompt_key("  what IS 2 +   2? ")}  # case and spacing do not hide a held-out prompt
    result = vote_pairs(snapshot_database(repo.url).votes, held, heldout_fraction=0.0)
    assert result.counts["leaked_votes_dropped"] == 2
    assert result.dropped_prompts == [prompt_key("What is 2 + 2?")]
    trained = {prompt_key(p.prompt) for p in result.train + result.heldout}
    assert prompt_key("What is 2 + 2?") not in trained
    assert len(result.train) == 3


def test_majority_pairs_and_newest_held_out(repo):
    ids = _pairs(repo, [f"q{i}" for i in range(6)])
    for pid in ids[:5]:
        _vote(repo, pid, "ann", "a")
    _vote(repo, ids[1], "bob", "b")
    _vote(repo, ids[1], "cy", "b")  # pair 2: B wins 2-1
    _vote(repo, ids[5], "ann", "tie")  # says nothing
    result = vote_pairs(snapshot_database(repo.url).votes, set(), heldout_fraction=0.2)
    assert result.counts["pairs"] == 5 and result.counts["level_or_undecided_pairs"] == 1
    assert all(p.kind == VOTE_KIND for p in result.train + result.heldout)
    flipped = next(p for p in result.train + result.heldout if p.id == f"vote-pair-{ids[1]}")
    assert flipped.chosen.startswith("bad answer")  # majority, not the first vote
    # newest by vote: pair 2 got its last vote last, so it is the one held out
    assert [p.id for p in result.heldout] == [f"vote-pair-{ids[1]}"]


def _pp(i: int, kind: str = "generated") -> PreferencePair:
    return PreferencePair(f"{kind}-{i}", "f", [{"role": "user", "content": str(i)}], "c", "r", None, kind)


@pytest.mark.parametrize("mode,weight,train_len,held_first", [
    ("alone", 1, 2, "votes-h"), ("mixed", 1, 5, "votes-h"), ("weighted", 3, 9, "votes-h"),
])
def test_combine_modes(mode, weight, train_len, held_first):
    from components.data_prep.votes import VotePairs

    votes = VotePairs([_pp(1, "votes"), _pp(2, "votes")], [PreferencePair("votes-h", "f", [], "c", "r", None, "votes")])
    train, held = combine(mode, weight, [_pp(i) for i in range(3)], [_pp(9)], votes)
    assert len(train) == train_len
    assert held[0].id == held_first
    assert len(held) == (1 if mode == "alone" else 2)


def test_exports_under_a_prefix_are_read_as_of_now_and_counted_once(tmp_path):
    prefix = tmp_path / "exports"
    prefix.mkdir()
    rec = {"id": "label-3", "pair_id": 3, "prompt": [{"role": "user", "content": "q"}], "chosen": "good",
           "rejected": "bad", "votes": {"a": 2, "b": 1, "tie": 0, "both_bad": 0}, "labelled_at": "2026-12-01T00:00:00"}
    (prefix / "2026-12-01.jsonl").write_text(json.dumps(rec) + "\n")
    (prefix / "2026-12-02.jsonl").write_text(json.dumps(rec) + "\n")  # the cumulative export repeats it
    snap = snapshot_exports(str(prefix))
    assert len(snap.votes) == 3  # the tally of one pair, once
    pairs = vote_pairs(snap.votes, set(), 0.0)
    assert pairs.train[0].chosen == "good"
    bad = prefix / "2026-12-03.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="2026-12-03.jsonl:1"):
        snapshot_exports(str(prefix))


def test_label_pool_is_disjoint_from_every_heldout_suite(tmp_path):
    def write(name, records):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(path)

    def chat(q):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]}

    manifest = {
        "sft": {"train": {"uri": write("sft-train.jsonl", [chat("q1"), chat("q2"), chat("Q3"), chat("q4"), chat("q1")])},
                "heldout": {"uri": write("sft-held.jsonl", [chat("q2")])}},
        "preference": {"heldout": {"uri": write("pref-held.jsonl", [{"prompt": [{"role": "user", "content": "q3"}]}])}},
        "rlvr": {"heldout": {"uri": write("rlvr-held.jsonl", [{"prompt": [{"role": "user", "content": "q4"}]}])}},
    }
    pool = label_prompt_pool(manifest)
    assert [p["prompt"][0]["content"] for p in pool] == ["q1"]
