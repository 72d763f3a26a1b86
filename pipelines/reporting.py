"""What the CLI tells a person about a finished run, read from MLflow alone.

``fromscratch report <run-id>`` rebuilds the report card from the evaluate run's logged
``results.json``, the stages' metric histories and the promotion decision tagged on the
evaluate run, so it works for any run the tracking server knows, on any machine, without the
run's storage. ``fromscratch run`` ends with ``summary_lines``: per-stage wall time, where
the card is, and what the promotion gate decided.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.tracking import Tracker
from components.evaluate.curves import stage_curves, stage_runs
from components.evaluate.promotion import decision_from_tags
from components.evaluate.report import headline_keys, markdown_table, metric_table
from components.evaluate.report_card import (
    HTML_FILE,
    MARKDOWN_FILE,
    ReportCard,
    build_report_card,
)

log = logging.getLogger(__name__)


class ReportError(RuntimeError):
    """The run has no finished evaluation to build a card from."""


def evaluate_run(tracker: Tracker, run_id: str) -> Any:
    run = stage_runs(tracker.client, tracker.experiment_id, run_id).get("evaluate")
    if run is None:
        raise ReportError(f"run {run_id} has no evaluate stage in MLflow ({tracker.uri})")
    return run


def logged_results(tracker: Tracker, mlflow_run_id: str) -> dict[str, Any]:
    """The ``results.json`` artifact the evaluate stage logged (stage order preserved)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(mlflow_run_id, "results.json", tmp)
        except Exception as err:  # MLflow raises several types for a missing file
            raise ReportError(f"evaluate run {mlflow_run_id} has no results.json artifact: {err}") from err
        return json.loads(Path(path).read_text())


def logged_data_notes(tracker: Tracker, mlflow_run_id: str) -> list[str]:
    """The card's Data section the evaluate stage logged (none for runs from before it did)."""
    from components.evaluate.benchmarks import DATA_NOTES_ARTIFACT

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(mlflow_run_id, DATA_NOTES_ARTIFACT, tmp)
        except Exception:  # noqa: BLE001 - MLflow raises several types for a missing file
            return []
        return list(json.loads(Path(path).read_text()))


def rebuild_report_card(tracker: Tracker, run_id: str) -> ReportCard:
    """The report card of ``run_id`` from MLflow: results, curves, promotion decision and the
    data notes."""
    run = evaluate_run(tracker, run_id)
    results = logged_results(tracker, run.info.run_id)
    notes = logged_data_notes(tracker, run.info.run_id)
    if notes:
        results = {**results, "data_notes": notes}
    curves = stage_curves(tracker.client, tracker.experiment_id, run_id)
    return build_report_card(results, curves, decision_from_tags(run.data.tags), run_id)


def default_report_dir(cfg: Config, run_id: str) -> str:
    """The run's own ``eval`` folder when its storage is reachable, else ``./report-<run-id>``."""
    run_dir = storage.join(storage.normalize(cfg.storage.root), run_id)
    try:
        reachable = storage.exists(run_dir)
    except Exception as err:  # noqa: BLE001 - unreachable remote storage: use the working dir
        log.warning("run storage %s not reachable (%s); writing the card here", run_dir, err)
        reachable = False
    return storage.join(run_dir, "eval") if reachable else str(Path.cwd() / f"report-{run_id}")


def stage_wall_times(tracker: Tracker, run_id: str) -> list[tuple[str, float | None, str]]:
    """(stage, seconds, status) in run order, from the stage runs' start and end times. A
    stage re-run reopens its run, so its time then spans both attempts."""
    out = []
    for stage, run in stage_runs(tracker.client, tracker.experiment_id, run_id).items():
        start, end = run.info.start_time, run.info.end_time
        out.append((stage, (end - start) / 1000 if start and end else None, run.info.status))
    return out


# Stages whose whole wall time is useful work (no Ray workers to start): counted as compute.
COMPUTE_STAGES = ("data_prep", "evaluate")


def time_split(tracker: Tracker, run_id: str, wall_seconds: float) -> dict[str, float]:
    """How a run's wall time divides into compute and orchestration.

    Compute is the training loops' own time inside the Ray workers (``*.train_seconds``, which
    every training job logs on its stage run) plus the whole of data_prep and evaluate;
    orchestration is the rest: KFP local task start-up, Ray worker start and teardown,
    DeepSpeed initialisation, MLflow logging and model publishing.
    """
    runs = stage_runs(tracker.client, tracker.experiment_id, run_id)
    training = sum(
        value for run in runs.values() for key, value in run.data.metrics.items() if key.endswith("train_seconds")
    )
    other = sum(
        (run.info.end_time - run.info.start_time) / 1000
        for stage, run in runs.items()
        if stage in COMPUTE_STAGES and run.info.start_time and run.info.end_time
    )
    orchestration = max(0.0, wall_seconds - training - other)
    return {
        "wall_seconds": wall_seconds,
        "training_seconds": training,
        "data_and_eval_seconds": other,
        "orchestration_seconds": orchestration,
        "orchestration_share": orchestration / wall_seconds if wall_seconds else 0.0,
    }


def time_split_line(split: dict[str, float]) -> str:
    return (
        f"time split:  {split['wall_seconds']:.0f}s wall = {split['training_seconds']:.0f}s training in the workers"
        f" + {split['data_and_eval_seconds']:.0f}s data_prep/evaluate + {split['orchestration_seconds']:.0f}s"
        f" orchestration (KFP, Ray start/stop, DeepSpeed init, MLflow): {100 * split['orchestration_share']:.0f}%"
    )


def summary_lines(tracker: Tracker, run_id: str, run_dir: str) -> list[str]:
    """The end-of-run summary: metrics table, stage times, card paths, promotion decision."""
    from components.common.progress import format_duration

    lines: list[str] = []
    try:
        run = evaluate_run(tracker, run_id)
        results = logged_results(tracker, run.info.run_id)  # (the storage copy has sorted keys)
        lines += ["", markdown_table(metric_table(results, headline_keys(results))), ""]
        decision = decision_from_tags(run.data.tags)
    except ReportError:
        decision = None
    lines.append("stage times:")
    for stage, seconds, status in stage_wall_times(tracker, run_id):
        flag = "" if status == "FINISHED" else f"  ({status})"
        lines.append(f"  {stage:<12} {format_duration(seconds):>8}{flag}")
    eval_dir = storage.join(run_dir, "eval")
    lines.append(f"report card: {storage.join(eval_dir, HTML_FILE)}")
    lines.append(f"             {storage.join(eval_dir, MARKDOWN_FILE)}")
    if decision:
        lines.append(decision_line(decision))
    return lines


# The console's evaluation table: one row per headline figure, a column per checkpoint.
CONSOLE_ROWS: tuple[tuple[str, str], ...] = (
    ("perplexity", "perplexity (held-out text)"),
    ("next_token.entropy", "next-token entropy (nats)"),
    ("next_token.kl_to_previous", "KL to the stage before"),
    ("copy.score", "in-context copying"),
    ("instruct.compliance", "instruction compliance"),
    ("instruct.accuracy", "instruction accuracy"),
    ("pref.win_rate_oracle_vs_sft", "win rate vs SFT (oracle)"),
    ("reason.pass_at_1", "reasoning pass@1"),
    ("reason.pass_at_k", "reasoning pass@k"),
)


def console_table(results: dict[str, Any]) -> list[str]:
    """The headline figures of every checkpoint as aligned plain text (intervals and the rest
    are on the report card)."""
    from components.evaluate.report import fmt, stages

    names = stages(results)
    rows = []
    for key, label in CONSOLE_ROWS:
        values = [results[n].get("metrics", {}).get(key) for n in names]
        if all(v is None for v in values):
            continue
        if key == "reason.pass_at_k":
            m = next((results[n]["metrics"] for n in names if "reason.pass_k" in results[n].get("metrics", {})), {})
            if m.get("reason.pass_k"):
                label = f"reasoning pass@{int(m['reason.pass_k'])} (n={int(m['reason.pass_n'])})"
        rows.append([label, *(fmt(float(v)) if isinstance(v, (int, float)) else fmt(v) for v in values)])
    header = ["", *names]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + cells[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))

    return [line(header), *(line(r) for r in rows)]


def decision_line(decision: dict[str, Any]) -> str:
    version = f" v{decision['version']}" if decision.get("version") else ""
    if decision["promoted"] and decision.get("champion_version") == decision.get("version"):
        verdict = f"is already '{decision['alias']}'"
    else:
        verdict = f"promoted to '{decision['alias']}'" if decision["promoted"] else "not promoted"
    return f"promotion:   {decision['model_name']}{version} {verdict} — {decision.get('reason', '')}"


def run_summary(
    tracker: Tracker, run_id: str, run_dir: str, elapsed: float, log_file: Any, full: bool = False
) -> list[str]:
    """What ``fromscratch run`` prints at the end: the evaluation table, the promotion decision
    and where everything went (``full``: the whole Markdown table and stage times as well)."""
    if full:
        lines = summary_lines(tracker, run_id, run_dir)
    else:
        lines = []
        try:
            run = evaluate_run(tracker, run_id)
            results = logged_results(tracker, run.info.run_id)
            lines += ["", "evaluation (same held-out suites on every checkpoint; intervals on the report card):"]
            lines += console_table(results)
            decision = decision_from_tags(run.data.tags)
            if decision:
                lines.append(decision_line(decision))
        except ReportError as err:
            lines.append(f"evaluation:  {err}")
        eval_dir = storage.join(run_dir, "eval")
        lines.append(f"report card: {storage.join(eval_dir, HTML_FILE)}")
    lines.append(time_split_line(time_split(tracker, run_id, elapsed)))
    lines.append(f"results:     {storage.join(run_dir, 'eval', 'results.json')}")
    lines.append(f"log:         {log_file}")
    lines.append(f"lineage:     fromscratch lineage {run_id}")
    lines.append(f"run {run_id} finished in {elapsed:.0f}s")
    return lines
