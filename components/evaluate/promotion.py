"""The promotion gate: register the final checkpoint, move the ``champion`` alias only to a
model that is better on every gate metric.

Every pipeline run's final checkpoint (its LoggedModel, ``models:/<model_id>``) becomes a new
version of ``cfg.promotion.model_name`` in the MLflow model registry, so a run that loses is
still findable. The alias ``cfg.promotion.alias`` is what serving and the next run compare
against; it moves only when the candidate passes every ``cfg.promotion.gate`` metric against
the current champion (``max``: candidate >= champion + margin; ``min``: candidate <= champion -
margin). The first candidate, with no champion to beat, is promoted.

The candidate's evaluation metrics are stored as tags of its model version, so a later run
compares against the champion without loading or re-evaluating it. The decision is returned
and recorded as tags on the evaluate run (one JSON tag for tools, readable tags for people).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from components.common.config import GateMetric, PromotionConfig
from components.common.registry import champion_version

log = logging.getLogger(__name__)

METRIC_TAG = "fromscratch.eval."  # + metric key, on model versions
DECISION_TAG = "fromscratch.promotion"  # the decision as JSON, on the evaluate run
RUN_TAG = "fromscratch.run_id"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def check_gate(gate: list[GateMetric], candidate: dict[str, Any], champion: dict[str, Any]) -> list[dict[str, Any]]:
    """One comparison per gate metric: the values, the bar the candidate had to clear, and
    whether it did. A metric the candidate lacks fails (it cannot show it is not worse); one
    only the champion lacks (added to the suite since) passes, with a note."""
    checks = []
    for metric in gate:
        cand, champ = _number(candidate.get(metric.name)), _number(champion.get(metric.name))
        bar = None if champ is None else champ + metric.margin if metric.direction == "max" else champ - metric.margin
        if cand is None:
            passed, note = False, "the candidate has no value"
        elif bar is None:
            passed, note = True, "the champion has no value"
        else:
            passed = cand >= bar if metric.direction == "max" else cand <= bar
            note = ""
        checks.append({
            "metric": metric.name, "direction": metric.direction, "margin": metric.margin,
            "candidate": cand, "champion": champ, "required": bar, "passed": passed, "note": note,
        })
    return checks


def failure_reason(check: dict[str, Any]) -> str:
    """``instruct.compliance: candidate 0.61 < required 0.68 (champion 0.7, margin -0.02)``."""
    if check["candidate"] is None:
        champion = "none" if check["champion"] is None else f"{check['champion']:.4g}"
        return f"{check['metric']}: {check['note']} (champion {champion})"
    sign = "<" if check["direction"] == "max" else ">"
    return (
        f"{check['metric']}: candidate {check['candidate']:.4g} {sign} required {check['required']:.4g} "
        f"(champion {check['champion']:.4g}, margin {check['margin']:+g})"
    )


def _version_of(client: Any, name: str, model_id: str) -> Any | None:
    """The registry version already made from this LoggedModel (a re-run of evaluate)."""
    source = f"models:/{model_id}"
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.source == source:
            return version
    return None


def register(client: Any, name: str, model_id: str, run_id: str, stage: str, metrics: dict[str, Any]) -> Any:
    """A registry version for the LoggedModel ``model_id``, its metrics stored as tags."""
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
    tags.update({RUN_TAG: run_id, "fromscratch.stage": stage})
    return client.create_model_version(
        name, source=f"models:/{model_id}", run_id=source_run, tags=tags, model_id=model_id
    )


def promote(
    cfg: PromotionConfig,
    client: Any,
    evaluate_run_id: str,
    run_id: str,
    stage: str,
    model_id: str | None,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Register the final checkpoint and decide on the alias; returns (and records on the
    evaluate run) ``{promoted, reason, model_name, version, alias, champion_version, checks}``."""
    decision: dict[str, Any] = {
        "promoted": False, "model_name": cfg.model_name, "alias": cfg.alias, "stage": stage,
        "model_id": model_id or "", "version": None, "champion_version": None, "checks": [],
    }
    if not cfg.enabled:
        decision["reason"] = "promotion disabled (promotion.enabled=false)"
    elif not model_id:
        decision["reason"] = f"no MLflow model id for the final checkpoint ({stage}); nothing registered"
    else:
        version = register(client, cfg.model_name, model_id, run_id, stage, metrics)
        decision["version"] = str(version.version)
        champion = champion_version(client, cfg.model_name, cfg.alias)
        if champion is None:
            decision.update(promoted=True, reason=f"first candidate: no '{cfg.alias}' yet")
        elif str(champion.version) == str(version.version):
            decision.update(promoted=True, champion_version=str(champion.version), reason=f"already the '{cfg.alias}'")
        else:
            decision["champion_version"] = str(champion.version)
            stored = {k.removeprefix(METRIC_TAG): v for k, v in champion.tags.items() if k.startswith(METRIC_TAG)}
            checks = check_gate(cfg.gate, metrics, stored)
            failed = [c for c in checks if not c["passed"]]
            decision["checks"] = checks
            decision["promoted"] = not failed
            decision["reason"] = (
                "; ".join(failure_reason(c) for c in failed) if failed
                else f"beats version {champion.version} on every gate metric"
            )
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
