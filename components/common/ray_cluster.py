"""Run a stage's Ray Train job on the cluster's Ray instead of inside the task pod.

``ray_launch.fit`` hands over here when ``kubernetes.ray.mode`` is ``cluster`` with
``submit: jobs`` or ``submit: rayjob``. The task pod then only submits and waits:

1. The call (training function by import path, its JSON loop config, the resolved config,
   Ray Train's run name and storage URI) is written as JSON next to the stage's Ray Train
   folder on shared storage. No pickles: the cluster runs the same image, so an import path
   is enough, and the request stays readable.
2. The job's entrypoint, ``python -m components.common.ray_cluster run <request>``, runs on
   the cluster as a Ray driver and calls ``ray_launch.fit`` there (the env marker below stops
   it from submitting again), then writes the result JSON beside the request.
3. The pod streams the job's logs into its own (so the KFP UI shows training progress),
   waits for a terminal state and returns a Result-like object; a failed job becomes
   ``result.error`` with the Ray job's own message, which the stage raises as usual.

Submission ids are derived from the storage URI and stage, so a task pod that is restarted
while its job is still running re-attaches to it instead of training twice; a new attempt
after a failure resumes from the latest Ray Train checkpoint like a local re-run does.

Two ways to get the job onto Ray:

- ``jobs``: the Ray Jobs API of an existing RayCluster (``ray.job_submission``).
- ``rayjob``: a KubeRay ``RayJob`` created with the Kubernetes API, either on an existing
  RayCluster (``clusterSelector``) or on one made for the job and deleted after it. The logs are
  streamed from the RayJob's dashboard once KubeRay reports it; status comes from the CR.

A SIGTERM (KFP terminating the run) stops the Ray job / deletes the RayJob so GPUs are not
held by an orphan; any other error while waiting leaves the job running for a retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import yaml

from components.common import storage
from components.common.config import Config

log = logging.getLogger(__name__)

IN_JOB_ENV = "FROMSCRATCH_IN_RAY_JOB"
JOB_KEY_LABEL = "fromscratch.dev/job-key"
STAGE_LABEL = "fromscratch.dev/stage"
# Plain (non-secret) variables the job's driver and workers should see like the task pod does.
# Credentials are not forwarded: runtime_env is visible in the Ray dashboard, so the cluster's
# pods get them from the same Kubernetes Secrets instead (the chart wires that).
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "S3_ENDPOINT_URL",
    "HF_HUB_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "FROMSCRATCH_LOG_LEVEL",
)
RAYJOB_GROUP, RAYJOB_VERSION, RAYJOB_PLURAL = "ray.io", "v1", "rayjobs"
RAYJOB_TERMINAL = {"Complete", "Failed"}


class ClusterJobError(RuntimeError):
    """The Ray job on the cluster failed, was stopped, or could not be submitted."""


class Terminated(BaseException):
    """SIGTERM while waiting: the run is being stopped, so the job must be too."""


def submits_to_cluster(cfg: Config) -> bool:
    """True in the task pod of a cluster run; False inside the submitted job itself."""
    ray = cfg.kubernetes.ray
    return ray.mode == "cluster" and ray.submit in ("jobs", "rayjob") and os.environ.get(IN_JOB_ENV) != "1"


# ---- the request / result files -------------------------------------------------------------


def function_ref(fn: Callable) -> str:
    """``module:qualname`` of a module-level function, checked to import back to itself."""
    ref = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in fn.__qualname__ or fn.__module__ == "__main__":
        raise ValueError(f"{ref} cannot run on a cluster: the training function must be module-level")
    if resolve_function(ref) is not fn:
        raise ValueError(f"{ref} does not import back to the same function")
    return ref


def resolve_function(ref: str) -> Callable:
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def job_key(storage_uri: str, name: str) -> str:
    """Stable per (run, stage): the same stage of the same run finds its earlier jobs."""
    return hashlib.sha1(f"{storage_uri}|{name}".encode()).hexdigest()[:10]


def job_prefix(name: str, key: str) -> str:
    """Submission ids / RayJob names: DNS-safe and short (KubeRay derives longer names from it)."""
    stage = "".join(c if c.isalnum() else "-" for c in name.lower())[:12].strip("-") or "stage"
    return f"fs-{stage}-{key}"


def _attempt(job_id: str | None, prefix: str) -> int | None:
    """The attempt number of one of this stage's jobs; None for anybody else's job."""
    if not job_id or not job_id.startswith(prefix + "-"):
        return None
    tail = job_id[len(prefix) + 1:]
    return int(tail) if tail.isdigit() else None


def job_dir(storage_uri: str, name: str) -> str:
    """Beside Ray Train's own folder for the stage, never inside it."""
    return storage.join(storage_uri, f"{name}-jobs")


def request_uri(storage_uri: str, name: str, job_id: str) -> str:
    return storage.join(job_dir(storage_uri, name), f"{job_id}.request.json")


def result_uri(storage_uri: str, name: str, job_id: str) -> str:
    return storage.join(job_dir(storage_uri, name), f"{job_id}.result.json")


def entrypoint(request: str) -> str:
    return f"python -m components.common.ray_cluster run {shlex.quote(request)}"


def endpoint_env(cfg: Config) -> dict[str, str]:
    """The configured service endpoints as the environment variables libraries read (MLflow's
    client and callbacks, s3fs/botocore): for task pods, Ray pods and a joined cluster's
    workers alike. Credentials are not here: they come from Secrets or the nodes' environment."""
    env: dict[str, str] = {}
    if cfg.tracking.uri:
        env["MLFLOW_TRACKING_URI"] = cfg.tracking.uri
    if cfg.storage.s3_endpoint_url:
        env["AWS_ENDPOINT_URL"] = cfg.storage.s3_endpoint_url
    return env


def runtime_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    env_vars = {name: env[name] for name in FORWARDED_ENV if env.get(name)}
    env_vars[IN_JOB_ENV] = "1"
    env_vars.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return {"env_vars": env_vars}


def write_request(
    train_fn: Callable, loop_config: dict[str, Any], cfg: Config, name: str, storage_uri: str, job_id: str
) -> str:
    uri = request_uri(storage_uri, name, job_id)
    storage.write_text(
        uri,
        json.dumps(
            {
                "train_fn": function_ref(train_fn),
                "loop_config": loop_config,
                "config": cfg.to_json(),
                "name": name,
                "storage_uri": storage_uri,
                "result_uri": result_uri(storage_uri, name, job_id),
                "image": cfg.pipeline.base_image,
            },
            indent=2,
        ),
    )
    return uri


@dataclass
class ClusterFitResult:
    """The parts of ``ray.train.Result`` the stages use, rebuilt from the job's result file."""

    job_id: str
    storage_uri: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: Exception | None = None
    checkpoint_path: str | None = None

    @property
    def checkpoint(self):
        """The latest checkpoint as a ``ray.train.Checkpoint`` on the run's storage."""
        if not self.checkpoint_path:
            return None
        from ray.train import Checkpoint

        from components.common.ray_launch import _storage_filesystem

        return Checkpoint(self.checkpoint_path, filesystem=_storage_filesystem(self.storage_uri))


def read_result(storage_uri: str, name: str, job_id: str, status: str, message: str) -> ClusterFitResult:
    """Combine the job's own result file (when it got that far) with Ray's verdict."""
    uri = result_uri(storage_uri, name, job_id)
    payload: dict[str, Any] = json.loads(storage.read_text(uri)) if storage.exists(uri) else {}
    out = ClusterFitResult(
        job_id=job_id,
        storage_uri=storage_uri,
        metrics=dict(payload.get("metrics") or {}),
        checkpoint_path=payload.get("checkpoint_path"),
    )
    if payload.get("error"):
        out.error = ClusterJobError(f"Ray job {job_id} {status}: {payload['error']}")
    elif status != "SUCCEEDED":
        out.error = ClusterJobError(f"Ray job {job_id} {status}: {message or 'no message from Ray'}")
    elif not payload:
        out.error = ClusterJobError(f"Ray job {job_id} succeeded but wrote no result at {uri}")
    return out


# ---- inside the job: the entrypoint ----------------------------------------------------------


def run_request(uri: str) -> int:
    """What the cluster runs: the stage's ``ray_launch.fit`` as a driver on the cluster's Ray."""
    from components.common import ray_launch
    from components.common.logs import setup_logging

    setup_logging()
    os.environ[IN_JOB_ENV] = "1"
    req = json.loads(storage.read_text(uri))
    here = os.environ.get("FROMSCRATCH_IMAGE")
    if here and req.get("image") and here != req["image"]:
        # jobs mode runs the RayCluster's image, not the task's: say so when they differ.
        log.warning("this Ray cluster runs image %s, the pipeline was compiled for %s", here, req["image"])
    cfg = Config.from_json(req["config"])
    cfg.ray.address = None  # the job supervisor's RAY_ADDRESS is this cluster
    payload: dict[str, Any] = {"error": None, "metrics": {}, "checkpoint_path": None}
    try:
        result = ray_launch.fit(
            resolve_function(req["train_fn"]), req["loop_config"], cfg, req["name"], req["storage_uri"]
        )
        payload["metrics"] = dict(result.metrics or {})
        payload["checkpoint_path"] = result.checkpoint.path if result.checkpoint else None
        if result.error:
            payload["error"] = f"{type(result.error).__name__}: {result.error}"
    except Exception as err:  # noqa: BLE001 - reported to the task pod, then the job fails
        payload["error"] = f"{type(err).__name__}: {err}"
        payload["traceback"] = traceback.format_exc()
        traceback.print_exc()
    storage.write_text(req["result_uri"], json.dumps(payload, indent=2, default=str))
    return 1 if payload["error"] else 0


# ---- in the task pod: submit, follow, collect ------------------------------------------------


@contextmanager
def stop_on_termination(stop: Callable[[], None]) -> Iterator[None]:
    """KFP stops a run by deleting its pods (SIGTERM): stop the cluster job with it."""

    def _raise(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    except (Terminated, KeyboardInterrupt):
        log.warning("stopping the cluster job: the task is being terminated")
        try:
            stop()
        except Exception as err:  # noqa: BLE001 - best effort while going down
            log.error("could not stop the cluster job: %s", err)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


async def _tail(client: Any, job_id: str, write: Callable[[str], None], printed: list[int]) -> None:
    """Stream the job's log from its start, writing only what is past ``printed[0]`` characters.

    ``printed`` is updated chunk by chunk, so a connection that breaks mid-stream still leaves
    an exact count for the reconnect.
    """
    skip = printed[0]
    seen = 0
    async for chunk in client.tail_job_logs(job_id):
        start = max(0, skip - seen)
        seen += len(chunk)
        if start < len(chunk):
            write(chunk[start:])
        printed[0] = max(printed[0], seen)


def follow_job(
    client: Any,
    job_id: str,
    write: Callable[[str], None],
    poll_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Print the job's logs until it is terminal; returns the terminal status name.

    The log stream restarts from the beginning on every connection, so what was printed is
    counted and skipped on reconnect; a dropped connection (dashboard restart, network) is
    retried while the job runs.
    """
    printed = [0]
    while True:
        try:
            asyncio.run(_tail(client, job_id, write, printed))
        except Exception as err:  # noqa: BLE001 - reconnect while the job is alive
            log.warning("log stream of Ray job %s interrupted (%s); reconnecting", job_id, err)
        status = client.get_job_status(job_id)
        if _status_name(status) in ("SUCCEEDED", "FAILED", "STOPPED"):
            return _status_name(status)
        sleep(poll_seconds)


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def fit_with_jobs_api(
    train_fn: Callable,
    loop_config: dict[str, Any],
    cfg: Config,
    name: str,
    storage_uri: str,
    client: Any = None,
    write: Callable[[str], None] = _stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> ClusterFitResult:
    """Submit (or re-attach to) the stage's job on an existing RayCluster via the Jobs API."""
    ray = cfg.kubernetes.ray
    if client is None:
        from ray.job_submission import JobSubmissionClient

        address = ray.address or os.environ.get("RAY_API_SERVER_ADDRESS")
        client = JobSubmissionClient(address)
    prefix = job_prefix(name, job_key(storage_uri, name))
    earlier = sorted(
        (j for j in client.list_jobs() if _attempt(j.submission_id, prefix) is not None),
        key=lambda j: _attempt(j.submission_id, prefix),
    )
    running = [j for j in earlier if _status_name(j.status) not in ("SUCCEEDED", "FAILED", "STOPPED")]
    if running:
        job_id = running[-1].submission_id
        log.info("re-attaching to Ray job %s, still %s", job_id, _status_name(running[-1].status))
    else:
        attempt = _attempt(earlier[-1].submission_id, prefix) + 1 if earlier else 0
        job_id = f"{prefix}-{attempt}"
        req = write_request(train_fn, loop_config, cfg, name, storage_uri, job_id)
        client.submit_job(
            entrypoint=entrypoint(req),
            submission_id=job_id,
            runtime_env=runtime_env(),
            metadata={"stage": name, "storage_uri": storage_uri},
            entrypoint_num_cpus=ray.entrypoint_num_cpus or None,
        )
        log.info("submitted Ray job %s (%s) to %s", job_id, name, ray.address)
    with stop_on_termination(lambda: client.stop_job(job_id)):
        status = follow_job(client, job_id, write, ray.poll_seconds, sleep)
    info = client.get_job_info(job_id)
    return read_result(storage_uri, name, job_id, status, getattr(info, "message", "") or "")


# ---- KubeRay RayJob --------------------------------------------------------------------------


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
    write: Callable[[str], None] = _stdout,
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
    earlier = sorted(
        (o for o in listed.get("items", []) if _attempt(o["metadata"]["name"], prefix) is not None),
        key=lambda o: _attempt(o["metadata"]["name"], prefix),
    )
    running = [o for o in earlier if o.get("status", {}).get("jobDeploymentStatus") not in RAYJOB_TERMINAL]
    if running:
        job_name = running[-1]["metadata"]["name"]
        log.info("re-attaching to RayJob %s/%s", ns, job_name)
    else:
        attempt = _attempt(earlier[-1]["metadata"]["name"], prefix) + 1 if earlier else 0
        job_name = f"{prefix}-{attempt}"
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
                factory = jobs_client_factory or _jobs_client
                url = status["dashboardURL"]
                client = factory(url if "://" in url else f"http://{url}")
                follow_job(client, status["jobId"], write, poll_seconds, sleep)
            except Exception as err:  # noqa: BLE001 - logs are a convenience, status is the truth
                log.warning("cannot stream the logs of RayJob %s (%s); waiting on its status", job_name, err)
            continue
        sleep(poll_seconds)


def _jobs_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def fit_on_cluster(
    train_fn: Callable, loop_config: dict[str, Any], cfg: Config, name: str, storage_uri: str
) -> ClusterFitResult:
    """``ray_launch.fit`` for ``ray.mode: cluster``: the job runs on the cluster's Ray."""
    if not storage.is_remote(storage_uri):
        log.warning(
            "storage %s is a local path: the Ray cluster must mount the same path (else use s3://)", storage_uri
        )
    if cfg.kubernetes.ray.submit == "rayjob":
        return fit_with_rayjob(train_fn, loop_config, cfg, name, storage_uri)
    return fit_with_jobs_api(train_fn, loop_config, cfg, name, storage_uri)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "run":
        print("usage: python -m components.common.ray_cluster run <request-uri>", file=sys.stderr)
        return 2
    return run_request(args[1])


if __name__ == "__main__":
    sys.exit(main())
