"""pretrain: stage 0 (random init) and stage 1 (next-token prediction).

1. Build the random-init model from the preset and the data_prep tokenizer, save it as a
   checkpoint of its own and log it to MLflow: it is the root of every lineage and gets
   evaluated like any other checkpoint. (Retraining from the champion skips this: see
   ``start.py``.)
2. Pre-train it in Ray Train workers under DeepSpeed (``train_loop.py``), checkpointing to
   ``<run>/ray/pretrain`` so a dead worker or a re-run resumes from the last checkpoint.
3. Publish the final Hugging Face folder, mark it complete, log it as a LoggedModel whose
   parent is the init model and whose dataset is the packed training split.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.modeling import count_parameters, load_tokenizer, random_init_model
from components.common.stage import StageContext, stage_context
from components.common.training_stage import TrainingJob, checkpoint_uri, run_training_job
from components.common.tracking import DatasetRef
from components.common.start import StartPoint
from components.data_prep.manifest import dataset_refs, load_manifest
from components.pretrain.train_loop import train_loop_per_worker

log = logging.getLogger(__name__)


def _model_params(cfg: Config) -> dict[str, Any]:
    return {f"model.{k}": v for k, v in cfg.model.model_dump().items()}


def create_init_checkpoint(ctx: StageContext, manifest: dict[str, Any]) -> dict[str, Any]:
    """Stage 0: save and log the random-init model (reused if this run already made it).

    A run that starts from the champion (or another checkpoint; data_prep resolved it into the
    manifest) has no stage 0: that checkpoint is the start, and its MLflow model becomes the
    pre-training run's parent, so the lineage walks on into the run that produced it."""
    start = StartPoint.from_json(manifest.get("start"))
    if not start.is_random:
        log.info("no random init: pre-training starts from %s", start.reason)
        return {"uri": start.uri, "model_id": start.model_id, "stage": "start", "start": start.reason}
    cfg, tracker = ctx.cfg, ctx.tracker
    uri = checkpoint_uri(ctx.run_uri, "init")
    init_run = tracker.stage_run(ctx.parent_run_id, ctx.run_id, "init")
    model_id = tracker.find_model(ctx.run_id, "init") if storage.is_complete(uri) else None
    if model_id:
        tracker.end_run(init_run, ok=True)
        return {"uri": uri, "model_id": model_id}
    with tempfile.TemporaryDirectory() as tmp:
        storage.download_dir(manifest["tokenizer_uri"], tmp)
        tokenizer = load_tokenizer(tmp)
        model = random_init_model(cfg.model, tokenizer, cfg.seed)
        model.save_pretrained(tmp, safe_serialization=True)
        num_params = count_parameters(model)
        storage.remove(uri)
        storage.upload_dir(tmp, uri)
        storage.mark_complete(uri, {"stage": "init"})
        params = {**_model_params(cfg), "num_parameters": num_params, "seed": cfg.seed}
        tracker.log_params(init_run, params)
        tokenizer_ref = [
            DatasetRef("tokenizer", manifest["tokenizer_uri"], manifest["pretrain"]["train"]["digest"], "tokenizer")
        ]
        tracker.log_datasets(init_run, tokenizer_ref)
        model_id = tracker.log_checkpoint(init_run, "init", uri, tmp, None, tokenizer_ref, params)
    tracker.end_run(init_run, ok=True)
    log.info("random init: %d parameters at %s (MLflow model %s)", num_params, uri, model_id)
    return {"uri": uri, "model_id": model_id, "num_parameters": num_params}


def run_pretrain(cfg: Config, run_id: str, data: str) -> dict[str, Any]:
    """Entry point: returns the init and pretrain checkpoints (URIs and MLflow model ids)."""
    with stage_context(cfg, run_id, "pretrain") as ctx:
        manifest = load_manifest(data)
        init = create_init_checkpoint(ctx, manifest)
        job = TrainingJob(
            name="pretrain",
            train_fn=train_loop_per_worker,
            loop_config={
                "cfg": cfg.to_json(),
                "train_split": manifest["pretrain"]["train"],
                # tests only: a folder where each rank logs the block ids it reads
                "consumed_log": os.environ.get("FROMSCRATCH_CONSUMED_LOG"),
                "init_uri": init["uri"],
            },
            parent_model_id=init["model_id"],
            datasets=[r for r in dataset_refs(manifest, ("pretrain",)) if r.context == "training"],
            params={
                **cfg.pretrain.model_dump(),
                **_model_params(cfg),
                "deepspeed.zero_stage": cfg.deepspeed.zero_stage,
                "ray.num_workers": cfg.ray.num_workers,
            },
        )
        out = run_training_job(ctx, job)
        out["final_train_loss"] = out.get("train_loss", float("nan"))
        out["resumed_from_step"] = out.get("resumed_from", 0)
        return {"init": init, "pretrain": out}
