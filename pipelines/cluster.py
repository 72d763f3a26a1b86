"""Put each KFP task where ``cfg.kubernetes`` says: resources, GPUs, secrets, nodes, env.

``pipelines/pipeline.py`` calls ``configure_task(task, cfg, stage)`` once per task. Nothing
here changes what a task computes; it only changes the pod it gets on a cluster, so the local
runner (which ignores resources and platform settings) behaves the same either way.

Pod settings KFP's own task API lacks (secrets as env, node selectors, tolerations, image pull
secrets, a memory-backed ``/dev/shm``) go through ``kfp.kubernetes`` (the ``kfp-kubernetes``
package, same release line as ``kfp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


from components.common.config import Config
from components.common.config.kubernetes import SecretEnv, Toleration
from components.common.ray_env import endpoint_env


@dataclass(frozen=True)
class TaskPlacement:
    """Everything one task's pod gets, resolved from the config (inherit/derive applied)."""

    stage: str
    task_class: str
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpus: int = 0
    shared_memory: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secrets: list[SecretEnv] = field(default_factory=list)
    image_pull_secrets: list[str] = field(default_factory=list)


def trains_in_pod(cfg: Config, stage: str) -> bool:
    """A training stage whose Ray Train workers run inside the task's own pod."""
    return cfg.kubernetes.stage_class(stage) == "training" and cfg.kubernetes.ray.mode == "local"


def placement(cfg: Config, stage: str) -> TaskPlacement:
    """Resolve the pod settings of ``stage`` (see ``KubernetesConfig`` for the rules)."""
    k8s = cfg.kubernetes
    task_class = k8s.stage_class(stage)
    res = k8s.resources_for(stage)
    in_pod = trains_in_pod(cfg, stage)

    gpus = res.gpus
    if gpus is None:
        # The pod is the whole Ray cluster: it must hold every worker's GPUs.
        gpus = math.ceil(cfg.ray.num_workers * (cfg.ray.gpus_per_worker or 1)) if in_pod and cfg.ray.use_gpu else 0
    cpu_request = res.cpu_request
    if cpu_request is None and in_pod:
        # Ray's workers plus one core for the driver, so the scheduler reserves what Ray uses.
        cpu_request = str(math.ceil(cfg.ray.num_workers * cfg.ray.cpus_per_worker) + 1)

    return TaskPlacement(
        stage=stage,
        task_class=task_class,
        cpu_request=cpu_request,
        cpu_limit=res.cpu_limit,
        memory_request=res.memory_request,
        memory_limit=res.memory_limit,
        gpus=gpus,
        shared_memory=res.shared_memory,
        node_selector=k8s.node_selector_for(stage),
        tolerations=k8s.tolerations_for(stage, gpus),
        env=task_env(cfg, stage),
        secrets=k8s.secret_envs(),
        image_pull_secrets=list(k8s.image_pull_secrets),
    )


def task_env(cfg: Config, stage: str) -> dict[str, str]:
    """Plain env for the pod: tracking/storage endpoints and how to reach the cluster's Ray.

    The stages read the same values from the config; the env is for libraries that only
    look at the environment (transformers' MLflow callback, s3fs/botocore, Ray's clients).
    """
    env = {**endpoint_env(cfg), **cfg.kubernetes.env}  # explicit kubernetes.env wins
    ray = cfg.kubernetes.ray
    if cfg.kubernetes.stage_class(stage) == "training" and ray.mode == "cluster" and ray.address:
        if ray.submit == "client":
            env.setdefault("RAY_ADDRESS", ray.address)
        elif ray.submit == "jobs":
            # Not RAY_ADDRESS: ray.init() would take an http:// address for a GCS one.
            env.setdefault("RAY_API_SERVER_ADDRESS", ray.address)
    return env


def apply_kubernetes(task: Any, p: TaskPlacement) -> None:
    """Secrets, node selector, tolerations, pull secrets and /dev/shm through ``kfp.kubernetes``
    (each call adds to the task's ``KubernetesExecutorConfig``; the compiler writes it to the
    IR's ``platforms.kubernetes`` document and the KFP driver turns it into pod fields)."""
    from kfp import kubernetes

    for secret in p.secrets:
        kubernetes.use_secret_as_env(task, secret.name, dict(secret.keys), optional=secret.optional)
    for key, value in sorted(p.node_selector.items()):
        kubernetes.add_node_selector(task, key, value)
    for t in p.tolerations:
        kubernetes.add_toleration(
            task, key=t.key, operator=t.operator, value=t.value, effect=t.effect, toleration_seconds=t.toleration_seconds
        )
    if p.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(p.image_pull_secrets))
    if p.shared_memory:  # NCCL and DataLoader workers need more than the container default 64M
        kubernetes.empty_dir_mount(task, "dshm", "/dev/shm", medium="Memory", size_limit=p.shared_memory)


def configure_task(task: Any, cfg: Config, stage: str) -> Any:
    """Apply ``cfg.kubernetes`` to one KFP ``PipelineTask``; returns the task for chaining.

    With the defaults (``tiny``: no secrets, no GPUs, Ray local) only a derived CPU request on
    training tasks is set, which the local runner ignores.
    """
    p = placement(cfg, stage)
    if p.cpu_request:
        task.set_cpu_request(p.cpu_request)
    if p.cpu_limit:
        task.set_cpu_limit(p.cpu_limit)
    if p.memory_request:
        task.set_memory_request(p.memory_request)
    if p.memory_limit:
        task.set_memory_limit(p.memory_limit)
    if p.gpus:
        task.set_accelerator_type(cfg.kubernetes.accelerator_type)
        task.set_accelerator_limit(p.gpus)
    for name, value in sorted(p.env.items()):
        task.set_env_variable(name, value)
    apply_kubernetes(task, p)
    return task
