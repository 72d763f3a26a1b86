"""rlvr: reasoning fine-tuning with verifiable rewards, the last stage of the lineage.

Takes the preference stage's policy and data_prep's problems (each with one known answer),
runs TRL's GRPOTrainer in Ray Train workers under DeepSpeed (``grpo.py``) with the verifiers
of ``verifiers.py`` as its reward functions, and publishes the result as a Hugging Face folder
logged to MLflow with the preference policy as its parent and the problem set as its input,
so lineage runs rlvr → ppo|dpo → sft → pretrain → init.
"""

from __future__ import annotations

from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.stage import stage_context
from components.common.training_stage import TrainingJob, run_training_job
from components.data_prep.manifest import dataset_refs, load_manifest
from components.rlvr.grpo import rlvr_train_loop
from components.rlvr.verifiers import get_verifiers


def run_rlvr(cfg: Config, run_id: str, data: str, base: dict[str, str]) -> dict[str, Any]:
    """Entry point. ``base`` is the preference policy: ``{"uri": ..., "model_id": ...}``."""
    get_verifiers(cfg.rlvr.rewards)  # an unknown verifier name fails here, before Ray starts
    with stage_context(cfg, run_id, "rlvr") as ctx:
        manifest = load_manifest(data)
        if "rlvr" not in manifest:
            raise RuntimeError(f"the data at {data} has no RLVR problems; re-run data_prep")
        storage.require_complete(base["uri"], "preference checkpoint")
        job = TrainingJob(
            name="rlvr",
            train_fn=rlvr_train_loop,
            loop_config={
                "cfg": cfg.to_json(),
                "base_uri": base["uri"],
                "train_uri": manifest["rlvr"]["train"]["uri"],
                "instructions_uri": manifest["rlvr"].get("instructions", {}).get("uri"),
            },
            parent_model_id=base.get("model_id") or None,
            datasets=[r for r in dataset_refs(manifest, ("rlvr",)) if r.context == "training"],
            params=cfg.rlvr.model_dump(),
        )
        return run_training_job(ctx, job)
