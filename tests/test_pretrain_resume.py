"""Pre-training survives a killed Ray Train worker, and a failed stage leaves no finished
checkpoint behind while what data_prep wrote stays intact; a re-run resumes."""

from __future__ import annotations

import os

import psutil
import pytest

from components.common import storage
from components.common.tracking import Tracker
from components.data_prep.step import run_data_prep
from components.pretrain.step import checkpoint_uri, run_pretrain
from tests.faults import kill_worker_after_first_checkpoint, pretrain_with_a_killed_worker

STEPS = ["pretrain.steps=100", "pretrain.checkpoint_every=20", "pretrain.log_every=10", "pretrain.warmup_steps=5"]


def test_killed_worker_resumes_from_checkpoint(make_config, local_ray):
    cfg = make_config(*STEPS)
    out, killed = pretrain_with_a_killed_worker(cfg, "kill")
    assert killed, "no training worker was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert out["pretrain"]["resumed_from_step"] in (20, 40, 60, 80)
    # the restarted worker group continued from a checkpoint, not from step 0
    assert out["pretrain"]["resumed_from_step"] >= 20
    assert storage.is_complete(out["pretrain"]["uri"])
    assert out["pretrain"]["final_train_loss"] < 5.0


def test_failed_stage_leaves_no_checkpoint_and_rerun_resumes(make_config, local_ray):
    cfg = make_config(*STEPS, "ray.max_failures=0")
    manifest = run_data_prep(cfg, "fail")
    data_digest = manifest["pretrain"]["train"]["digest"]
    killed: list[int] = []
    watcher = kill_worker_after_first_checkpoint(os.path.join(cfg.storage.root, "fail", "ray", "pretrain"), killed)
    with pytest.raises(Exception):
        run_pretrain(cfg, "fail", manifest["data_uri"])
    watcher.join(timeout=5)
    assert killed
    run_dir = storage.join(cfg.storage.root, "fail")
    assert not storage.is_complete(checkpoint_uri(run_dir, "pretrain"))
    assert storage.is_complete(checkpoint_uri(run_dir, "init"))  # stage 0 was finished before
    again = run_data_prep(cfg, "fail")  # earlier stage intact: reused, same bytes
    assert again["pretrain"]["train"]["digest"] == data_digest
    tracker = Tracker(cfg)
    runs = tracker.client.search_runs(
        [tracker.experiment_id], "tags.`fromscratch.stage` = 'pretrain' and tags.`fromscratch.run_id` = 'fail'"
    )
    assert runs[0].info.status == "FAILED"

    # a re-run of the same pipeline run picks up the last checkpoint in storage
    retry = make_config(*STEPS)
    out = run_pretrain(retry, "fail", manifest["data_uri"])
    assert out["pretrain"]["resumed_from_step"] >= 20
    assert storage.is_complete(out["pretrain"]["uri"])
    runs = tracker.client.search_runs(
        [tracker.experiment_id], "tags.`fromscratch.stage` = 'pretrain' and tags.`fromscratch.run_id` = 'fail'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
