"""Reasoning fine-tuning settings: GRPO on verifiable problems (TRL GRPOTrainer)."""

from __future__ import annotations

from pydantic import Field, model_validator

from components.common.config.base import (
    CheckpointEvery, LearningRate, LogEvery, ScheduleSettings, Steps, WarmupSteps,
)


class RlvrStageConfig(ScheduleSettings):
    """GRPO on verifiable problems (TRL GRPOTrainer; the verifiers are its reward functions)."""

    steps: Steps = 60
    prompts_per_step: int = Field(default=8, ge=1, description="Distinct problems per worker and step.")
    num_generations: int = Field(default=8, ge=2, description="Sampled replies per problem (the group).")
    lr: LearningRate = 5e-5
    beta: float = Field(default=0.02, ge=0, description="KL weight to the reference (the starting checkpoint).")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the group's replies.")
    max_new_tokens: int = Field(default=40, ge=1, description="Longest sampled reply.")
    rewards: list[str] = Field(default_factory=lambda: ["correct", "format"], description="Verifier names.")
    reward_weights: list[float] | None = Field(
        default=None, description="One weight per verifier in `rewards` (unset: all 1)."
    )
    instruction_share: float = Field(
        default=0.0, ge=0, lt=1,
        description="Share of RLVR training rows that are instruction prompts rewarded by the "
        "'reply' verifier (exact ideal reply), so chat behaviour is trained alongside the problems.",
    )
    guidance: float = Field(
        default=0.0, ge=0, le=1,
        description="Chance that a group in which no sampled reply is correct gets the problem's "
        "worked solution as one of its replies (scored by the same verifiers), so problems the "
        "policy never solves still teach it something. 0 = plain on-policy GRPO.",
    )
    warmup_steps: WarmupSteps = 0
    checkpoint_every: CheckpointEvery = 20
    log_every: LogEvery = 5
    use_vllm: bool = Field(default=False, description="vLLM generation (GPU clusters with vllm installed).")

    @property
    def per_device_batch(self) -> int:
        """TRL counts GRPO batches in replies: ``prompts_per_step`` problems times the group."""
        return self.prompts_per_step * self.num_generations

    @property
    def accumulation(self) -> int:
        return 1

    @model_validator(mode="after")
    def _weights_match(self) -> "RlvrStageConfig":
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError("rlvr.reward_weights must have one weight per entry of rlvr.rewards")
        if self.instruction_share > 0 and "reply" not in self.rewards:
            raise ValueError("rlvr.instruction_share > 0 needs the 'reply' verifier in rlvr.rewards")
        if self.guidance > 0 and self.use_vllm:
            raise ValueError(
                "rlvr.guidance > 0 is not supported with rlvr.use_vllm (a guided reply has no vLLM "
                "sampling log-probabilities); set one of them off"
            )
        return self
