"""The request and result files of a stage submitted to the cluster's Ray.

The call (training function by import path, its JSON loop config, the resolved config, Ray
Train's run name and storage URI) is written as JSON next to the stage's Ray Train folder on
shared storage. No pickles: the cluster runs the same image, so an import path is enough, and
the request stays readable. Submission ids derive from the storage URI and stage, so a task
pod restarted while its job still runs re-attaches to it instead of training twice.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from components.common import storage
from components.common.config import Config
from components.common.ray_env import storage_filesystem


class ClusterJobError(RuntimeError):
    """The Ray job on the cluster failed, was stopped, or could not be submitted."""


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


def attempt_number(job_id: str | None, prefix: str) -> int | None:
    """The attempt number of one of this stage's jobs; None for anybody else's job."""
    if not job_id or not job_id.startswith(prefix + "-"):
        return None
    tail = job_id[len(prefix) + 1:]
    return int(tail) if tail.isdigit() else None


def choose_job(jobs: dict[str, bool], prefix: str) -> tuple[str, bool]:
    """The job a stage follows, from ``{job name: still running}`` of what the cluster lists:
    the newest of this stage's attempts that still runs (``True``: re-attach to it), else the
    name of the next attempt (``False``: submit it). Other stages' jobs are ignored."""
    mine = sorted((number, name, running) for name, running in jobs.items()
                  if (number := attempt_number(name, prefix)) is not None)
    live = [name for _, name, running in mine if running]
    if live:
        return live[-1], True
    return f"{prefix}-{mine[-1][0] + 1 if mine else 0}", False


def job_dir(storage_uri: str, name: str) -> str:
    """Beside Ray Train's own folder for the stage, never inside it."""
    return storage.join(storage_uri, f"{name}-jobs")


def request_uri(storage_uri: str, name: str, job_id: str) -> str:
    return storage.join(job_dir(storage_uri, name), f"{job_id}.request.json")


def result_uri(storage_uri: str, name: str, job_id: str) -> str:
    return storage.join(job_dir(storage_uri, name), f"{job_id}.result.json")


def entrypoint(request: str) -> str:
    return f"python -m components.common.ray_job_entry run {shlex.quote(request)}"


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

        return Checkpoint(self.checkpoint_path, filesystem=storage_filesystem(self.storage_uri))


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
