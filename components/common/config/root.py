"""The whole run configuration: one section per part of the preset YAML, in the same order."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, ValidationError

from components.common.config.base import ConfigError, Strict
from components.common.config.data import DataConfig
from components.common.config.evaluate import EvaluateConfig, PromotionConfig
from components.common.config.infra import (
    DeepSpeedConfig, PipelineConfig, RayConfig, StorageConfig, TrackingConfig,
)
from components.common.config.kubernetes import KubernetesConfig
from components.common.config.model import ModelConfig
from components.common.config.preference import PreferenceStageConfig
from components.common.config.pretrain import PretrainConfig
from components.common.config.rlvr import RlvrStageConfig
from components.common.config.sft import SFTStageConfig


class Config(Strict):
    """The whole run configuration; one instance is resolved per pipeline run."""

    preset: str = Field(default="tiny", description="The preset this configuration was loaded from.")
    seed: int = Field(default=1234, description="Seed of everything random in the run (data, init, sampling).")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    preference: PreferenceStageConfig = Field(default_factory=PreferenceStageConfig)
    rlvr: RlvrStageConfig = Field(default_factory=RlvrStageConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return validate(json.loads(text), source="config JSON")


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"invalid value for '{key}': {item['msg']}")
    return f"{source}: " + "; ".join(lines)


def validate(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
