"""The promotion gate: register the final checkpoint, move the ``champion`` alias only to a
model that is better than the champion by more than the noise, on every gate metric.

Every pipeline run's final checkpoint (its LoggedModel, ``models:/<model_id>``) becomes a new
version of ``cfg.promotion.model_name`` in the MLflow model registry, so a run that loses is
still findable. The alias ``cfg.promotion.alias`` is what serving and the next run compare
against. It moves only when, for every ``cfg.promotion.gate`` metric, the *paired* change from
the champion on the same held-out items has its 95 % bootstrap interval beyond the margin
(``max``: the interval's low end above ``+margin``; ``min``: its high end below ``-margin``; a
negative margin is a tolerance). Two point estimates 0.01 apart on 300 problems say nothing;
the paired interval says whether the gap is real. Pairing needs the same items: the gate
compares the digests of the suites both models were scored on, and a champion scored on other
suites (or whose per-item verdicts were never recorded) blocks promotion with that reason. The
first candidate, with no champion to beat, is promoted.

Each registered version carries its evaluation metrics as tags and points (tag
``fromscratch.gate.record_run``) at the evaluate run whose ``gate/record.json`` artifact holds
its per-item verdicts and suite digests, so a later run compares against the champion without
loading or re-evaluating it. The decision is returned and recorded as tags on the evaluate run
(one JSON tag for tools, readable tags for people).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from components.common.config import GateMetric, PromotionConfig
from components.common.registry import champion_version
from components.evaluate.intervals import bootstrap_interval

log = logging.getLogger(__name__)

METRIC_TAG = "fromscratch.eval."  # + metric key, on model versions
SUITE_TAG = "fromscratch.suite."  # + suite name: its digest, on model versions
RECORD_RUN_TAG = "fromscratch.gate.record_run"  # the evaluate run holding the version's gate record
RECORD_ARTIFACT = "gate/record.json"  # per-item verdicts and suite digests of the candidate
DECISION_TAG = "fromscratch.promotion"  # the decision as JSON, on the evaluate run
RUN_TAG = "fromscratch.run_id"

# Which held-out suite a metric is computed on (by key prefix); the rest is the held-out text.
SUITE_OF_PREFIX = (("reason.", "reasoning"), ("instruct.", "instructions"), ("pref.", "preference"),
                   ("copy.", "copying"), ("next_token.", "heldout_text"))


def suite_of(metric: str) -> str:
    """The suite a metric key is scored on: ``reason.pass_at_1`` → ``reasoning``."""
    for prefix, suite in SUITE_OF_PREFIX:
        if metric.startswith(prefix):
            return suite
    return "heldout_text"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _mean(values: Sequence[float]) -> float:
    return float(sum(values)) / len(values)


def check_gate(
    gate: list[GateMetric],
    candidate: dict[str, Sequence[float]],
    champion: dict[str, Sequence[float]],
) -> list[dict[str, Any]]:
    """One paired comparison per gate metric from per-item values (``verdicts``, same items in
    the same order on both sides): both means, the mean change (candidate - champion) with its
    95 % paired bootstrap interval, the bar it had to clear and whether it did. A metric the
    candidate has no per-item values for fails (it cannot show it is not worse); one only the
    champion lacks (added to the suite since) passes, with a note; lists of different lengths
    fail (not the same items)."""
    checks = []
    for metric in gate:
        cand, champ = candidate.get(metric.name), champion.get(metric.name)
        check: dict[str, Any] = {
            "metric": metric.name, "direction": metric.direction, "margin": metric.margin,
            "candidate": _mean(cand) if cand else None, "champion": _mean(champ) if champ else None,
            "change": None, "ci_low": None, "ci_high": None, "items": len(cand or []),
            "passed": False, "note": "",
        }
        if not cand:
            check["note"] = "the candidate has no per-item values"
        elif not champ:
            check.update(passed=True, note="the champion has no value (metric added since)")
        elif len(cand) != len(champ):
            check["note"] = f"not the same items ({len(cand)} vs the champion's {len(champ)})"
        else:
            diff = [float(a) - float(b) for a, b in zip(cand, champ)]
            low, high = bootstrap_interval(diff)
            check.update(change=_mean(diff), ci_low=low, ci_high=high)
            check["passed"] = low > metric.margin if metric.direction == "max" else high < -metric.margin
        checks.append(check)
    return checks


def change_text(check: dict[str, Any]) -> str:
    """``reason.pass_at_1 +0.12 [+0.08, +0.16]`` (the paired change and its 95 % interval)."""
    if check.get("change") is None:
        return f"{check['metric']} ({check.get('note') or 'no change measured'})"
    return f"{check['metric']} {check['change']:+.3g} [{check['ci_low']:+.3g}, {check['ci_high']:+.3g}]"


def _bar(check: dict[str, Any]) -> str:
    if check["direction"] == "max":
        return f"interval above {check['margin']:+g}"
    return f"interval below {-check['margin']:+g}"


def failure_reason(check: dict[str, Any]) -> str:
    """``reason.pass_at_1: change +0.004 [-0.02, +0.03], needs the interval above +0.01``."""
    if check.get("change") is None:
        return f"{check['metric']}: {check['note']}"
    return (f"{check['metric']}: change {check['change']:+.3g} [{check['ci_low']:+.3g}, {check['ci_high']:+.3g}], "
            f"needs the {_bar(check)}")


def suite_mismatch(gate: list[GateMetric], candidate: dict[str, str], champion: dict[str, str]) -> list[str]:
    """The suites the gate metrics are scored on whose digests differ between the two (or that
    either side lacks), each as ``reasoning (champion 1a2b3c4d, candidate 5e6f7a8b)``."""
    out = []
    for suite in dict.fromkeys(suite_of(m.name) for m in gate):
        a, b = champion.get(suite), candidate.get(suite)
        if a is None or b is None or a != b:
            out.append(f"{suite} (champion {str(a)[:8] if a else 'unrecorded'}, candidate {str(b)[:8] if b else 'unrecorded'})")
    return out


def _version_of(client: Any, name: str, model_id: str) -> Any | None:
    """The registry version already made from this LoggedModel (a re-run of evaluate)."""
    source = f"models:/{model_id}"
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.source == source:
            return version
    return None


def register(
    client: Any, name: str, model_id: str, run_id: str, stage: str, metrics: dict[str, Any],
    suite_digests: dict[str, str] | None = None, record_run: str | None = None,
) -> Any:
    """A registry version for the LoggedModel ``model_id``: its metrics and suite digests as
    tags, and the evaluate run that holds its gate record."""
    from mlflow.exceptions import MlflowException

    existing = _version_of(client, name, model_id)
    if existing is not None:
        return existing
    try:
        client.create_registered_model(name, description="fromscratch final checkpoints; the alias marks the champion")
    except MlflowException:  # created by a concurrent run
        pass
    source_run = client.get_logged_model(model_id).source_run_id
    tags = {f"{METRIC_TAG}{k}": repr(v) for k, v in metrics.items() if _number(v) is not None}
    tags.update({f"{SUITE_TAG}{k}": v for k, v in (suite_digests or {}).items()})
    tags.update({RUN_TAG: run_id, "fromscratch.stage": stage})
    if record_run:
        tags[RECORD_RUN_TAG] = record_run
    return client.create_model_version(
        name, source=f"models:/{model_id}", run_id=source_run, tags=tags, model_id=model_id
    )


def save_record(client: Any, evaluate_run_id: str, verdicts: dict[str, Sequence[float]], digests: dict[str, str]) -> None:
    """The candidate's per-item verdicts and suite digests, as the evaluate run's gate record."""
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        path = Path(tmp) / Path(RECORD_ARTIFACT).name
        path.write_text(json.dumps({"verdicts": {k: list(v) for k, v in verdicts.items()}, "suite_digests": digests}))
        client.log_artifact(evaluate_run_id, str(path), str(Path(RECORD_ARTIFACT).parent))


def load_record(client: Any, version: Any) -> dict[str, Any] | None:
    """A registered version's gate record (verdicts, suite digests), or None when it has none
    (registered before records were kept, or its evaluate run is gone)."""
    record_run = (version.tags or {}).get(RECORD_RUN_TAG)
    if not record_run:
        return None
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        try:
            path = client.download_artifacts(record_run, RECORD_ARTIFACT, tmp)
            return json.loads(Path(path).read_text())
        except Exception as err:  # noqa: BLE001 - MLflow raises several types for a missing file
            log.warning("gate record of version %s not readable: %s", version.version, err)
            return None


def promote(
    cfg: PromotionConfig,
    client: Any,
    evaluate_run_id: str,
    run_id: str,
    stage: str,
    model_id: str | None,
    metrics: dict[str, Any],
    verdicts: dict[str, Sequence[float]] | None = None,
    suite_digests: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Register the final checkpoint and decide on the alias; returns (and records on the
    evaluate run) ``{promoted, reason, model_name, version, alias, champion_version, checks}``.
    ``verdicts`` are the candidate's per-item values (``results[stage]["verdicts"]``) and
    ``suite_digests`` what they were scored on; both are kept for the runs that come after."""
    verdicts, suite_digests = verdicts or {}, suite_digests or {}
    decision: dict[str, Any] = {
        "promoted": False, "model_name": cfg.model_name, "alias": cfg.alias, "stage": stage,
        "model_id": model_id or "", "version": None, "champion_version": None, "checks": [],
    }
    if not cfg.enabled:
        decision["reason"] = "promotion disabled (promotion.enabled=false)"
    elif not model_id:
        decision["reason"] = f"no MLflow model id for the final checkpoint ({stage}); nothing registered"
    else:
        save_record(client, evaluate_run_id, verdicts, suite_digests)
        version = register(client, cfg.model_name, model_id, run_id, stage, metrics, suite_digests, evaluate_run_id)
        decision["version"] = str(version.version)
        champion = champion_version(client, cfg.model_name, cfg.alias)
        if champion is None:
            decision.update(promoted=True, reason=f"first candidate: no '{cfg.alias}' yet")
        elif str(champion.version) == str(version.version):
            decision.update(promoted=True, champion_version=str(champion.version), reason=f"already the '{cfg.alias}'")
        else:
            decision["champion_version"] = str(champion.version)
            decision.update(_against_champion(cfg, client, champion, verdicts, suite_digests))
        if decision["promoted"]:
            client.set_registered_model_alias(cfg.model_name, cfg.alias, version.version)
        client.set_model_version_tag(cfg.model_name, version.version, "fromscratch.promoted", str(decision["promoted"]).lower())
        client.set_model_version_tag(cfg.model_name, version.version, "fromscratch.gate_reason", decision["reason"][:5000])
    record_decision(client, evaluate_run_id, decision)
    log.info(
        "promotion: %s %s v%s — %s", cfg.model_name,
        f"→ '{cfg.alias}'" if decision["promoted"] else "not promoted", decision["version"], decision["reason"],
    )
    return decision


def _against_champion(
    cfg: PromotionConfig, client: Any, champion: Any, verdicts: dict[str, Sequence[float]], digests: dict[str, str]
) -> dict[str, Any]:
    """``{promoted, reason, checks}`` of a candidate against the current champion version."""
    record = load_record(client, champion)
    if record is None:
        return {"promoted": False, "reason": (
            f"the '{cfg.alias}' (version {champion.version}) has no recorded per-item verdicts and suite digests, "
            "so the two cannot be compared on the same items; re-evaluate it or move the alias by hand")}
    mismatch = suite_mismatch(cfg.gate, digests, record.get("suite_digests") or {})
    if mismatch:
        return {"promoted": False, "reason": (
            f"the '{cfg.alias}' (version {champion.version}) was scored on other suites: " + ", ".join(mismatch)
            + "; a paired comparison needs the same held-out items")}
    checks = check_gate(cfg.gate, verdicts, record.get("verdicts") or {})
    failed = [c for c in checks if not c["passed"]]
    if failed:
        reason = "; ".join(failure_reason(c) for c in failed)
    else:
        reason = (f"beats version {champion.version} beyond the noise on every gate metric: "
                  + "; ".join(change_text(c) for c in checks))
    return {"promoted": not failed, "reason": reason, "checks": checks}


def record_decision(client: Any, evaluate_run_id: str, decision: dict[str, Any]) -> None:
    """Readable tags for the UI plus the whole decision as JSON for ``decision_from_tags``."""
    client.set_tag(evaluate_run_id, f"{DECISION_TAG}.promoted", str(decision["promoted"]).lower())
    client.set_tag(evaluate_run_id, f"{DECISION_TAG}.reason", decision.get("reason", "")[:5000])
    if decision.get("version"):
        client.set_tag(evaluate_run_id, f"{DECISION_TAG}.version", f"{decision['model_name']}/{decision['version']}")
    client.set_tag(evaluate_run_id, DECISION_TAG, json.dumps(decision)[:5000])


def decision_from_tags(tags: dict[str, str]) -> dict[str, Any] | None:
    """The decision ``record_decision`` stored on an evaluate run, or None."""
    raw = tags.get(DECISION_TAG)
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None
