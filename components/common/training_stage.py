"""The driver side of a training stage, shared by every stage that trains in Ray workers.

Skip if this run already finished the stage; otherwise clear any unfinished output, log the
stage's parameters and datasets, run the worker function under Ray Train (which resumes from
the run's own checkpoints), check that rank 0 published the model, mark it complete, and log
it as a LoggedModel whose parent is the checkpoint the stage started from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from components.common import ray_launch, storage
from components.common.hf_worker import read_summary
from components.common.stage import StageContext
from components.common.tracking import DatasetRef

log = logging.getLogger(__name__)


@dataclass
class TrainingJob:
    """One model a stage trains (a stage may train several, e.g. reward model then policy)."""

    name: str  # checkpoint and Ray run name: "sft", "reward", "ppo", ...
    train_fn: Callable[[dict[str, Any]], None]
    loop_config: dict[str, Any]
    parent_model_id: str | None
    datasets: list[DatasetRef]
    params: dict[str, Any] = field(default_factory=dict)
    model_type: str = "causal-lm"


def checkpoint_uri(run_uri: str, name: str) -> str:
    return storage.join(run_uri, "checkpoints", name)


def run_training_job(ctx: StageContext, job: TrainingJob) -> dict[str, Any]:
    """Train (or reuse) one model; returns ``{"uri", "model_id", ...summary}``."""
    out_uri = checkpoint_uri(ctx.run_uri, job.name)
    model_id = ctx.tracker.find_model(ctx.run_id, job.name) if storage.is_complete(out_uri) else None
    if model_id:
        log.info("%s already complete at %s; reusing it", job.name, out_uri)
        return {"uri": out_uri, "model_id": model_id, **read_summary(out_uri)}
    storage.remove(out_uri)
    ctx.tracker.log_params(ctx.mlflow_run_id, {f"{job.name}.{k}": v for k, v in job.params.items()})
    ctx.tracker.log_datasets(ctx.mlflow_run_id, job.datasets)
    ray_uri = storage.join(ctx.run_uri, "ray")
    resume = ray_launch.latest_ray_checkpoint(storage.join(ray_uri, job.name))
    if resume:
        log.info("resuming %s from %s", job.name, resume)
    loop_config = {
        **job.loop_config,
        "output_uri": out_uri,
        "tracking_uri": ctx.tracker.uri,
        "mlflow_run_id": ctx.mlflow_run_id,
        "metric_prefix": f"{job.name}/" if job.name != ctx.stage else "",
    }
    started = time.perf_counter()
    result = ray_launch.fit(job.train_fn, loop_config, ctx.cfg, job.name, ray_uri)
    if result.error:
        raise RuntimeError(f"{job.name} training failed: {result.error}") from result.error
    summary = read_summary(out_uri)
    summary["fit_seconds"] = time.perf_counter() - started
    numeric = {f"{job.name}.{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
    ctx.tracker.log_metrics(ctx.mlflow_run_id, numeric)
    storage.mark_complete(out_uri, {"stage": job.name})
    with storage.local_copy(out_uri, f"{job.name} checkpoint") as local:
        model_id = ctx.tracker.log_checkpoint(
            ctx.mlflow_run_id, job.name, out_uri, local, job.parent_model_id, job.datasets,
            {k: v for k, v in job.params.items()}, model_type=job.model_type,
        )
    log.info("%s done in %.0fs: %s (MLflow model %s)", job.name, summary["fit_seconds"], summary, model_id)
    return {"uri": out_uri, "model_id": model_id, **summary}
