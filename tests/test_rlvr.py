"""The rlvr stage: GRPO in Ray Train workers under DeepSpeed, killed mid-way, resumes and finishes."""

from __future__ import annotations

import os

import pytest

from components.common import storage
from components.common.tracking import Tracker
from components.data_prep.step import run_data_prep
from components.pretrain.step import run_pretrain
from components.rlvr.grpo import problems_dataset
from components.rlvr.step import run_rlvr
from tests.faults import kill_worker_after_first_checkpoint


def test_grpo_batch_counts_replies_not_prompts(make_config):
    rc = make_config("rlvr.prompts_per_step=3", "rlvr.num_generations=4").rlvr
    assert rc.per_device_batch == 12
    assert rc.accumulation == 1


def test_problem_rows_keep_the_verifier_columns():
    rows = problems_dataset(
        [{"id": "a", "prompt": [{"role": "user", "content": "1 + 1?"}], "answer": 2, "difficulty": 2, "family": "f"}]
    )
    assert rows[0]["answer"] == "2" and rows[0]["difficulty"] == 2 and rows[0]["prompt"][0]["content"] == "1 + 1?"


def test_instruction_rows_are_mixed_in_at_their_share():
    problems = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"{i} + 1?"}], "answer": i + 1} for i in range(30)]
    instructions = [{"family": "fact_town", "prompt": [{"role": "user", "content": "Where does Mira live?"}],
                     "reference": "Mira lives in Ashford."}]
    rows = problems_dataset(problems, instructions, 0.25, seed=3)
    kinds = [r["reference"] is not None for r in rows]
    assert len(rows) == 40 and sum(kinds) == 10 and kinds != sorted(kinds)  # a quarter, shuffled in
    instruction = rows[kinds.index(True)]
    assert instruction["answer"] is None and instruction["reference"] == "Mira lives in Ashford."
    assert all(r["answer"] is not None for r in rows if r["reference"] is None)
    assert len(problems_dataset(problems, instructions, 0.0)) == 30


def test_instruction_share_needs_the_reply_verifier(make_config):
    with pytest.raises(Exception, match="needs the 'reply' verifier"):
        make_config("rlvr.instruction_share=0.2", "rlvr.rewards=['correct']")


def test_unknown_verifier_fails_before_training(make_config):
    cfg = make_config("rlvr.rewards=['correct', 'reply', 'vibes']")
    with pytest.raises(ValueError, match="vibes"):
        run_rlvr(cfg, "bad", "/nonexistent", {"uri": "/nonexistent"})


def test_killed_worker_during_grpo_resumes_and_finishes(make_config, local_ray):
    cfg = make_config(
        "pretrain.steps=30", "pretrain.checkpoint_every=30",
        "data.problems.num_train=200", "data.problems.num_heldout=20",
        "rlvr.steps=12", "rlvr.checkpoint_every=4", "rlvr.prompts_per_step=2", "rlvr.num_generations=4",
        "rlvr.max_new_tokens=12", "rlvr.log_every=2",
    )
    manifest = run_data_prep(cfg, "kill")
    base = run_pretrain(cfg, "kill", manifest["data_uri"])["pretrain"]
    killed: list[int] = []
    watcher = kill_worker_after_first_checkpoint(os.path.join(cfg.storage.root, "kill", "ray", "rlvr"), killed)
    out = run_rlvr(cfg, "kill", manifest["data_uri"], base)
    watcher.join(timeout=5)
    assert killed, "no GRPO worker was killed"
    assert out["resumed_from"] >= 4 and out["step"] == 12, out
    assert out["rollout_tokens"] > 0 and out["rollout_tokens_per_second"] > 0
    assert storage.is_complete(out["uri"])
    assert storage.read_json(storage.join(out["uri"], "train_summary.json"))["step"] == 12
    chain = Tracker(cfg).lineage(out["model_id"])
    assert [link["stage"] for link in chain] == ["rlvr", "pretrain", "init"]
    assert any("rlvr-train" in d for d in chain[0]["datasets"])
