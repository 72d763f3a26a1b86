"""Where a run lives and what it runs on: storage, tracking, Ray, DeepSpeed, the KFP image."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.common.config.base import Strict


class StorageConfig(Strict):
    """Where everything a run writes lives: an fsspec URI (local path or ``s3://bucket/prefix``)."""

    root: str = Field(
        default="./fromscratch-runs",
        description="Storage root; each run writes only under <root>/<run-id>/ (local path or s3:// URI).",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint; AWS_ENDPOINT_URL is used when unset."
    )


class TrackingConfig(Strict):
    """MLflow tracking. ``uri`` unset means SQLite beside a local storage root."""

    uri: str | None = Field(
        default=None, description="MLflow tracking URI (http(s)://, sqlite:///…); unset: SQLite under the storage root."
    )
    experiment: str = Field(default="fromscratch", description="MLflow experiment of the pipeline's runs.")
    log_model_artifacts: bool = Field(
        default=True,
        description="Copy checkpoint files into the MLflow model's artifacts (off for huge models).",
    )


class RayConfig(Strict):
    """Ray Train scaling. ``address`` unset starts (or joins, via RAY_ADDRESS) a local Ray."""

    address: str | None = Field(
        default=None, description="Ray to join (ray://, http(s):// or host:port); unset: a local Ray or RAY_ADDRESS."
    )
    num_workers: int = Field(default=2, ge=1, description="Ray Train workers (data-parallel ranks) per stage.")
    cpus_per_worker: float = Field(default=1.0, gt=0, description="CPUs Ray reserves for each worker.")
    use_gpu: bool = Field(default=False, description="One GPU per worker (NCCL); off: gloo on CPU.")
    gpus_per_worker: float = Field(default=0.0, ge=0, description="GPUs per worker when use_gpu (0 means 1).")
    max_failures: int = Field(
        default=3, ge=0, description="Worker-group restarts from the latest checkpoint before a stage fails."
    )
    torch_threads_per_worker: int | None = Field(
        default=None, ge=1, description="torch intra-op threads per worker; unset: cpus_per_worker."
    )
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


class DeepSpeedConfig(Strict):
    """The ZeRO settings every training stage hands to DeepSpeed."""

    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=1, description="ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters."
    )
    offload_optimizer: bool = Field(default=False, description="Keep optimizer state in CPU memory (ZeRO-Offload).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="Training precision; auto: bf16 where the hardware supports it, else fp32."
    )
    gradient_clipping: float = Field(default=1.0, ge=0, description="Global gradient-norm clip (0: none).")
    stage3_param_persistence_threshold: int | None = Field(
        default=None, ge=0,
        description="ZeRO-3: parameters with fewer elements stay whole on every rank; unset: DeepSpeed's "
        "default (1e5). The rehearsal sets 0 so a tiny model is really partitioned.",
    )



class PipelineConfig(Strict):
    """How the KFP pipeline is built: image and per-task resources."""

    base_image: str = Field(
        default="ghcr.io/fromscratch/fromscratch:latest", description="Image every KFP task runs in."
    )
    name: str = Field(default="fromscratch", description="Pipeline name in KFP.")
