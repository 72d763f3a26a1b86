"""Run a training function in Ray Train workers: the one launcher every training stage uses.

Locally it joins the Ray the CLI started for the pipeline run (``RAY_ADDRESS``) or starts one
on this machine; on a cluster ``ray.address`` / ``RAY_ADDRESS`` points at KubeRay, or (with
``kubernetes.ray.mode: cluster``) ``ray_cluster`` submits the call as a Ray job there. Checkpoints
go to ``RunConfig(storage_path=...)`` under the run's storage URI, and ``FailureConfig``
restarts the worker group from the latest checkpoint when a worker dies.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from components.common import storage
from components.common.config import Config
from components.common.ray_env import (
    IN_JOB_ENV, endpoint_env, ray_storage_path, runtime_env, storage_filesystem, submits_to_cluster,
)

log = logging.getLogger(__name__)


def ensure_ray(cfg: Config) -> None:
    """Connect to the configured Ray, or start a local one sized for this machine."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    if address:
        # The workers of a cluster started elsewhere see the driver's plain settings (S3
        # endpoint, tracking URI); credentials come from the nodes' own environment.
        env = runtime_env()
        env["env_vars"].pop(IN_JOB_ENV, None)
        env["env_vars"] = {**endpoint_env(cfg), **env["env_vars"]}  # the driver's own environment wins
        if not address.startswith(("ray://", "http://", "https://")):
            # Ray Train's own helpers (state API) look the cluster up again: name it, so another
            # Ray on the same machine is never a candidate
            env["env_vars"]["RAY_ADDRESS"] = address
        log.info("joining Ray at %s", address)
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    need = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    num_cpus = max(int(need + 0.999), os.cpu_count() or 1)
    log.info("starting a local Ray with %d CPUs", num_cpus)
    # address="local": never silently join a stray `ray start` cluster on this machine.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=True)


def scaling_config(cfg: Config):
    """Fixed ``num_workers``, or ``(min_workers, num_workers)`` for elastic training: after a
    lost node the stage restarts with the workers that still fit, from the last checkpoint."""
    from ray.train import ScalingConfig

    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker or 1
    workers: int | tuple[int, int] = cfg.ray.num_workers
    if cfg.ray.min_workers is not None and cfg.ray.min_workers < cfg.ray.num_workers:
        workers = (cfg.ray.min_workers, cfg.ray.num_workers)
    return ScalingConfig(
        num_workers=workers,
        use_gpu=cfg.ray.use_gpu,
        resources_per_worker=resources,
        placement_strategy=cfg.ray.placement_strategy,
    )


def fit(
    train_fn: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    cfg: Config,
    name: str,
    storage_uri: str,
):
    """Run ``train_fn`` on ``cfg.ray.num_workers`` workers; returns the Ray ``Result``.

    Reusing ``name`` under the same ``storage_uri`` resumes: Ray Train V2 reads its checkpoint
    snapshot from that folder and hands the latest checkpoint to the new workers.
    """
    if submits_to_cluster(cfg):
        # kubernetes.ray.mode=cluster: this pod submits the same call to the cluster's Ray.
        from components.common.ray_cluster import fit_on_cluster

        return fit_on_cluster(train_fn, loop_config, cfg, name, storage_uri)

    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray(cfg)
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name,
            storage_path=ray_storage_path(storage_uri),
            storage_filesystem=storage_filesystem(storage_uri),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit()


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def latest_ray_checkpoint(ray_uri: str) -> str | None:
    """The newest checkpoint Ray Train registered in this run folder, if any.

    Ray Train V2 resumes by itself when a trainer reuses a run folder (same ``storage_path``
    and ``name``): its snapshot makes ``ray.train.get_checkpoint()`` return this checkpoint.
    We only read it to say so in the log.
    """
    snapshot_uri = storage.join(ray_uri, RAY_SNAPSHOT)
    if not storage.exists(snapshot_uri):
        return None
    names = [r["checkpoint_dir_name"] for r in storage.read_json(snapshot_uri).get("checkpoint_results", [])]
    return storage.join(ray_uri, max(names)) if names else None
