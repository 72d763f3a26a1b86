"""Instruction fine-tuning settings (TRL's SFTTrainer, loss on assistant tokens only)."""

from __future__ import annotations

from pydantic import Field

from components.common.config.base import LearningRate, MaxLength, Steps, TrainerSettings


class SFTStageConfig(TrainerSettings):
    """Instruction fine-tuning with TRL's SFTTrainer (loss on assistant tokens only)."""

    steps: Steps = 400
    lr: LearningRate = 1e-3
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_length: MaxLength = 256
    replay_ratio: float = Field(
        default=0.5, ge=0,
        description="Pre-training documents mixed in per instruction example, so SFT does not "
        "erase the language model (held-out perplexity stays close to pre-training's).",
    )
