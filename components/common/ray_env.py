"""The environment a Ray job sees: which settings travel to the cluster's workers, and how
the run's storage is handed to Ray.

Both the local launcher (joining a cluster started elsewhere) and the cluster submission read
this, and neither imports the other through it.
"""

from __future__ import annotations

import os
from typing import Any

from components.common import storage
from components.common.config import Config

# Set in a Ray job's driver on the cluster: the stage there trains instead of submitting again.
IN_JOB_ENV = "FROMSCRATCH_IN_RAY_JOB"
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


def submits_to_cluster(cfg: Config) -> bool:
    """True in the task pod of a cluster run; False inside the submitted job itself."""
    ray = cfg.kubernetes.ray
    return ray.mode == "cluster" and ray.submit in ("jobs", "rayjob") and os.environ.get(IN_JOB_ENV) != "1"


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


def storage_filesystem(uri: str):
    """A pyarrow filesystem for remote storage built from fsspec (so S3 endpoints match)."""
    if not storage.is_remote(uri):
        return None
    import pyarrow.fs as pafs

    fs, _ = storage.filesystem(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def ray_storage_path(uri: str) -> str:
    """Ray wants a bare path when it is given an explicit filesystem."""
    if storage.is_remote(uri):
        return uri.split("://", 1)[1]
    return storage.normalize(uri)
