"""The promotion gate respects noise: a challenger takes the alias only when its paired change
against the champion, on the same held-out items, has its 95 % interval above the margin; and
only when both were scored on the same suites (a real SQLite MLflow registry)."""

from __future__ import annotations

import os

import pytest

from components.common.config import GateMetric, PromotionConfig, load_config
from components.common.tracking import Tracker
from components.evaluate.promotion import check_gate, promote

DIGESTS = {"reasoning": "a1" * 8, "instructions": "b2" * 8, "heldout_text": "c3" * 8}
GATE = [GateMetric(name="reason.pass_at_1", direction="max", margin=0.01),
        GateMetric(name="instruct.compliance", direction="max", margin=-0.02)]


def _verdicts(right: list[int], n: int) -> list[float]:
    hit = set(right)
    return [1.0 if i in hit else 0.0 for i in range(n)]


# 300 problems; the champion solves 90 (0.30). Compliance 190 of 200 for everyone.
CHAMPION = {"reason.pass_at_1": _verdicts(list(range(90)), 300), "instruct.compliance": _verdicts(list(range(190)), 200)}
# +5 problems net (0.3167 vs 0.30: above the old point-estimate margin of 0.01), but it also
# loses 10 the champion solved: a paired interval of about [-0.01, +0.045], well inside the noise
NOISY = {"reason.pass_at_1": _verdicts(list(range(10, 105)), 300), "instruct.compliance": CHAMPION["instruct.compliance"]}
# +60 problems and loses none: clearly better
CLEAR = {"reason.pass_at_1": _verdicts(list(range(150)), 300), "instruct.compliance": CHAMPION["instruct.compliance"]}


def _means(verdicts: dict[str, list[float]]) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in verdicts.items()}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    before = os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("gate")
    cfg = load_config("tiny", [f"storage.root={root}", f"tracking.uri=sqlite:///{root}/mlflow.db"])
    yield Tracker(cfg)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _candidate(tracker: Tracker, run_id: str) -> tuple[str, str]:
    parent = tracker.pipeline_run(run_id)
    rlvr = tracker.stage_run(parent, run_id, "rlvr")
    model_id = tracker.log_checkpoint(rlvr, "rlvr", f"file:///runs/{run_id}/checkpoints/rlvr", None, None, [])
    return model_id, tracker.stage_run(parent, run_id, "evaluate")


def _promote(tracker, name, run_id, verdicts, digests=DIGESTS):
    model_id, eval_run = _candidate(tracker, f"{name}-{run_id}")
    cfg = PromotionConfig(model_name=name, gate=GATE)
    return promote(cfg, tracker.client, eval_run, f"{name}-{run_id}", "rlvr", model_id, _means(verdicts),
                   verdicts=verdicts, suite_digests=digests)


def _champion(tracker, name) -> str:
    return str(tracker.client.get_model_version_by_alias(name, "champion").version)


def test_a_challenger_better_by_less_than_the_noise_is_not_promoted(tracker):
    first = _promote(tracker, "noise", "a", CHAMPION)
    assert first["promoted"] and "no 'champion' yet" in first["reason"]  # the first run still promotes
    second = _promote(tracker, "noise", "b", NOISY)
    assert _means(NOISY)["reason.pass_at_1"] - 0.30 > 0.01  # the old point-estimate gate let it through
    assert not second["promoted"], second["reason"]
    assert _champion(tracker, "noise") == "1"
    check = next(c for c in second["checks"] if c["metric"] == "reason.pass_at_1")
    assert check["change"] == pytest.approx(5 / 300)
    assert check["ci_low"] < 0.01 < check["ci_high"] and not check["passed"]
    # the decision names the metric, its change and its interval
    assert "reason.pass_at_1: change +0.0167 [" in second["reason"] and "above +0.01" in second["reason"]


def test_a_clearly_better_challenger_is_promoted_with_its_changes_named(tracker):
    _promote(tracker, "clear", "a", CHAMPION)
    second = _promote(tracker, "clear", "b", CLEAR)
    assert second["promoted"], second["reason"]
    assert _champion(tracker, "clear") == "2"
    check = next(c for c in second["checks"] if c["metric"] == "reason.pass_at_1")
    assert check["change"] == pytest.approx(0.2) and check["ci_low"] > 0.1
    assert "reason.pass_at_1 +0.2 [" in second["reason"] and "instruct.compliance +0 [+0, +0]" in second["reason"]


def test_a_champion_scored_on_other_suites_blocks_promotion(tracker):
    _promote(tracker, "suites", "a", CHAMPION)
    other = {**DIGESTS, "reasoning": "ff" * 8}
    second = _promote(tracker, "suites", "b", CLEAR, digests=other)
    assert not second["promoted"]
    assert "scored on other suites" in second["reason"] and "reasoning (champion a1a1a1a1, candidate ffffffff)" in second["reason"]
    assert "instructions" not in second["reason"]  # that suite matched
    assert second["checks"] == [] and _champion(tracker, "suites") == "1"


def test_a_champion_without_a_gate_record_blocks_promotion(tracker):
    """A version registered before per-item verdicts were kept cannot be compared item by item."""
    model_id, eval_run = _candidate(tracker, "legacy-a")
    client = tracker.client
    client.create_registered_model("legacy")
    version = client.create_model_version("legacy", source=f"models:/{model_id}", model_id=model_id,
                                          tags={"fromscratch.eval.reason.pass_at_1": "0.3"})
    client.set_registered_model_alias("legacy", "champion", version.version)
    second = _promote(tracker, "legacy", "b", CLEAR)
    assert not second["promoted"] and "no recorded per-item verdicts" in second["reason"]


def test_paired_checks_directions_margins_and_missing_values():
    same = [1.0, 0.0] * 50
    better = [1.0, 1.0] * 50
    # equal verdicts: the change is exactly 0, which a margin of 0 does not clear (interval not above it)
    assert not check_gate([GateMetric(name="m")], {"m": same}, {"m": same})[0]["passed"]
    # a tolerance: 0 change passes a margin of -0.02
    assert check_gate([GateMetric(name="m", margin=-0.02)], {"m": same}, {"m": same})[0]["passed"]
    # 'min': lower is better; a clear drop passes, a clear rise fails
    lower = check_gate([GateMetric(name="m", direction="min", margin=0.1)], {"m": same}, {"m": better})[0]
    assert lower["passed"] and lower["change"] == pytest.approx(-0.5)
    assert not check_gate([GateMetric(name="m", direction="min")], {"m": better}, {"m": same})[0]["passed"]
    # the candidate must show per-item values; lists of different lengths are not the same items
    assert not check_gate([GateMetric(name="m")], {}, {"m": same})[0]["passed"]
    assert "not the same items" in check_gate([GateMetric(name="m")], {"m": better[:10]}, {"m": same})[0]["note"]
    new = check_gate([GateMetric(name="m")], {"m": better}, {})[0]
    assert new["passed"] and "champion has no value" in new["note"]


def test_gate_on_held_out_loss_block_by_block():
    """``heldout_loss`` (direction min) compares the two models' mean loss per held-out block:
    a retraining that lowers every block's loss passes; one that only matches it does not."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from components.common.config import GateMetric
    from components.evaluate.perplexity import heldout_perplexity
    from components.evaluate.promotion import check_gate

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    blocks = np.random.default_rng(0).integers(0, 50, size=(12, 9))
    metrics, per_block = heldout_perplexity(model, blocks, batch_size=5)
    assert len(per_block) == 12 and np.mean(per_block) == pytest.approx(metrics["heldout_loss"], rel=1e-5)

    gate = [GateMetric(name="heldout_loss", direction="min", margin=0.0)]
    rng = np.random.default_rng(1)
    better = [x - 0.05 - 0.01 * rng.random() for x in per_block]
    (passed,) = check_gate(gate, {"heldout_loss": better}, {"heldout_loss": per_block})
    assert passed["passed"] and passed["ci_high"] < 0
    (same,) = check_gate(gate, {"heldout_loss": list(per_block)}, {"heldout_loss": per_block})
    assert not same["passed"]
