"""Data prep with people's votes (issue #23): the run's snapshot is written and logged to MLflow
as the dataset ``preference-votes`` with its digest and count, a vote on a held-out prompt is
dropped and counted (never trained on), and the newest voted pairs are held out first."""

from __future__ import annotations

import json
import uuid

import pytest

from components.common import storage
from components.common.tracking import Tracker
from components.data_prep.step import run_data_prep
from components.data_prep.votes import label_prompt_pool, prompt_key
from components.label.repository import Repository

SMALLER = ["data.generated.num_train_docs=300", "data.generated.num_heldout_docs=30",
           "data.instructions.num_train=200", "data.instructions.num_heldout=20",
           "data.preferences.num_train=40", "data.preferences.num_heldout=10",
           "data.problems.num_train=40", "data.problems.num_heldout=10"]


def test_data_prep_snapshots_votes_and_refuses_heldout_prompts(make_config, tmp_path, clean_env):
    first = run_data_prep(make_config(*SMALLER), "before")
    held_prompt = storage.read_jsonl(first["sft"]["heldout"]["uri"])[0]["messages"][:-1]
    pool = [r["prompt"] for r in label_prompt_pool(first)][:10]

    db = f"sqlite:///{tmp_path / 'labels.db'}"
    repo = Repository.from_url(db)
    prompts = [held_prompt, *pool]
    ids = repo.add_pairs(
        {"batch": "s1", "position": i, "prompt_id": str(i), "prompt": p, "reply_a": "Yes.", "reply_b": "Well, maybe yes, who knows.",
         "model_a": "m", "model_b": "m", "sampling": {}}
        for i, p in enumerate(prompts)
    )
    for pid in ids:
        repo.record_vote(pid, "ann", "a", "", uuid.uuid4().hex)

    cfg = make_config(*SMALLER, f"data.preferences.votes.source={db}", "data.preferences.votes.heldout_fraction=0.2")
    manifest = run_data_prep(cfg, "with-votes")
    votes = manifest["preference"]["votes"]
    assert votes["num_votes"] == 11 and votes["new_votes"] == 11 and votes["watermark"] == max(ids)
    assert votes["leaked_votes_dropped"] == 1  # the held-out prompt: dropped and counted
    assert votes["train_pairs"] == 8 and votes["heldout_pairs"] == 2

    def keys(split: str) -> list[str]:
        return [prompt_key(r["prompt"]) for r in storage.read_jsonl(manifest["preference"][split]["uri"]) if r["kind"] == "votes"]

    assert prompt_key(held_prompt) not in keys("train") + keys("heldout")
    assert len(keys("train")) == 8
    heldout = storage.read_jsonl(manifest["preference"]["heldout"]["uri"])
    assert [r["kind"] for r in heldout[:2]] == ["votes", "votes"]  # first: evaluation reads the first N
    assert [prompt_key(r["prompt"]) for r in heldout[:2]] == [prompt_key(p) for p in pool[-2:]]  # the newest

    snapshot = storage.read_jsonl(votes["uri"])
    assert len(snapshot) == 11
    import hashlib

    with storage.open_uri(votes["uri"], "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == votes["digest"]

    tracker = Tracker(cfg)
    (run,) = tracker.client.search_runs(
        [tracker.experiment_id], "tags.`fromscratch.run_id` = 'with-votes' and tags.`fromscratch.stage` = 'data_prep'")
    logged = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert logged["preference-votes"] == votes["digest"][:32]
    assert run.data.metrics["votes.leaked_votes_dropped"] == 1 and run.data.metrics["votes.num_votes"] == 11
