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

import logging
from typing import Any, Callable

from components.common import storage
from components.common.config import Config
from components.common.ray_job_files import ClusterFitResult

log = logging.getLogger(__name__)


def fit_on_cluster(
    train_fn: Callable, loop_config: dict[str, Any], cfg: Config, name: str, storage_uri: str
) -> ClusterFitResult:
    """``ray_launch.fit`` for ``ray.mode: cluster``: the job runs on the cluster's Ray."""
    if not storage.is_remote(storage_uri):
        log.warning(
            "storage %s is a local path: the Ray cluster must mount the same path (else use s3://)", storage_uri
        )
    if cfg.kubernetes.ray.submit == "rayjob":
        from components.common.kuberay import fit_with_rayjob

        return fit_with_rayjob(train_fn, loop_config, cfg, name, storage_uri)
    from components.common.ray_jobs_api import fit_with_jobs_api

    return fit_with_jobs_api(train_fn, loop_config, cfg, name, storage_uri)
