"""Lineage from votes to champion (issue #23): the reward model is a model input of the PPO run,
the votes snapshot a dataset input of the reward model's run, and the walk shows champion →
policy → reward model → votes snapshot → labelling sessions. Also: the simulated labeler votes
through the real page over HTTP, the report card tells what the votes did, and a retraining
run's reward model continues from the champion run's one where the shapes fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from components.common import storage
from components.common.config import load_config
from components.common.tracking import TAG_REWARD_MODEL, DatasetRef, Tracker
from components.data_prep.votes import (
    CollectedVotes, snapshot_database, vote_pairs, write_votes,
)
from components.label.repository import Repository
from components.label.simulate import judge, label_pairs_over_http


def _seed_pairs(db_url: str, n: int) -> None:
    Repository.from_url(db_url).add_pairs(
        {
            "batch": "champion-session", "position": i, "prompt_id": f"p{i}",
            "prompt": [{"role": "user", "content": f"Tell me about item {i}."}],
            "reply_a": "Short." if i % 2 else "A much longer reply with <b>many</b> words in it.",
            "reply_b": "A much longer reply with <b>many</b> words in it." if i % 2 else "Short.",
            "model_a": "models:/fromscratch@champion", "model_b": "models:/fromscratch@champion",
            "sampling": {"temperature": 0.8},
        }
        for i in range(n)
    )


def test_simulated_labelers_vote_through_the_page_over_http(tmp_path):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    _seed_pairs(db, 6)
    result = label_pairs_over_http(db, "shorter", labelers=2)
    assert not result.errors
    assert len(result.votes) == 12  # every pair, by each person, once
    snap = snapshot_database(db)
    assert len(snap.votes) == 12
    pairs = vote_pairs(snap.votes, set(), 0.0)
    assert pairs.train and all(p.chosen == "Short." for p in pairs.train)  # the stated taste, as stored
    assert judge("longer", "a b", "a b c") == "b" and judge("shorter", "x", "y") == "tie"


def _lineage_chain(tmp_path) -> tuple[Tracker, str, str, str]:
    """A champion chain made by hand: sft → (reward, ppo) → rlvr, the reward model trained on a
    votes snapshot. Returns (tracker, rlvr model id, reward model id, snapshot digest)."""
    cfg = load_config("tiny", [f"storage.root={tmp_path / 'runs'}"])
    tracker = Tracker(cfg)
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    _seed_pairs(db, 4)
    repo = Repository.from_url(db)
    for pid in range(1, 5):
        repo.record_vote(pid, "ann", "a", "", f"n{pid}")
    snap = snapshot_database(db)
    folder = str(tmp_path / "runs" / "r2" / "data" / "preference")
    info = write_votes(folder, CollectedVotes(snap, vote_pairs(snap.votes, set(), 0.25), 0))
    votes_ref = DatasetRef("preference-votes", info["uri"], info["digest"], "training")
    parent = tracker.pipeline_run("r2")
    sft_run = tracker.stage_run(parent, "r2", "sft")
    sft = tracker.log_checkpoint(sft_run, "sft", "file:///r2/sft", None, None, [])
    pref_run = tracker.stage_run(parent, "r2", "preference")
    tracker.log_datasets(pref_run, [votes_ref])
    reward = tracker.log_checkpoint(pref_run, "reward", "file:///r2/reward", None, sft, [votes_ref],
                                    params={"init_from": "sft"}, model_type="reward-model")
    tracker.log_model_inputs(pref_run, [reward])
    policy = tracker.log_checkpoint(pref_run, "ppo", "file:///r2/ppo", None, sft, [votes_ref])
    tracker.client.set_logged_model_tags(policy, {TAG_REWARD_MODEL: reward})
    rlvr_run = tracker.stage_run(parent, "r2", "rlvr")
    rlvr = tracker.log_checkpoint(rlvr_run, "rlvr", "file:///r2/rlvr", None, policy, [])
    return tracker, rlvr, reward, info["digest"]


def test_lineage_walks_from_champion_to_votes_and_sessions(tmp_path, clean_env):
    tracker, rlvr, reward, digest = _lineage_chain(tmp_path)
    chain = tracker.lineage(rlvr)
    assert [link["stage"] for link in chain] == ["rlvr", "ppo", "sft"]
    assert "reward_model" not in chain[0]
    rm = chain[1]["reward_model"]
    assert rm["model_id"] == reward
    assert rm["votes"]["digest"] == digest[:32]
    assert [s["session"] for s in rm["votes"]["sessions"]] == ["champion-session"]
    assert rm["votes"]["sessions"][0]["votes"] == 4

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "lineage", rlvr, "--set", f"storage.root={tmp_path / 'runs'}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"← reward model {reward}" in proc.stdout
    assert f"← votes snapshot {digest[:32]}" in proc.stdout
    assert "← labelling session champion-se" in proc.stdout


def test_report_card_says_what_the_votes_did():
    from components.evaluate.report_card import votes_sentence

    votes = {"digest": "ab" * 32, "source": "sqlite:///labels.db", "watermark": 40, "num_votes": 40,
             "new_votes": 25, "previous_watermark": 15, "leaked_votes_dropped": 2, "train_pairs": 30,
             "heldout_pairs": 8}
    text = votes_sentence(votes, {"accuracy.votes": 0.75, "pairs.votes": 8.0})
    assert "25 of them new" in text and "2 votes on held-out prompts dropped" in text
    assert "75% of those 8 newest voted pairs" in text


def test_reward_model_continues_from_the_champions_where_shapes_fit(tmp_path, clean_env):
    from components.common.config import PromotionConfig
    from components.common.modeling import random_init_model
    from components.data_prep.tokenizer import train_tokenizer
    from components.evaluate.promotion import promote
    from components.preference.step import previous_reward_model
    from tests.conftest import SMALL

    base = [f"storage.root={tmp_path / 'runs'}", *SMALL]
    cfg = load_config("tiny", base)
    tracker = Tracker(cfg)
    tokenizer = train_tokenizer(["the cat sat on the mat"] * 50, 300, 2)
    reward_uri = storage.join(str(tmp_path / "runs"), "first", "checkpoints", "reward")
    model = random_init_model(cfg.model, tokenizer, seed=1)
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    storage.upload_dir(str(tmp_path / "rm"), reward_uri)
    storage.mark_complete(reward_uri, {"stage": "reward"})
    parent = tracker.pipeline_run("first")
    pref_run = tracker.stage_run(parent, "first", "preference")
    reward = tracker.log_checkpoint(pref_run, "reward", reward_uri, None, None, [], model_type="reward-model")
    rlvr_run = tracker.stage_run(parent, "first", "rlvr")
    champion = tracker.log_checkpoint(rlvr_run, "rlvr", "file:///first/rlvr", None, None, [])
    eval_run = tracker.stage_run(parent, "first", "evaluate")
    assert promote(PromotionConfig(), tracker.client, eval_run, "first", "rlvr", champion, {"reason.pass_at_1": 0.2})["promoted"]

    start = {"kind": "champion", "uri": "file:///first/rlvr", "model_id": champion, "version": "1", "reason": "champion"}
    found = previous_reward_model(cfg, tracker, {"start": start})
    assert found and found["model_id"] == reward and found["uri"] == storage.normalize(reward_uri)
    # no champion start, the switch off, or another shape: a fresh head on SFT
    assert previous_reward_model(cfg, tracker, {"start": {"kind": "random", "reason": "random"}}) is None
    off = load_config("tiny", [*base, "preference.reward.continue_from_champion=false"])
    assert previous_reward_model(off, tracker, {"start": start}) is None
    wider = load_config("tiny", [*base, "model.hidden_size=128"])
    assert previous_reward_model(wider, tracker, {"start": start}) is None
