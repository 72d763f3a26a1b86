"""Submitting a stage as a KubeRay ``RayJob``: on an existing RayCluster (``clusterSelector``)
or on one made for the job and deleted after it.

Logs are streamed from the RayJob's dashboard once KubeRay reports it; status comes from the
custom resource. A SIGTERM deletes the RayJob.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import yaml

from components.common.config import Config
from components.common.ray_env import endpoint_env, runtime_env
from components.common.ray_job_files import (
    ClusterFitResult, choose_job, entrypoint, job_key, job_prefix, read_result, write_request,
)
from components.common.ray_jobs_api import follow_job, jobs_client, stop_on_termination, write_stdout

log = logging.getLogger(__name__)

JOB_KEY_LABEL = "fromscratch.dev/job-key"
STAGE_LABEL = "fromscratch.dev/stage"
RAYJOB_GROUP, RAYJOB_VERSION, RAYJOB_PLURAL = "ray.io", "v1", "rayjobs"
RAYJOB_TERMINAL = {"Complete", "Failed"}


def _quantity(value: float) -> str:
    return f"{value:g}"


def _container_env(cfg: Config) -> list[dict[str, Any]]:
    """The Ray pods read the same Secrets as the task pods (they must exist in ray.namespace)."""
    env: list[dict[str, Any]] = []
    for secret in cfg.kubernetes.secret_envs():
        for key, var in secret.keys.items():
            ref: dict[str, Any] = {"name": secret.name, "key": key}
            if secret.optional:
                ref["optional"] = True
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    plain = {**endpoint_env(cfg), **cfg.kubernetes.env}  # explicit kubernetes.env wins
    plain["FROMSCRATCH_IMAGE"] = cfg.pipeline.base_image
    env.extend({"name": k, "value": v} for k, v in sorted(plain.items()))
    return env


def _pod_template(
    cfg: Config,
    container_name: str,
    cpu: str,
    memory: str | None,
    gpus: int,
    shared_memory: str | None,
    node_selector: dict[str, str],
    tolerations: list[Any],
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    k8s = cfg.kubernetes
    requests: dict[str, str] = {"cpu": cpu}
    if memory:
        requests["memory"] = memory
    limits = dict(requests)
    if gpus:
        limits[k8s.accelerator_type] = str(gpus)
    container: dict[str, Any] = {
        "name": container_name,
        "image": cfg.pipeline.base_image,
        "env": _container_env(cfg),
        "resources": {"requests": requests, "limits": limits},
    }
    if ports:
        container["ports"] = ports
    spec: dict[str, Any] = {"containers": [container]}
    if shared_memory:
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
        spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shared_memory}}]
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = [t.to_dict() for t in tolerations]
    if k8s.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in k8s.image_pull_secrets]
    return {"metadata": {"labels": {"app.kubernetes.io/part-of": "fromscratch"}}, "spec": spec}


def ray_cluster_spec(cfg: Config, stage: str) -> dict[str, Any]:
    """A RayCluster for one job: a CPU head (no training on it) and one worker pod per Ray
    Train worker, placed like the stage's task would be (selectors, tolerations, /dev/shm)."""
    import ray

    k8s = cfg.kubernetes
    placement = k8s.ray
    workers = cfg.ray.num_workers
    gpus = math.ceil(cfg.ray.gpus_per_worker or 1) if cfg.ray.use_gpu else 0
    return {
        "rayVersion": ray.__version__,
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod_template(
                cfg, "ray-head", placement.head_cpu, placement.head_memory, 0, None,
                dict(k8s.node_selector), list(k8s.tolerations),
                ports=[
                    {"containerPort": 6379, "name": "gcs-server"},
                    {"containerPort": 8265, "name": "dashboard"},
                    {"containerPort": 10001, "name": "client"},
                ],
            ),
        },
        "workerGroupSpecs": [
            {
                "groupName": "workers",
                "replicas": workers,
                "minReplicas": workers,
                "maxReplicas": workers,
                "rayStartParams": {},
                "template": _pod_template(
                    cfg, "ray-worker",
                    # Ray's own processes beside the Train worker need a little headroom.
                    _quantity(math.ceil(cfg.ray.cpus_per_worker) + 1),
                    placement.worker_memory,
                    gpus,
                    k8s.resources_for(stage).shared_memory,
                    k8s.node_selector_for(stage),
                    k8s.tolerations_for(stage, gpus),
                ),
            }
        ],
    }


def rayjob_manifest(cfg: Config, job_name: str, request: str, name: str, key: str) -> dict[str, Any]:
    """The RayJob custom object for one stage attempt."""
    placement = cfg.kubernetes.ray
    ephemeral = placement.cluster_name is None
    spec: dict[str, Any] = {
        "entrypoint": entrypoint(request),
        "runtimeEnvYAML": yaml.safe_dump(runtime_env(), sort_keys=True),
        "jobId": job_name,
        "submissionMode": "K8sJobMode",
        "backoffLimit": 0,
        "shutdownAfterJobFinishes": ephemeral,
        "metadata": {"stage": name},
    }
    if ephemeral:
        spec["ttlSecondsAfterFinished"] = placement.ttl_seconds_after_finished
        spec["rayClusterSpec"] = ray_cluster_spec(cfg, name)
    else:
        spec["clusterSelector"] = {"ray.io/cluster": placement.cluster_name}
    if placement.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = placement.active_deadline_seconds
    if placement.entrypoint_num_cpus:
        spec["entrypointNumCpus"] = placement.entrypoint_num_cpus
    return {
        "apiVersion": f"{RAYJOB_GROUP}/{RAYJOB_VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": job_name,
            "namespace": placement.namespace,
            "labels": {
                JOB_KEY_LABEL: key,
                STAGE_LABEL: "".join(c if c.isalnum() else "-" for c in name)[:63],
                "app.kubernetes.io/part-of": "fromscratch",
            },
        },
        "spec": spec,
    }


def _kube_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def fit_with_rayjob(
    train_fn: Callable,
    loop_config: dict[str, Any],
    cfg: Config,
    name: str,
    storage_uri: str,
    api: Any = None,
    jobs_client_factory: Callable[[str], Any] | None = None,
    write: Callable[[str], None] = write_stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> ClusterFitResult:
    """Create (or re-attach to) the stage's RayJob and wait for KubeRay to finish it."""
    placement = cfg.kubernetes.ray
    ns = placement.namespace
    api = api or _kube_api()
    key = job_key(storage_uri, name)
    prefix = job_prefix(name, key)
    listed = api.list_namespaced_custom_object(
        RAYJOB_GROUP, RAYJOB_VERSION, ns, RAYJOB_PLURAL, label_selector=f"{JOB_KEY_LABEL}={key}"
    )
    states = {o["metadata"]["name"]: o.get("status", {}).get("jobDeploymentStatus") for o in listed.get("items", [])}
    job_name, reattach = choose_job({k: v not in RAYJOB_TERMINAL for k, v in states.items()}, prefix)
    if reattach:
        log.info("re-attaching to RayJob %s/%s", ns, job_name)
    else:
        req = write_request(train_fn, loop_config, cfg, name, storage_uri, job_name)
        api.create_namespaced_custom_object(
            RAYJOB_GROUP, RAYJOB_VERSION, ns, RAYJOB_PLURAL, rayjob_manifest(cfg, job_name, req, name, key)
        )
        log.info("created RayJob %s/%s for %s", ns, job_name, name)

    def delete() -> None:
        api.delete_namespaced_custom_object(RAYJOB_GROUP, RAYJOB_VERSION, ns, RAYJOB_PLURAL, job_name)

    with stop_on_termination(delete):
        status = wait_for_rayjob(api, ns, job_name, placement.poll_seconds, jobs_client_factory, write, sleep)
    return read_result(
        storage_uri, name, job_name, status.get("jobStatus") or status.get("jobDeploymentStatus", "UNKNOWN"),
        " ".join(s for s in (status.get("reason"), status.get("message")) if s),
    )


def wait_for_rayjob(
    api: Any,
    namespace: str,
    job_name: str,
    poll_seconds: float,
    jobs_client_factory: Callable[[str], Any] | None,
    write: Callable[[str], None],
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    """Poll the RayJob until KubeRay says Complete or Failed; stream logs once it can.

    Logs come from the RayJob's dashboard (``status.dashboardURL``) once the job has an id; if
    that is unreachable from the task pod the stage still finishes, only without live logs.
    """
    streamed = False
    last = None
    while True:
        obj = api.get_namespaced_custom_object(RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, job_name)
        status = obj.get("status", {}) or {}
        deployment = status.get("jobDeploymentStatus", "")
        if (deployment, status.get("jobStatus")) != last:
            last = (deployment, status.get("jobStatus"))
            log.info("RayJob %s: %s / %s", job_name, deployment or "New", status.get("jobStatus") or "-")
        if deployment in RAYJOB_TERMINAL:
            return status
        if not streamed and status.get("dashboardURL") and status.get("jobId") and status.get("jobStatus"):
            streamed = True
            try:
                factory = jobs_client_factory or jobs_client
                url = status["dashboardURL"]
                client = factory(url if "://" in url else f"http://{url}")
                follow_job(client, status["jobId"], write, poll_seconds, sleep)
            except Exception as err:  # noqa: BLE001 - logs are a convenience, status is the truth
                log.warning("cannot stream the logs of RayJob %s (%s); waiting on its status", job_name, err)
            continue
        sleep(poll_seconds)
