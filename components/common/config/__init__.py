"""Typed, validated pipeline configuration, laid out like the preset YAML.

One module per part of the preset: ``infra`` (storage, tracking, Ray, DeepSpeed, the KFP image),
``model``, ``data``, one per stage (``pretrain``, ``sft``, ``preference``, ``rlvr``),
``evaluate`` (with promotion), ``kubernetes``; ``root`` holds the whole ``Config`` and
``loader`` reads a preset with overrides. ``base`` has the strict base and the trainer fields
every stage shares. Everything is importable from here.
"""

from components.common.config.base import (
    ConfigError, RuntimeSettings, ScheduleSettings, Strict, TrainerSettings,
)
from components.common.config.data import (
    DataConfig, DataSource, GeneratedCorpusConfig, InstructionDataConfig, PreferenceDataConfig,
    ProblemDataConfig,
)
from components.common.config.evaluate import EvaluateConfig, GateMetric, PromotionConfig
from components.common.config.infra import (
    DeepSpeedConfig, PipelineConfig, RayConfig, StorageConfig, TrackingConfig,
)
from components.common.config.kubernetes import KubernetesConfig, SecretEnv, Toleration
from components.common.config.loader import (
    PRESET_DIR, apply_overrides, load_config, parse_override, preset_path, resolve_stage_config,
    split_overrides,
)
from components.common.config.model import ModelConfig
from components.common.config.preference import (
    DPOStageConfig, PPOHyperparams, PPOStageConfig, PreferenceStageConfig, RewardModelConfig,
)
from components.common.config.pretrain import PretrainConfig
from components.common.config.rlvr import RlvrStageConfig
from components.common.config.root import Config
from components.common.config.sft import SFTStageConfig

__all__ = [
    "PRESET_DIR", "Config", "ConfigError", "DPOStageConfig", "DataConfig", "DataSource", "DeepSpeedConfig",
    "EvaluateConfig", "GateMetric", "GeneratedCorpusConfig", "InstructionDataConfig", "KubernetesConfig",
    "ModelConfig", "PPOHyperparams", "PPOStageConfig", "PipelineConfig", "PreferenceDataConfig",
    "PreferenceStageConfig", "PretrainConfig", "ProblemDataConfig", "PromotionConfig", "RayConfig",
    "RewardModelConfig", "RlvrStageConfig", "RuntimeSettings", "SFTStageConfig", "ScheduleSettings", "SecretEnv", "Strict",
    "StorageConfig", "Toleration", "TrackingConfig", "TrainerSettings", "apply_overrides", "load_config",
    "parse_override", "preset_path", "resolve_stage_config", "split_overrides",
]
