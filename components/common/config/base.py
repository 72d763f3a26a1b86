"""What every config section shares: strict validation and the trainer settings contract.

``extra="forbid"`` makes a typo in a key an error that names the key instead of a silently
ignored setting; ``validate_assignment`` keeps a section valid when code sets a field later.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key or file."""


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The trainer fields as annotated types: a stage re-declares one with its own default
# (``steps: Steps = 400``) and keeps the shared bounds and description.
Steps = Annotated[int, Field(ge=1, description="Optimizer steps of the stage.")]
LearningRate = Annotated[float, Field(gt=0, description="Peak learning rate (cosine decay after warm-up).")]
WarmupSteps = Annotated[int, Field(ge=0, description="Linear warm-up steps from 0 to `lr`.")]
CheckpointEvery = Annotated[
    int, Field(ge=1, description="Steps between checkpoints (the points a killed run resumes from).")
]
LogEvery = Annotated[int, Field(ge=1, description="Steps between logged metrics and progress lines.")]
MicroBatch = Annotated[int, Field(ge=1, description="Sequences per worker per micro-step.")]
GradAccum = Annotated[
    int,
    Field(ge=1, description="Micro-steps per optimizer step; global batch = micro_batch_size x grad_accum x workers."),
]
MaxLength = Annotated[int, Field(ge=16, description="Tokens per training sequence (longer ones are truncated).")]


Precision = Literal["auto", "fp32", "bf16", "fp16"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]


class RuntimeSettings(Strict):
    """How a stage runs its model on the hardware (not what it learns): every training stage,
    the hand-written loops (pre-training, PPO) and the TRL trainers alike."""

    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass: less memory for about a third more compute.",
    )
    attn_implementation: AttnImplementation = Field(
        default="sdpa",
        description="Attention kernel: sdpa (torch), eager, or flash_attention_2 (CUDA with flash-attn installed; "
        "falls back to sdpa where it is not).",
    )
    precision: Precision | None = Field(
        default=None, description="This stage's training precision; unset: deepspeed.precision."
    )


class ScheduleSettings(RuntimeSettings):
    """The optimisation schedule every trainer shares (what ``hf_worker.common_training_args``
    reads). A stage fixes its batch shape through ``per_device_batch`` and ``accumulation``."""

    steps: Steps = 300
    lr: LearningRate = 1e-3
    warmup_steps: WarmupSteps = 20
    checkpoint_every: CheckpointEvery = 100
    log_every: LogEvery = 10

    @property
    def per_device_batch(self) -> int:
        """Sequences one worker trains on per micro-step."""
        raise NotImplementedError

    @property
    def accumulation(self) -> int:
        """Micro-steps accumulated into one optimizer step."""
        raise NotImplementedError


class TrainerSettings(ScheduleSettings):
    """A stage that trains on fixed-size batches of sequences (pre-training, SFT, reward, DPO)."""

    micro_batch_size: MicroBatch = 16
    grad_accum: GradAccum = 1

    @property
    def per_device_batch(self) -> int:
        return self.micro_batch_size

    @property
    def accumulation(self) -> int:
        return self.grad_accum
