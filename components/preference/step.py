"""preference: a reward model learns the labeler's taste, then the policy follows it.

1. Reward model: a scalar head on the SFT checkpoint, TRL RewardTrainer on chosen/rejected
   pairs (``reward.py``), logged as its own MLflow model with the SFT checkpoint and the
   preference dataset as its sources.
2. Policy: PPO against that reward model with a KL penalty to the SFT model (``ppo_loop.py``,
   the default, i.e. RLHF), or DPO on the same pairs (``dpo.py``; ``preference.algorithm: dpo``).
Both run in Ray Train workers under DeepSpeed and resume from their own checkpoints.
"""

from __future__ import annotations

import logging
from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.stage import stage_context
from components.common.tracking import TAG_REWARD_MODEL
from components.common.training_stage import TrainingJob, run_training_job
from components.data_prep.manifest import dataset_refs, load_manifest
from components.preference.dpo import dpo_train_loop
from components.preference.ppo_loop import ppo_train_loop
from components.preference.reward import reward_train_loop

log = logging.getLogger(__name__)


def previous_reward_model(cfg: Config, tracker: Any, manifest: dict[str, Any]) -> dict[str, str] | None:
    """The champion run's reward model ``{"uri", "model_id", "run_id"}`` when this run started
    from the champion and that model's shape fits the preset; else None (with the reason logged)."""
    from components.common.config import ConfigError
    from components.common.start import StartPoint, check_shape
    from components.common.tracking import TAG_CHECKPOINT, TAG_RUN_ID

    start = StartPoint.from_json(manifest.get("start"))
    if start.kind != "champion" or not start.model_id or not cfg.preference.reward.continue_from_champion:
        return None
    try:
        champion = tracker.client.get_logged_model(start.model_id)
        run_id = tracker.client.get_run(champion.source_run_id).data.tags.get(TAG_RUN_ID)
        model_id = tracker.find_model(run_id, "reward") if run_id else None
    except Exception as err:  # noqa: BLE001 - an unreachable record means "start fresh", said below
        log.warning("reward model: the champion's run could not be read (%s): a fresh head on SFT", err)
        return None
    if not model_id:
        log.info("reward model: the champion's run %s has none (DPO?): a fresh head on SFT", run_id)
        return None
    uri = storage.normalize(tracker.client.get_logged_model(model_id).tags.get(TAG_CHECKPOINT, ""))
    if not uri or not storage.is_complete(uri):
        log.warning("reward model: the champion's reward model %s has no finished checkpoint: a fresh head on SFT", model_id)
        return None
    try:
        check_shape(cfg, StartPoint("checkpoint", uri=uri, model_id=model_id))
    except ConfigError as err:
        log.warning("reward model: the champion's does not fit the preset (%s): a fresh head on SFT", err)
        return None
    return {"uri": uri, "model_id": model_id, "run_id": run_id}


def run_preference(cfg: Config, run_id: str, data: str, base: dict[str, str]) -> dict[str, Any]:
    """Entry point. ``base`` is the SFT checkpoint ``{"uri", "model_id"}``; returns the reward
    model and the tuned policy (``{"uri", "model_id", ...}`` each)."""
    with stage_context(cfg, run_id, "preference") as ctx:
        manifest = load_manifest(data)
        storage.require_complete(base["uri"], "SFT checkpoint")
        pairs = [r for r in dataset_refs(manifest, ("preference",)) if r.context == "training"]
        train_uri = manifest["preference"]["train"]["uri"]
        parent = base.get("model_id") or None
        previous = previous_reward_model(cfg, ctx.tracker, manifest)
        if previous:  # retraining: the reward model goes on learning from where the champion's stopped
            ctx.tracker.log_model_inputs(ctx.mlflow_run_id, [previous["model_id"]])
        reward = run_training_job(
            ctx,
            TrainingJob(
                name="reward", train_fn=reward_train_loop,
                loop_config={"cfg": cfg.to_json(), "base_uri": (previous or base)["uri"], "train_uri": train_uri},
                parent_model_id=parent, datasets=pairs,
                params={**cfg.preference.reward.model_dump(),
                        "init_from": f"champion reward model {previous['model_id']}" if previous else "sft"},
                model_type="reward-model",
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
        if algorithm == "ppo":  # the policy was trained against it: a model input, not only a parameter
            ctx.tracker.log_model_inputs(ctx.mlflow_run_id, [reward["model_id"]])
        policy = run_training_job(ctx, job)
        if algorithm == "ppo" and policy.get("model_id"):
            ctx.tracker.client.set_logged_model_tags(policy["model_id"], {TAG_REWARD_MODEL: reward["model_id"]})
        return {"algorithm": algorithm, "reward": reward, "policy": policy, "reward_init": previous or {}}
