"""preference: a reward model learns the labeler's taste, then the policy follows it.

1. Reward model: a scalar head on the SFT checkpoint, TRL RewardTrainer on chosen/rejected
   pairs (``reward.py``), logged as its own MLflow model with the SFT checkpoint and the
   preference dataset as its sources.
2. Policy: PPO against that reward model with a KL penalty to the SFT model (``ppo_loop.py``,
   the default, i.e. RLHF), or DPO on the same pairs (``dpo.py``; ``preference.algorithm: dpo``).
Both run in Ray Train workers under DeepSpeed and resume from their own checkpoints.
"""

from __future__ import annotations

from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.stage import stage_context
from components.common.training_stage import TrainingJob, run_training_job
from components.data_prep.manifest import dataset_refs, load_manifest
from components.preference.dpo import dpo_train_loop
from components.preference.ppo_loop import ppo_train_loop
from components.preference.reward import reward_train_loop


def run_preference(cfg: Config, run_id: str, data: str, base: dict[str, str]) -> dict[str, Any]:
    """Entry point. ``base`` is the SFT checkpoint ``{"uri", "model_id"}``; returns the reward
    model and the tuned policy (``{"uri", "model_id", ...}`` each)."""
    with stage_context(cfg, run_id, "preference") as ctx:
        manifest = load_manifest(data)
        storage.require_complete(base["uri"], "SFT checkpoint")
        pairs = [r for r in dataset_refs(manifest, ("preference",)) if r.context == "training"]
        train_uri = manifest["preference"]["train"]["uri"]
        parent = base.get("model_id") or None
        reward = run_training_job(
            ctx,
            TrainingJob(
                name="reward", train_fn=reward_train_loop,
                loop_config={"cfg": cfg.to_json(), "base_uri": base["uri"], "train_uri": train_uri},
                parent_model_id=parent, datasets=pairs,
                params=cfg.preference.reward.model_dump(), model_type="reward-model",
            ),
        )
        algorithm = cfg.preference.algorithm
        if algorithm == "ppo":
            job = TrainingJob(
                name="ppo", train_fn=ppo_train_loop,
                loop_config={
                    "cfg": cfg.to_json(), "base_uri": base["uri"], "reward_uri": reward["uri"],
                    "train_uri": train_uri,
                },
                parent_model_id=parent, datasets=pairs,
                params={**cfg.preference.ppo.model_dump(), "reward_model_id": reward["model_id"]},
            )
        else:
            job = TrainingJob(
                name="dpo", train_fn=dpo_train_loop,
                loop_config={"cfg": cfg.to_json(), "base_uri": base["uri"], "train_uri": train_uri},
                parent_model_id=parent, datasets=pairs, params=cfg.preference.dpo.model_dump(),
            )
        policy = run_training_job(ctx, job)
        return {"algorithm": algorithm, "reward": reward, "policy": policy}
