"""Preference tuning settings: the reward model, the project's PPO, and DPO."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.common.config.base import (
    CheckpointEvery, LearningRate, LogEvery, MaxLength, RuntimeSettings, Steps, Strict, TrainerSettings,
    WarmupSteps,
)


class RewardModelConfig(TrainerSettings):
    """The reward model: a scalar head on the SFT checkpoint, trained with TRL RewardTrainer."""

    steps: Steps = 300
    lr: LearningRate = 5e-4
    warmup_steps: WarmupSteps = 10
    max_length: MaxLength = 256
    log_every: LogEvery = 20
    continue_from_champion: bool = Field(
        default=True,
        description="When the run starts from the champion (pretrain.init_from=champion), train the reward "
        "model on from the champion run's reward model (where its shape fits the preset) instead of a "
        "fresh head on the SFT checkpoint.",
    )


class PPOHyperparams(Strict):
    """The PPO algorithm's knobs (``components/preference/ppo.py`` reads exactly these); defaults
    sized for a ~1M-parameter model and short chat replies."""

    kl_coef: float = Field(
        default=0.05, ge=0,
        description="Weight of the per-token KL penalty to the SFT reference in the reward: higher "
        "keeps the policy closer to SFT (less reward hacking, slower gains).",
    )
    gamma: float = Field(default=1.0, gt=0, le=1, description="Discount over reply tokens (1: none).")
    lam: float = Field(
        default=0.95, gt=0, le=1,
        description="GAE lambda: 1 uses full returns (low bias, high variance), lower leans on the value head.",
    )
    clip_range: float = Field(
        default=0.2, gt=0, description="PPO ratio clip: how far one update may move a token's probability."
    )
    clip_range_value: float = Field(
        default=0.2, gt=0, description="Clip of the value head's change per update (value-loss clipping)."
    )
    vf_coef: float = Field(default=0.5, ge=0, description="Weight of the value loss beside the policy loss.")
    ppo_epochs: int = Field(default=2, ge=1, description="Passes over each rollout batch.")
    minibatch_size: int = Field(default=8, ge=1, description="Replies per gradient step within a rollout.")
    missing_eos_penalty: float = Field(
        default=1.0, ge=0, description="Subtracted from the score of a reply cut off before its end token."
    )
    max_new_tokens: int = Field(default=24, ge=1, description="Longest sampled reply in a rollout.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_k: int | None = Field(default=None, ge=1, description="Sample only from the k likeliest tokens (unset: all).")
    whiten_advantages: bool = Field(
        default=True, description="Normalise advantages over each whole rollout (one scale for all minibatches)."
    )


class PPOStageConfig(PPOHyperparams, RuntimeSettings):
    """The project's PPO (TRL no longer ships one): policy + value head against the reward model."""

    iterations: int = Field(default=40, ge=1, description="Rollout-then-update iterations.")
    prompts_per_worker: int = Field(default=16, ge=1, description="Rollout batch per worker and iteration.")
    lr: LearningRate = 2e-5
    checkpoint_every: CheckpointEvery = 10


class DPOStageConfig(TrainerSettings):
    """DPO with TRL DPOTrainer: the cheaper alternative (no reward model in the loop)."""

    steps: Steps = 200
    lr: LearningRate = 1e-4
    beta: float = Field(
        default=0.1, gt=0, description="DPO temperature: lower lets the policy move further from SFT."
    )
    sft_weight: float = Field(
        default=0.0, ge=0,
        description="Weight of an extra negative log-likelihood term on the chosen replies (RPO). "
        "Plain DPO may lower the chosen replies' likelihood too and derail prompts the model is "
        "unsure of; this term keeps it producing them.",
    )
    warmup_steps: WarmupSteps = 10
    max_length: MaxLength = 256
    log_every: LogEvery = 20


class PreferenceStageConfig(Strict):
    """Preference tuning: a reward model then PPO (RLHF), or DPO straight from the pairs."""

    algorithm: Literal["ppo", "dpo"] = Field(default="ppo", description="ppo (reward model + RL) or dpo.")
    reward: RewardModelConfig = Field(default_factory=RewardModelConfig)
    ppo: PPOStageConfig = Field(default_factory=PPOStageConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
