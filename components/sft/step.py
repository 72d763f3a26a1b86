"""sft: the pre-trained model learns to follow instructions.

Takes the pre-trained checkpoint and data_prep's instruction split, runs TRL's SFTTrainer in
Ray Train workers under DeepSpeed (``train_loop.py``), and publishes the result as a Hugging
Face folder logged to MLflow with the pre-trained checkpoint as its parent and the SFT dataset
as its input, so lineage runs sft → pretrain → init.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from components.common import ray_launch, storage
from components.common.hf_worker import read_summary
from components.common.config import Config
from components.common.stage import stage_context
from components.data_prep.step import dataset_refs, load_manifest
from components.pretrain.step import checkpoint_uri, latest_ray_checkpoint
from components.sft.train_loop import sft_train_loop

log = logging.getLogger(__name__)


def run_sft(cfg: Config, run_id: str, data: str, base: dict[str, str]) -> dict[str, Any]:
    """Entry point. ``base`` is the pre-trained checkpoint: ``{"uri": ..., "model_id": ...}``."""
    with stage_context(cfg, run_id, "sft") as ctx:
        manifest = load_manifest(data)
        out_uri = checkpoint_uri(ctx.run_uri, "sft")
        model_id = ctx.tracker.find_model(run_id, "sft") if storage.is_complete(out_uri) else None
        if model_id:
            log.info("sft already complete at %s; reusing it", out_uri)
            return {"uri": out_uri, "model_id": model_id}
        storage.require_complete(base["uri"], "pre-trained checkpoint")
        storage.remove(out_uri)
        ctx.tracker.log_params(ctx.mlflow_run_id, {f"sft.{k}": v for k, v in cfg.sft.model_dump().items()})
        train_ref = [r for r in dataset_refs(manifest, ("sft",)) if r.context == "training"]
        ctx.tracker.log_datasets(ctx.mlflow_run_id, train_ref)

        ray_uri = storage.join(ctx.run_uri, "ray")
        resume = latest_ray_checkpoint(storage.join(ray_uri, "sft"))
        if resume:
            log.info("resuming SFT from %s", resume)
        loop_config = {
            "cfg": cfg.to_json(),
            "base_uri": base["uri"],
            "train_uri": manifest["sft"]["train"]["uri"],
            "replay_uri": storage.join(data, "corpus", "train.jsonl"),
            "output_uri": out_uri,
            "tracking_uri": ctx.tracker.uri,
            "mlflow_run_id": ctx.mlflow_run_id,
        }
        started = time.perf_counter()
        result = ray_launch.fit(sft_train_loop, loop_config, cfg, "sft", ray_uri)
        if result.error:
            raise RuntimeError(f"SFT failed: {result.error}") from result.error
        metrics = read_summary(out_uri)
        summary = {
            "final_train_loss": float(metrics.get("train_loss", float("nan"))),
            "fit_seconds": time.perf_counter() - started,
            "resumed_from_step": int(metrics.get("resumed_from", 0)),
        }
        ctx.tracker.log_metrics(ctx.mlflow_run_id, summary, step=cfg.sft.steps)
        storage.mark_complete(out_uri, {"stage": "sft", "steps": cfg.sft.steps})
        with storage.local_copy(out_uri, "sft checkpoint") as local:
            model_id = ctx.tracker.log_checkpoint(
                ctx.mlflow_run_id, "sft", out_uri, local, base["model_id"], train_ref, {"steps": cfg.sft.steps}
            )
        log.info("sft done: loss %.3f in %.0fs (MLflow model %s)", summary["final_train_loss"], summary["fit_seconds"], model_id)
        return {"uri": out_uri, "model_id": model_id, **summary}
