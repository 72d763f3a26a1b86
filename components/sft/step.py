"""sft: the pre-trained model learns to follow instructions.

Takes the pre-trained checkpoint and data_prep's instruction split, runs TRL's SFTTrainer in
Ray Train workers under DeepSpeed (``train_loop.py``), and publishes the result as a Hugging
Face folder logged to MLflow with the pre-trained checkpoint as its parent and the SFT dataset
as its input, so lineage runs sft → pretrain → init.
"""

from __future__ import annotations

from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.stage import stage_context
from components.common.training_stage import TrainingJob, run_training_job
from components.data_prep.manifest import dataset_refs, load_manifest
from components.sft.train_loop import sft_train_loop


def run_sft(cfg: Config, run_id: str, data: str, base: dict[str, str]) -> dict[str, Any]:
    """Entry point. ``base`` is the pre-trained checkpoint: ``{"uri": ..., "model_id": ...}``."""
    with stage_context(cfg, run_id, "sft") as ctx:
        manifest = load_manifest(data)
        storage.require_complete(base["uri"], "pre-trained checkpoint")
        job = TrainingJob(
            name="sft",
            train_fn=sft_train_loop,
            loop_config={
                "cfg": cfg.to_json(),
                "base_uri": base["uri"],
                "train_uri": manifest["sft"]["train"]["uri"],
                "replay_split": manifest["pretrain"]["train"],
            },
            parent_model_id=base.get("model_id") or None,
            datasets=[r for r in dataset_refs(manifest, ("sft",)) if r.context == "training"],
            params=cfg.sft.model_dump(),
        )
        out = run_training_job(ctx, job)
        out["final_train_loss"] = out.get("train_loss")
        out["resumed_from_step"] = out.get("resumed_from", 0)
        return out
