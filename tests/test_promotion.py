"""The promotion gate against a real MLflow model registry (SQLite): the first candidate takes
the alias, a worse one is registered but not promoted (and the reason names the metric, its paired
change and interval), a better one takes the alias over. (Noise, suites: test_gate_noise.py.)"""

from __future__ import annotations

import os

import pytest

from components.common.config import PromotionConfig, load_config
from components.common.tracking import Tracker
from components.evaluate.promotion import (
    METRIC_TAG,
    decision_from_tags,
    promote,
)

GOOD = {"reason.pass_at_1": 0.30, "instruct.compliance": 0.80, "perplexity": 12.0}
DIGESTS = {"reasoning": "r" * 16, "instructions": "i" * 16}


def _items(share: float, n: int) -> list[float]:
    right = round(share * n)
    return [1.0] * right + [0.0] * (n - right)


def verdicts(metrics: dict[str, float]) -> dict[str, list[float]]:
    """Per-item verdicts behind the shares (300 problems, 200 instructions, solved first-to-last,
    so a higher share solves a superset: the paired change is all gain)."""
    return {"reason.pass_at_1": _items(metrics["reason.pass_at_1"], 300),
            "instruct.compliance": _items(metrics["instruct.compliance"], 200)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module (creating one takes seconds): (config, tracker).
    ``mlflow.set_tracking_uri`` (called by ``Tracker``) exports MLFLOW_TRACKING_URI, which
    ``resolve_tracking_uri`` prefers over the storage root; cleared so this module gets its own."""
    before = os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config("tiny", [f"storage.root={tmp_path_factory.mktemp('runs')}"])
    yield cfg, Tracker(cfg)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def registry(store):
    """The module's tracker and a factory for candidate final checkpoints: each call makes a
    pipeline run with an rlvr LoggedModel and an evaluate run. (Tests use distinct model names:
    the registry is shared.)"""
    _, tracker = store

    def candidate(run_id: str) -> tuple[str, str]:
        parent = tracker.pipeline_run(run_id)
        rlvr = tracker.stage_run(parent, run_id, "rlvr")
        model_id = tracker.log_checkpoint(rlvr, "rlvr", f"file:///runs/{run_id}/checkpoints/rlvr", None, None, [])
        return model_id, tracker.stage_run(parent, run_id, "evaluate")

    return tracker, candidate


def test_first_candidate_promotes_a_worse_one_does_not_a_better_one_does(registry):
    tracker, candidate = registry
    client, cfg = tracker.client, PromotionConfig()  # gate: pass@1 (+0.01), compliance (-0.02 tolerance)

    model_1, eval_1 = candidate("run-1")
    first = promote(cfg, client, eval_1, "run-1", "rlvr", model_1, GOOD, verdicts(GOOD), DIGESTS)
    assert first["promoted"] and first["version"] == "1" and "no 'champion' yet" in first["reason"]
    champion = client.get_model_version_by_alias("fromscratch", "champion")
    assert str(champion.version) == "1" and champion.source == f"models:/{model_1}"
    assert float(champion.tags[f"{METRIC_TAG}reason.pass_at_1"]) == 0.30  # stored for later runs

    # better on pass@1 but compliance fell by more than the 0.02 tolerance
    model_2, eval_2 = candidate("run-2")
    worse = {"reason.pass_at_1": 0.45, "instruct.compliance": 0.70, "perplexity": 11.0}
    second = promote(cfg, client, eval_2, "run-2", "rlvr", model_2, worse, verdicts(worse), DIGESTS)
    assert not second["promoted"] and second["version"] == "2" and second["champion_version"] == "1"
    assert "instruct.compliance: change -0.1 [" in second["reason"] and "above -0.02" in second["reason"]
    assert "reason.pass_at_1" not in second["reason"]  # that one passed
    assert [c["passed"] for c in second["checks"]] == [True, False]
    assert str(client.get_model_version_by_alias("fromscratch", "champion").version) == "1"
    tags = client.get_run(eval_2).data.tags
    assert tags["fromscratch.promotion.promoted"] == "false"
    assert "instruct.compliance" in tags["fromscratch.promotion.reason"]
    assert decision_from_tags(tags) == second  # what `fromscratch report` shows later
    assert client.get_model_version("fromscratch", "2").tags["fromscratch.promoted"] == "false"

    # as compliant and clearly better on pass@1
    model_3, eval_3 = candidate("run-3")
    better = {"reason.pass_at_1": 0.40, "instruct.compliance": 0.80}
    third = promote(cfg, client, eval_3, "run-3", "rlvr", model_3, better, verdicts(better), DIGESTS)
    assert third["promoted"] and third["version"] == "3", third["reason"]
    assert str(client.get_model_version_by_alias("fromscratch", "champion").version) == "3"
    assert client.get_run(eval_3).data.tags["fromscratch.promotion.promoted"] == "true"

    # re-running evaluate for the same run registers nothing new and keeps the champion
    again = promote(cfg, client, eval_3, "run-3", "rlvr", model_3, better, verdicts(better), DIGESTS)
    assert again["version"] == "3" and again["promoted"] and "already" in again["reason"]
    assert len(client.search_model_versions("name = 'fromscratch'")) == 3


def test_no_model_id_or_disabled_registers_nothing(registry):
    tracker, candidate = registry
    cfg = PromotionConfig(model_name="unregistered")
    _, eval_run = candidate("run-x")
    skipped = promote(cfg, tracker.client, eval_run, "run-x", "rlvr", "", GOOD)
    assert not skipped["promoted"] and "no MLflow model id" in skipped["reason"]
    model_id, _ = candidate("run-y")
    off = promote(cfg.model_copy(update={"enabled": False}), tracker.client, eval_run, "run-y", "rlvr", model_id, GOOD)
    assert not off["promoted"] and "disabled" in off["reason"]
    assert tracker.client.search_model_versions("name = 'unregistered'") == []
