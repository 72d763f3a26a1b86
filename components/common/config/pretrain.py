"""Pre-training settings: next-token prediction on the packed corpus, from random init or a champion."""

from __future__ import annotations

from pydantic import Field

from components.common.config.base import CheckpointEvery, LearningRate, Steps, TrainerSettings


class PretrainConfig(TrainerSettings):
    """The hand-written DeepSpeed loop of ``components/pretrain``."""

    steps: Steps = 300
    lr: LearningRate = 3e-3
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Final learning rate as a share of `lr`.")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW weight decay.")
    checkpoint_every: CheckpointEvery = 100
    init_from: str = Field(
        default="random",
        description=(
            "Where pre-training starts: 'random' (random init), 'champion' (the model holding the "
            "promotion alias in the MLflow registry, resolved when the run starts: scheduled "
            "retraining), or a checkpoint URI."
        ),
    )
