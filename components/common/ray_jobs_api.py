"""Submitting a stage to an existing RayCluster through the Ray Jobs API, following its logs,
and stopping it when KFP stops the run.

A SIGTERM (KFP terminating the run) stops the Ray job so GPUs are not held by an orphan; any
other error while waiting leaves the job running for a retry, which re-attaches to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from components.common.config import Config
from components.common.ray_env import runtime_env
from components.common.ray_job_files import (
    ClusterFitResult, choose_job, entrypoint, job_key, job_prefix, read_result, write_request,
)

log = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM while waiting: the run is being stopped, so the job must be too."""


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
        if status_name(status) in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status_name(status)
        sleep(poll_seconds)


def status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def jobs_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def fit_with_jobs_api(
    train_fn: Callable,
    loop_config: dict[str, Any],
    cfg: Config,
    name: str,
    storage_uri: str,
    client: Any = None,
    write: Callable[[str], None] = write_stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> ClusterFitResult:
    """Submit (or re-attach to) the stage's job on an existing RayCluster via the Jobs API."""
    ray = cfg.kubernetes.ray
    if client is None:
        client = jobs_client(ray.address or os.environ.get("RAY_API_SERVER_ADDRESS"))
    prefix = job_prefix(name, job_key(storage_uri, name))
    states = {j.submission_id: status_name(j.status) for j in client.list_jobs() if j.submission_id}
    job_id, reattach = choose_job({k: v not in ("SUCCEEDED", "FAILED", "STOPPED") for k, v in states.items()}, prefix)
    if reattach:
        log.info("re-attaching to Ray job %s, still %s", job_id, states[job_id])
    else:
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
