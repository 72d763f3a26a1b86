"""Training curves of a pipeline run, read back from MLflow.

Each stage's workers log their training metrics into the stage's MLflow child run (rank 0,
through ``MetricsSink``), so MLflow alone is enough to redraw them: the report card at the end
of ``evaluate`` and ``fromscratch report <run-id>`` later both read them here. Only real
histories (two or more steps) count as curves; one-off summary values are not curves.
"""

from __future__ import annotations

import re
from typing import Any

from components.common.tracking import TAG_RUN_ID, TAG_STAGE

Curve = list[tuple[int, float]]
Curves = dict[str, dict[str, Curve]]  # stage -> metric key -> [(step, value)] sorted by step

GROUPS = ("loss", "reward", "KL", "reply length", "other")
SKIPPED = {"epoch", "step", "total_flos", "train_runtime"}


def stage_runs(client: Any, experiment_id: str, run_id: str) -> dict[str, Any]:
    """The MLflow child runs of pipeline run ``run_id`` by stage, oldest first (= stage order).
    A stage re-run reopens its own run, so there is one run per stage."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}'",
        order_by=["attributes.start_time ASC"], max_results=1000,
    )
    out: dict[str, Any] = {}
    for run in runs:
        stage = run.data.tags.get(TAG_STAGE)
        if stage and stage != "pipeline":
            out.setdefault(stage, run)
    return out


def run_curves(client: Any, mlflow_run_id: str, keys: list[str]) -> dict[str, Curve]:
    """Histories of ``keys`` with at least two distinct steps; a step logged twice (a resumed
    attempt) keeps its latest value."""
    curves: dict[str, Curve] = {}
    for key in sorted(keys):
        if key.rsplit("/", 1)[-1] in SKIPPED:
            continue
        by_step: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(mlflow_run_id, key):
            if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
                by_step[m.step] = (m.timestamp, float(m.value))
        if len(by_step) >= 2:
            curves[key] = [(step, value) for step, (_, value) in sorted(by_step.items())]
    return curves


def stage_curves(client: Any, experiment_id: str, run_id: str) -> Curves:
    """Every training curve of a pipeline run, by stage (stages without curves left out)."""
    out: Curves = {}
    for stage, run in stage_runs(client, experiment_id, run_id).items():
        curves = run_curves(client, run.info.run_id, list(run.data.metrics))
        if curves:
            out[stage] = curves
    return out


def metric_group(key: str) -> str:
    """Which plot a metric belongs on, from its name: ``reward/loss`` → loss, ``ppo/kl`` → KL,
    ``completions/mean_length`` → reply length, ``ppo/score_mean`` or ``rewards/fn/mean`` →
    reward. The job prefix (``reward/``, ``ppo/``) is not what the metric measures, so only
    the last segment decides, except for GRPO's ``rewards/<function>/mean``."""
    lowered = key.lower()
    leaf = lowered.rsplit("/", 1)[-1]
    words = set(re.split(r"[_.\-]", leaf))
    if "length" in lowered:
        return "reply length"
    if "kl" in words:
        return "KL"
    if "loss" in words:
        return "loss"
    if "std" in words:
        return "other"
    if words & {"reward", "rewards", "score"} or (lowered.startswith("rewards/") and leaf == "mean"):
        return "reward"
    return "other"


def grouped(curves: Curves) -> dict[str, dict[str, dict[str, Curve]]]:
    """group -> stage -> metric -> curve, groups in ``GROUPS`` order, stages in run order."""
    out: dict[str, dict[str, dict[str, Curve]]] = {g: {} for g in GROUPS}
    for stage, metrics in curves.items():
        for key, curve in metrics.items():
            out[metric_group(key)].setdefault(stage, {})[key] = curve
    return {g: v for g, v in out.items() if v}
