"""Typed, validated pipeline configuration.

One YAML file per preset lives in ``pipelines/presets``. A preset is loaded, dotted overrides
(``pretrain.steps=200``) are applied on top, and the result is validated by pydantic with
``extra="forbid"`` so a typo in a key is an error that names the key instead of a silently
ignored setting. Every stage receives the same resolved config (as JSON through KFP), so the
local run and the cluster run read exactly the same values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESET_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "presets"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key or file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Strict):
    """Where everything a run writes lives: an fsspec URI (local path or ``s3://bucket/prefix``)."""

    root: str = "./fromscratch-runs"
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint; AWS_ENDPOINT_URL is used when unset."
    )


class TrackingConfig(_Strict):
    """MLflow tracking. ``uri`` unset means SQLite beside a local storage root."""

    uri: str | None = None
    experiment: str = "fromscratch"
    log_model_artifacts: bool = Field(
        default=True,
        description="Copy checkpoint files into the MLflow model's artifacts (off for huge models).",
    )


class RayConfig(_Strict):
    """Ray Train scaling. ``address`` unset starts (or joins, via RAY_ADDRESS) a local Ray."""

    address: str | None = None
    num_workers: int = Field(default=2, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    use_gpu: bool = False
    gpus_per_worker: float = Field(default=0.0, ge=0)
    max_failures: int = Field(default=3, ge=0)
    torch_threads_per_worker: int | None = Field(default=None, ge=1)
    min_workers: int | None = Field(
        default=None, ge=1,
        description="Elastic training: with fewer than num_workers placeable (a node lost), go on "
        "with as few as this many workers from the last checkpoint instead of waiting. Unset: "
        "always exactly num_workers.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="How Ray places the workers on nodes (SPREAD: one per node where possible)."
    )

    @model_validator(mode="after")
    def _min_workers_fit(self) -> "RayConfig":
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError("ray.min_workers must be <= ray.num_workers")
        return self


class DeepSpeedConfig(_Strict):
    """The ZeRO settings every training stage hands to DeepSpeed."""

    zero_stage: Literal[0, 1, 2, 3] = 1
    offload_optimizer: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_clipping: float = Field(default=1.0, ge=0)
    elastic_checkpoint: bool | None = Field(
        default=None,
        description="ZeRO-1/2 checkpoints that load into another worker count. Unset: on exactly "
        "when ray.min_workers allows a smaller worker group (elastic training).",
    )


class ModelConfig(_Strict):
    """A Llama-style decoder; the tokenizer decides the vocabulary size."""

    hidden_size: int = Field(default=128, ge=8)
    intermediate_size: int = Field(default=384, ge=8)
    num_layers: int = Field(default=4, ge=1)
    num_heads: int = Field(default=4, ge=1)
    num_kv_heads: int = Field(default=4, ge=1)
    max_seq_len: int = Field(default=256, ge=16)
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    init_std: float = Field(default=0.02, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError("model.hidden_size must be divisible by model.num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("model.num_heads must be divisible by model.num_kv_heads")
        return self


class DataSource(_Strict):
    """User text: a path/URI (file, folder or glob; local or s3://) or a Hugging Face dataset."""

    uri: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    format: Literal["auto", "text", "jsonl"] = "auto"
    field: str = "text"

    @model_validator(mode="after")
    def _one_origin(self) -> "DataSource":
        if (self.uri is None) == (self.hf_dataset is None):
            raise ValueError("a data source needs exactly one of 'uri' or 'hf_dataset'")
        return self


class GeneratedCorpusConfig(_Strict):
    """The embedded synthetic world: its size decides how much there is to learn."""

    num_people: int = Field(default=40, ge=2)
    num_train_docs: int = Field(default=6000, ge=1)
    num_heldout_docs: int = Field(default=300, ge=1)


class InstructionDataConfig(_Strict):
    """Instruction/response pairs for SFT: user files (chat ``messages``, ``prompt``/
    ``completion`` or ``instruction``/``input``/``output`` JSONL) or the generated task set."""

    sources: list[str] = Field(default_factory=list, description="Files/folders/globs; empty = generated.")
    heldout_fraction: float = Field(default=0.05, gt=0, lt=1)
    num_train: int = Field(default=4000, ge=1)
    num_heldout: int = Field(default=210, ge=1)
    flawed_share: float = Field(
        default=0.4, ge=0, lt=1,
        description="Share of generated training demonstrations written in a style the labeler "
        "dislikes (padded or with a rude remark), as a crowd of demonstrators writes them: the gap "
        "preference tuning closes. 0 = every demonstration is the labeler's ideal reply.",
    )


class PreferenceDataConfig(_Strict):
    """Chosen/rejected pairs: user JSONL (``prompt``/``chosen``/``rejected`` strings or chat
    messages, or Human/Assistant transcripts) or pairs generated against the oracle."""

    sources: list[str] = Field(default_factory=list, description="Files/folders/globs; empty = generated.")
    heldout_fraction: float = Field(default=0.05, gt=0, lt=1)
    num_train: int = Field(default=3000, ge=1)
    # 400: on 200 pairs the same reward model measured 0.95 and on the next 200 0.91
    num_heldout: int = Field(default=400, ge=1)
    mix_generated: bool = Field(
        default=False,
        description="With sources set: add the generated pairs too (e.g. labelled pairs mixed with generated ones).",
    )


class ProblemDataConfig(_Strict):
    """Problems with one verifiable answer, for RLVR: user JSONL (``prompt``/``answer``, or
    ``question``/``answer`` whose answer ends with ``#### <value>``) or problems generated from
    the world (multi-step word problems and other families), ``difficulty`` 1..max_difficulty."""

    sources: list[str] = Field(default_factory=list, description="Files/folders/globs; empty = generated.")
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1)
    num_train: int = Field(default=2000, ge=1)
    # 300: one problem is a third of a point of pass@1 (on 150 the standard error was ~3 points)
    num_heldout: int = Field(default=300, ge=1)
    max_difficulty: int = Field(default=3, ge=1, le=5, description="Steps of the hardest generated problems.")
    sft_share: float = Field(
        default=0.15, ge=0, lt=1,
        description="Share of the SFT set made of worked training problems (teaches the answer format).",
    )


class DataConfig(_Strict):
    instructions: InstructionDataConfig = Field(default_factory=InstructionDataConfig)
    preferences: PreferenceDataConfig = Field(default_factory=PreferenceDataConfig)
    problems: ProblemDataConfig = Field(default_factory=ProblemDataConfig)
    sources: list[DataSource] = Field(
        default_factory=list, description="User corpora; empty means the generated world."
    )
    heldout_fraction: float = Field(
        default=0.05, gt=0, lt=1, description="Held-out share of user corpora."
    )
    generated: GeneratedCorpusConfig = Field(default_factory=GeneratedCorpusConfig)
    vocab_size: int = Field(default=2048, ge=300)
    tokenizer_min_frequency: int = Field(default=2, ge=1)
    shard_blocks: int = Field(default=4096, ge=1, description="Packed blocks per shard file.")


class PretrainConfig(_Strict):
    steps: int = Field(default=300, ge=1)
    micro_batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=20, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    checkpoint_every: int = Field(default=100, ge=1)
    log_every: int = Field(default=10, ge=1)
    init_from: str = Field(
        default="random",
        description=(
            "Where pre-training starts: 'random' (random init), 'champion' (the model holding the "
            "promotion alias in the MLflow registry, resolved when the run starts: scheduled "
            "retraining), or a checkpoint URI."
        ),
    )


class SFTStageConfig(_Strict):
    """Instruction fine-tuning with TRL's SFTTrainer (loss on assistant tokens only)."""

    steps: int = Field(default=400, ge=1)
    micro_batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    warmup_steps: int = Field(default=20, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_length: int = Field(default=256, ge=16)
    replay_ratio: float = Field(
        default=0.5, ge=0,
        description="Pre-training documents mixed in per instruction example, so SFT does not "
        "erase the language model (held-out perplexity stays close to pre-training's).",
    )
    checkpoint_every: int = Field(default=100, ge=1)
    log_every: int = Field(default=10, ge=1)


class RewardModelConfig(_Strict):
    """The reward model: a scalar head on the SFT checkpoint, trained with TRL RewardTrainer."""

    steps: int = Field(default=300, ge=1)
    micro_batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=5e-4, gt=0)
    warmup_steps: int = Field(default=10, ge=0)
    max_length: int = Field(default=256, ge=16)
    checkpoint_every: int = Field(default=100, ge=1)
    log_every: int = Field(default=20, ge=1)


class PPOStageConfig(_Strict):
    """The project's PPO (TRL no longer ships one): policy + value head against the reward model."""

    iterations: int = Field(default=40, ge=1)
    prompts_per_worker: int = Field(default=16, ge=1, description="Rollout batch per worker and iteration.")
    lr: float = Field(default=2e-5, gt=0)
    kl_coef: float = Field(default=0.05, ge=0)
    gamma: float = Field(default=1.0, gt=0, le=1)
    lam: float = Field(default=0.95, gt=0, le=1)
    clip_range: float = Field(default=0.2, gt=0)
    clip_range_value: float = Field(default=0.2, gt=0)
    vf_coef: float = Field(default=0.5, ge=0)
    ppo_epochs: int = Field(default=2, ge=1)
    minibatch_size: int = Field(default=8, ge=1)
    max_new_tokens: int = Field(default=24, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    missing_eos_penalty: float = Field(default=1.0, ge=0)
    checkpoint_every: int = Field(default=10, ge=1)


class DPOStageConfig(_Strict):
    """DPO with TRL DPOTrainer: the cheaper alternative (no reward model in the loop)."""

    steps: int = Field(default=200, ge=1)
    micro_batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    beta: float = Field(default=0.1, gt=0)
    sft_weight: float = Field(
        default=0.0, ge=0,
        description="Weight of an extra negative log-likelihood term on the chosen replies (RPO). "
        "Plain DPO may lower the chosen replies' likelihood too and derail prompts the model is "
        "unsure of; this term keeps it producing them.",
    )
    warmup_steps: int = Field(default=10, ge=0)
    max_length: int = Field(default=256, ge=16)
    checkpoint_every: int = Field(default=100, ge=1)
    log_every: int = Field(default=20, ge=1)


class PreferenceStageConfig(_Strict):
    algorithm: Literal["ppo", "dpo"] = "ppo"
    reward: RewardModelConfig = Field(default_factory=RewardModelConfig)
    ppo: PPOStageConfig = Field(default_factory=PPOStageConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)


class RlvrStageConfig(_Strict):
    """GRPO on verifiable problems (TRL GRPOTrainer; the verifiers are its reward functions)."""

    steps: int = Field(default=60, ge=1)
    prompts_per_step: int = Field(default=8, ge=1, description="Distinct problems per worker and step.")
    num_generations: int = Field(default=8, ge=2, description="Sampled replies per problem (the group).")
    lr: float = Field(default=5e-5, gt=0)
    beta: float = Field(default=0.02, ge=0, description="KL weight to the reference (the starting checkpoint).")
    temperature: float = Field(default=1.0, gt=0)
    max_new_tokens: int = Field(default=40, ge=1)
    rewards: list[str] = Field(default_factory=lambda: ["correct", "format"], description="Verifier names.")
    reward_weights: list[float] | None = None
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
    warmup_steps: int = Field(default=0, ge=0)
    checkpoint_every: int = Field(default=20, ge=1)
    log_every: int = Field(default=5, ge=1)
    use_vllm: bool = Field(default=False, description="vLLM generation (GPU clusters with vllm installed).")

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


class GateMetric(_Strict):
    """One evaluation metric of the final checkpoint the promotion gate compares with the
    champion's. ``max``: candidate >= champion + margin; ``min``: candidate <= champion - margin.
    A negative margin is a tolerance ("may drop by at most ...")."""

    name: str
    direction: Literal["max", "min"] = "max"
    margin: float = 0.0


class PromotionConfig(_Strict):
    """Registering the final checkpoint and moving the ``champion`` alias only to a better model."""

    enabled: bool = True
    model_name: str = "fromscratch"
    alias: str = "champion"
    gate: list[GateMetric] = Field(
        default_factory=lambda: [
            GateMetric(name="reason.pass_at_1", direction="max", margin=0.01),
            GateMetric(name="instruct.compliance", direction="max", margin=-0.02),
        ]
    )


class EvaluateConfig(_Strict):
    max_eval_blocks: int = Field(default=64, ge=1, description="Held-out blocks for perplexity.")
    max_instruction_examples: int = Field(default=210, ge=1, description="Held-out prompts per checkpoint.")
    instruction_max_new_tokens: int = Field(default=40, ge=1)
    max_preference_examples: int = Field(default=400, ge=1, description="Held-out pairs / prompts.")
    preference_samples: int = Field(
        default=1, ge=1,
        description="Sampled replies per held-out prompt, for each policy and for SFT, in the win rates "
        "and reward/oracle scores. One sample per prompt is noisy: the same PPO checkpoint measured "
        "0.64-0.68 oracle win rate under three sampling seeds.",
    )
    sample_temperature: float = Field(
        default=1.0, gt=0, description="Sampling temperature of the win-rate replies (policies are sampled)."
    )
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=24, ge=1)
    max_problems: int = Field(default=300, ge=1, description="Held-out RLVR problems per checkpoint.")
    pass_k: int = Field(default=8, ge=0, description="Sampled replies per problem for pass@k (0: greedy only).")
    reasoning_max_new_tokens: int = Field(default=48, ge=1)
    copy_sequences: int = Field(default=32, ge=1, description="Repeated random sequences in the copying suite.")
    copy_length: int = Field(default=24, ge=2, description="Tokens per sequence in the copying suite (read twice).")
    sample_prompts: list[str] = Field(
        default_factory=lambda: [
            "Mira lives in",
            "The baker",
            "Three plus four is",
            "Once upon a time",
        ]
    )


class PipelineConfig(_Strict):
    """How the KFP pipeline is built: image and per-task resources."""

    base_image: str = "ghcr.io/fromscratch/fromscratch:latest"
    name: str = "fromscratch"


from components.common.kubernetes_config import KubernetesConfig  # noqa: E402


class Config(_Strict):
    """The whole run configuration; one instance is resolved per pipeline run."""

    preset: str = "tiny"
    seed: int = 1234
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

    @model_validator(mode="after")
    def _elastic_checkpoints(self) -> "Config":
        elastic = self.ray.min_workers is not None and self.ray.min_workers < self.ray.num_workers
        if self.deepspeed.elastic_checkpoint is None:
            self.deepspeed.elastic_checkpoint = elastic
        elif elastic and not self.deepspeed.elastic_checkpoint and self.deepspeed.zero_stage in (1, 2):
            raise ValueError(
                "ray.min_workers < ray.num_workers needs deepspeed.elastic_checkpoint (ZeRO-1/2 state "
                "must load into fewer workers)"
            )
        if elastic and self.deepspeed.zero_stage == 3:
            raise ValueError("ray.min_workers (elastic training) supports deepspeed.zero_stage 0-2, not 3")
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return _validate(json.loads(text), source="config JSON")


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"invalid value for '{key}': {item['msg']}")
    return f"{source}: " + "; ".join(lines)


def _validate(data: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{item}': value is not valid YAML ({err})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config mapping; an unknown key is caught by validation."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                joined = ".".join(path[: depth + 1])
                raise ConfigError(f"override '{item}': '{joined}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def preset_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {candidate}")
        return candidate
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{name_or_path}' (known: {', '.join(known)})")
    return path


def load_config(preset: str = "tiny", overrides: list[str] | None = None) -> Config:
    """Load a preset (name or YAML path), apply dotted overrides, validate."""
    path = preset_path(preset)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data.setdefault("preset", path.stem)
    apply_overrides(data, list(overrides or []))
    source = f"{path} with overrides {list(overrides)}" if overrides else str(path)
    return _validate(data, source=source)


def split_overrides(text: str) -> list[str]:
    """Overrides as typed in a KFP UI text box: one per line or separated by ';'."""
    parts = [p.strip() for chunk in text.splitlines() for p in chunk.split(";")]
    return [p for p in parts if p]


def resolve_stage_config(config_json: str, overrides: str = "") -> Config:
    """What a KFP component does first: the compiled config plus the UI's overrides."""
    data = json.loads(config_json)
    apply_overrides(data, split_overrides(overrides))
    return _validate(data, source="pipeline parameter config_json")
