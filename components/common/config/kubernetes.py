"""Kubernetes placement of the pipeline's tasks on a cluster (the local runner ignores it).

Everything a cluster needs to know about *where* and *with what* each KFP task runs lives here,
in the same validated config as the training settings, so one preset describes a whole run and
a typo in a cluster setting fails at load time instead of in a pod hours later.

Tasks come in two classes:

- ``light`` (``data_prep``, ``evaluate``): CPU work in the task's own pod.
- ``training`` (``pretrain``, ``sft`` and every later training stage): in ``ray.mode: local``
  the task pod *is* the Ray cluster, so its GPUs and CPUs follow the preset's ``ray`` section;
  in ``ray.mode: cluster`` the pod only submits the work to the cluster's Ray and waits.

``stages`` overrides either class for one stage (e.g. a bigger ``evaluate``). A field left
``None`` inherits; ``pipelines/cluster.py`` turns the result into KFP task settings.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.common.config.base import Strict

# The same grammar KFP's PipelineTask accepts, checked here so a bad value is a config error
# naming the key rather than a ValueError deep in the compiler.
_CPU = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEMORY = re.compile(r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

LIGHT_STAGES: frozenset[str] = frozenset({"data_prep", "evaluate"})


def _check_dns_name(value: str | None, what: str) -> str | None:
    if value is not None and (len(value) > 253 or not _DNS_NAME.match(value)):
        raise ValueError(f"{what} '{value}' is not a valid Kubernetes name")
    return value


class Toleration(Strict):
    """A pod toleration, e.g. for GPU nodes tainted ``nvidia.com/gpu:NoSchedule``."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)

    def to_dict(self) -> dict[str, object]:
        """Kubernetes' field names; KFP's ``Toleration`` message uses the same ones in JSON."""
        out: dict[str, object] = {"operator": self.operator}
        for name, value in (("key", self.key), ("value", self.value), ("effect", self.effect),
                            ("tolerationSeconds", self.toleration_seconds)):
            if value is not None:
                out[name] = value
        return out

    @model_validator(mode="after")
    def _consistent(self) -> "Toleration":
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        return self


class TaskResources(Strict):
    """What one class of task (or one stage) asks Kubernetes for. ``None`` = inherit/derive."""

    cpu_request: str | None = Field(default=None, description="CPU request of the task pod (e.g. '4', '500m').")
    cpu_limit: str | None = Field(default=None, description="CPU limit of the task pod.")
    memory_request: str | None = Field(default=None, description="Memory request of the task pod (e.g. '16Gi').")
    memory_limit: str | None = Field(default=None, description="Memory limit of the task pod.")
    gpus: int | None = Field(
        default=None, ge=0,
        description="GPUs for the task pod. None: training tasks in ray.mode=local take "
        "ceil(ray.num_workers * ray.gpus_per_worker) when ray.use_gpu; everything else 0.",
    )
    shared_memory: str | None = Field(
        default=None,
        description="Size of a memory-backed /dev/shm; NCCL and DataLoader workers need more "
        "than the container runtime's 64Mi default.",
    )
    node_selector: dict[str, str] | None = Field(default=None, description="Node labels the task pod needs.")
    tolerations: list[Toleration] | None = Field(default=None, description="Taints the task pod tolerates.")

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _cpu(cls, value: str | None) -> str | None:
        if value is not None and not _CPU.match(value):
            raise ValueError(f"'{value}' is not a CPU quantity (e.g. '2', '0.5', '500m')")
        return value

    @field_validator("memory_request", "memory_limit", "shared_memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY.match(value):
            raise ValueError(f"'{value}' is not a memory quantity (e.g. '512Mi', '16Gi')")
        return value

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key in value or {}:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"node selector key '{key}' is not a valid label key")
        return value


class RayPlacement(Strict):
    """Where the training stages' Ray Train workers run.

    - ``local``: Ray starts inside the training task's pod (one node; GPUs from ``ray``).
    - ``cluster`` with ``submit``:
        * ``jobs``: submit the stage to an existing RayCluster through the Ray Jobs API
          (``address`` = its dashboard, ``http://<cluster>-head-svc.<ns>.svc:8265``); the pod
          streams the job's logs and fails with the job's error.
        * ``rayjob``: create a KubeRay ``RayJob`` (on ``cluster_name`` when set, otherwise on a
          RayCluster made for that job and deleted after it) with the Kubernetes API.
        * ``client``: the pod joins the cluster as a Ray Client driver
          (``address`` = ``ray://<cluster>-head-svc.<ns>.svc:10001``); simplest, but a dropped
          connection ends the stage, so ``jobs`` is preferred for long runs.

    The Ray pods read credentials from Secrets of the same names as the task pods' (in
    ``namespace``; the chart creates both copies): Ray's runtime_env is shown in its
    dashboard, so secrets are never forwarded through it.
    """

    mode: Literal["local", "cluster"] = Field(
        default="local", description="local: the task pod is the Ray cluster; cluster: submit to KubeRay."
    )
    submit: Literal["jobs", "rayjob", "client"] = Field(
        default="jobs", description="cluster mode: Jobs API, an ephemeral RayJob, or Ray Client."
    )
    address: str | None = Field(default=None, description="Jobs API (http://…:8265) or Ray Client (ray://…:10001) address.")
    namespace: str = Field(default="fromscratch", description="Namespace of the RayCluster / RayJobs.")
    cluster_name: str | None = Field(default=None, description="rayjob: run on this existing RayCluster.")
    head_cpu: str = Field(default="4", description="rayjob ephemeral cluster: CPUs of the head pod.")
    head_memory: str = Field(default="16Gi", description="rayjob ephemeral cluster: memory of the head pod.")
    worker_memory: str | None = Field(default=None, description="rayjob ephemeral cluster: memory per worker pod.")
    ttl_seconds_after_finished: int = Field(
        default=600, ge=0, description="rayjob: seconds a finished RayJob's cluster is kept."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="rayjob: seconds after which Kubernetes stops the job."
    )
    poll_seconds: float = Field(default=10.0, gt=0, description="Seconds between status polls of a submitted job.")
    entrypoint_num_cpus: float = Field(
        default=0.0, ge=0, description="CPUs reserved for the job's driver (0: it runs beside the workers)."
    )

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _check_dns_name(value, "namespace") or value

    @field_validator("cluster_name")
    @classmethod
    def _cluster(cls, value: str | None) -> str | None:
        return _check_dns_name(value, "RayCluster name")

    @field_validator("head_cpu")
    @classmethod
    def _head_cpu(cls, value: str) -> str:
        if not _CPU.match(value):
            raise ValueError(f"'{value}' is not a CPU quantity")
        return value

    @field_validator("head_memory", "worker_memory")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY.match(value):
            raise ValueError(f"'{value}' is not a memory quantity")
        return value

    @model_validator(mode="after")
    def _address_fits_mode(self) -> "RayPlacement":
        if self.mode != "cluster":
            return self
        if self.submit == "jobs":
            if not self.address or not self.address.startswith(("http://", "https://")):
                raise ValueError("ray.submit=jobs needs ray.address = the dashboard URL (http://…:8265)")
        if self.submit == "client":
            if not self.address or not self.address.startswith("ray://"):
                raise ValueError("ray.submit=client needs ray.address = a Ray Client URL (ray://…:10001)")
        return self


class SecretEnv(Strict):
    """A Kubernetes Secret exposed to task pods as environment variables."""

    name: str
    keys: dict[str, str] = Field(description="Secret key → environment variable.")
    optional: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_dns_name(value, "secret") or value

    @field_validator("keys")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("a secret needs at least one key")
        for env in value.values():
            if not _ENV_NAME.match(env):
                raise ValueError(f"'{env}' is not a valid environment variable name")
        return value


class KubernetesConfig(Strict):
    """Where and with what each KFP task runs on a cluster."""

    namespace: str = Field(default="kubeflow", description="KFP namespace (multi-user: the profile).")
    service_account: str | None = Field(
        default=None,
        description="Runs execute as this ServiceAccount (set on the run by submit/schedule); "
        "it needs RBAC for RayJobs when ray.submit=rayjob. None: KFP's pipeline-runner.",
    )
    s3_secret: str | None = Field(default=None, description="Secret with the S3 credentials for s3fs.")
    s3_secret_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        },
        description="Key in s3_secret → environment variable.",
    )
    mlflow_secret: str | None = Field(default=None, description="Secret with the MLflow basic-auth credentials.")
    mlflow_secret_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        },
        description="Key in mlflow_secret → environment variable.",
    )
    extra_secrets: list[SecretEnv] = Field(default_factory=list, description="More Secrets as env (e.g. an HF token).")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets for pulling the image.")
    env: dict[str, str] = Field(default_factory=dict, description="Plain environment variables for every task.")
    accelerator_type: str = Field(default="nvidia.com/gpu", description="Extended resource name of the GPUs.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="For every task (classes add to it).")
    tolerations: list[Toleration] = Field(default_factory=list, description="For every task (classes add to it).")
    light: TaskResources = Field(default_factory=TaskResources, description="data_prep and evaluate.")
    training: TaskResources = Field(default_factory=TaskResources, description="pretrain, sft and later training stages.")
    stages: dict[str, TaskResources] = Field(default_factory=dict, description="Per-stage overrides of its class.")
    ray: RayPlacement = Field(default_factory=RayPlacement)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return _check_dns_name(value, "namespace") or value

    @field_validator("service_account", "s3_secret", "mlflow_secret")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return _check_dns_name(value, "name")

    @field_validator("image_pull_secrets")
    @classmethod
    def _pull_secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            _check_dns_name(name, "image pull secret")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"'{name}' is not a valid environment variable name")
        return value

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        return TaskResources._labels(value) or {}

    def stage_class(self, stage: str) -> Literal["light", "training"]:
        """``light`` for data_prep/evaluate; every other stage trains."""
        return "light" if stage in LIGHT_STAGES else "training"

    def resources_for(self, stage: str) -> TaskResources:
        """The stage's class resources with its ``stages`` override applied field by field."""
        base = self.light if self.stage_class(stage) == "light" else self.training
        override = self.stages.get(stage)
        if override is None:
            return base
        data = base.model_dump()
        data.update({k: v for k, v in override.model_dump().items() if v is not None})
        return TaskResources.model_validate(data)

    def node_selector_for(self, stage: str) -> dict[str, str]:
        """Global selectors plus the stage's own (the stage's win on a shared key)."""
        return {**self.node_selector, **(self.resources_for(stage).node_selector or {})}

    def tolerations_for(self, stage: str, gpus: int) -> list[Toleration]:
        """Global plus stage tolerations; a pod with GPUs also tolerates the accelerator taint
        (GPU nodes are commonly tainted with the resource name, and tolerating only permits)."""
        found = list(self.tolerations) + list(self.resources_for(stage).tolerations or [])
        if gpus and not any(t.key == self.accelerator_type for t in found):
            found.append(Toleration(key=self.accelerator_type, operator="Exists", effect="NoSchedule"))
        return found

    def secret_envs(self) -> list[SecretEnv]:
        """Every Secret the task pods read, S3 and MLflow first."""
        found = []
        if self.s3_secret:
            found.append(SecretEnv(name=self.s3_secret, keys=self.s3_secret_keys))
        if self.mlflow_secret:
            found.append(SecretEnv(name=self.mlflow_secret, keys=self.mlflow_secret_keys))
        return found + list(self.extra_secrets)
