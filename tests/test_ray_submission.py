"""Ray on the cluster, checked offline: the Ray Jobs API client and the Kubernetes custom-objects
API are replaced by fakes (the HTTP layer); what the code does with their answers (submit,
re-attach, stream logs without duplicates, stop on SIGTERM, turn failures into errors) is real."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from components.common import kuberay, ray_cluster, ray_env, ray_job_entry, ray_job_files, ray_jobs_api, ray_launch, storage
from components.common.config import load_config
from tests.k8s_helpers import REPO, check_custom_resource


def _cluster_cfg(tmp_path: Path, *extra: str):
    return load_config("cluster", [f"storage.root={tmp_path / 'runs'}", *extra])


def test_training_function_travels_by_import_path():
    from tests.cluster_jobs import tiny_train_loop

    ref = ray_job_files.function_ref(tiny_train_loop)
    assert ref == "tests.cluster_jobs:tiny_train_loop"
    assert ray_job_files.resolve_function(ref) is tiny_train_loop

    def local_fn(config):
        return None

    with pytest.raises(ValueError, match="module-level"):
        ray_job_files.function_ref(local_fn)


def test_only_the_task_pod_submits(tmp_path, monkeypatch):
    monkeypatch.delenv(ray_env.IN_JOB_ENV, raising=False)
    assert ray_env.submits_to_cluster(_cluster_cfg(tmp_path))
    assert not ray_env.submits_to_cluster(load_config("gpu"))
    assert not ray_env.submits_to_cluster(_cluster_cfg(tmp_path, "kubernetes.ray.submit=client",
                                                           "kubernetes.ray.address=ray://head:10001"))
    monkeypatch.setenv(ray_env.IN_JOB_ENV, "1")
    assert not ray_env.submits_to_cluster(_cluster_cfg(tmp_path))


def test_ray_launch_fit_hands_cluster_runs_over(tmp_path, monkeypatch):
    from components.common import ray_launch
    from tests.cluster_jobs import tiny_train_loop

    monkeypatch.delenv(ray_env.IN_JOB_ENV, raising=False)
    calls = []
    monkeypatch.setattr(ray_cluster, "fit_on_cluster", lambda *a: calls.append(a) or "submitted")
    cfg = _cluster_cfg(tmp_path)
    assert ray_launch.fit(tiny_train_loop, {"steps": 1}, cfg, "pretrain", str(tmp_path / "ray")) == "submitted"
    assert calls[0][3] == "pretrain"


class FakeJobs:
    """The Ray Jobs API as JobSubmissionClient answers it (its HTTP layer, replaced).

    ``run`` is what the cluster does with a submitted entrypoint; ``logs`` are the job's log
    chunks; ``drop_after`` makes the first log connection break after that many chunks.
    """

    def __init__(self, run=None, logs=("line 1\n", "line 2\n", "line 3\n"), drop_after: int | None = None,
                 jobs: list | None = None, final: str = "SUCCEEDED", message: str = "Job finished successfully."):
        from ray.dashboard.modules.job.pydantic_models import JobDetails, JobType
        from ray.job_submission import JobStatus

        self.JobDetails, self.JobType, self.JobStatus = JobDetails, JobType, JobStatus
        self.run, self.logs, self.drop_after = run, list(logs), drop_after
        self.jobs = {j.submission_id: j for j in (jobs or [])}
        self.final, self.message = final, message
        self.submitted: list[dict[str, Any]] = []
        self.stopped: list[str] = []
        self.connections = 0

    def job(self, job_id: str, status: str, message: str = "") -> Any:
        return self.JobDetails(type=self.JobType.SUBMISSION, submission_id=job_id, status=self.JobStatus(status),
                               entrypoint="python -m ...", message=message)

    def list_jobs(self) -> list:
        return list(self.jobs.values())

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env=None, metadata=None, **kwargs) -> str:
        self.submitted.append({"entrypoint": entrypoint, "submission_id": submission_id,
                               "runtime_env": runtime_env, "metadata": metadata, **kwargs})
        self.jobs[submission_id] = self.job(submission_id, "RUNNING")
        if self.run:
            self.run(entrypoint)
        return submission_id

    async def tail_job_logs(self, job_id: str):
        self.connections += 1
        for i, chunk in enumerate(self.logs):
            if self.connections == 1 and self.drop_after is not None and i == self.drop_after:
                raise RuntimeError("WebSocket connection closed unexpectedly with close code 1006")
            await asyncio.sleep(0)
            yield chunk
        self.jobs[job_id] = self.job(job_id, self.final, self.message)

    def get_job_status(self, job_id: str) -> Any:
        return self.jobs[job_id].status

    def get_job_info(self, job_id: str) -> Any:
        return self.jobs[job_id]

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        return True


def _execute_entrypoint(monkeypatch, fit_result):
    """What the cluster would run, minus Ray: the real run_request with ray_launch.fit faked."""
    from components.common import ray_launch

    def run(entrypoint: str) -> None:
        argv = shlex.split(entrypoint)
        assert argv[:4] == ["python", "-m", "components.common.ray_job_entry", "run"]
        seen = {}

        def fake_fit(fn, loop_config, cfg, name, storage_uri):
            seen.update(fn=fn, loop_config=loop_config, cfg=cfg, name=name)
            if isinstance(fit_result, Exception):
                raise fit_result
            return fit_result

        with monkeypatch.context() as m:
            m.setattr(ray_launch, "fit", fake_fit)
            m.setenv(ray_env.IN_JOB_ENV, "0")  # run_request sets it; restored afterwards
            code = ray_job_entry.main(argv[3:])
        run.seen = seen
        run.code = code

    return run


def test_jobs_api_submits_streams_and_collects(tmp_path, monkeypatch, capsys):
    from tests.cluster_jobs import tiny_train_loop

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-forwarded")
    fit_result = SimpleNamespace(metrics={"final": True, "loss": 0.5}, error=None,
                                 checkpoint=SimpleNamespace(path=str(tmp_path / "ckpt")))
    run = _execute_entrypoint(monkeypatch, fit_result)
    fake = FakeJobs(run=run, drop_after=2)
    cfg = _cluster_cfg(tmp_path)
    ray_uri = str(tmp_path / "runs" / "r1" / "ray")
    out: list[str] = []

    result = ray_jobs_api.fit_with_jobs_api(tiny_train_loop, {"steps": 2}, cfg, "pretrain", ray_uri,
                                           client=fake, write=out.append, sleep=lambda s: None)

    (sub,) = fake.submitted
    assert sub["submission_id"].startswith("fs-pretrain-") and sub["submission_id"].endswith("-0")
    env = sub["runtime_env"]["env_vars"]
    assert env[ray_env.IN_JOB_ENV] == "1" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "AWS_SECRET_ACCESS_KEY" not in env  # credentials come from the cluster's Secrets
    assert run.code == 0 and run.seen["fn"] is tiny_train_loop and run.seen["name"] == "pretrain"
    assert run.seen["loop_config"] == {"steps": 2} and run.seen["cfg"].ray.address is None
    # The log connection broke after two chunks; the reconnect printed only the rest.
    assert "".join(out) == "line 1\nline 2\nline 3\n" and fake.connections == 2
    assert result.error is None and result.metrics == {"final": True, "loss": 0.5}
    assert result.checkpoint_path == str(tmp_path / "ckpt")
    request = json.loads(storage.read_text(ray_job_files.request_uri(ray_uri, "pretrain", sub["submission_id"])))
    assert request["image"] == cfg.pipeline.base_image and request["train_fn"] == "tests.cluster_jobs:tiny_train_loop"


def test_a_failed_job_is_the_stage_error(tmp_path, monkeypatch):
    from tests.cluster_jobs import tiny_train_loop

    run = _execute_entrypoint(monkeypatch, ValueError("loss is NaN at step 17"))
    fake = FakeJobs(run=run, final="FAILED", message="Job entrypoint command failed with exit code 1")
    result = ray_jobs_api.fit_with_jobs_api(tiny_train_loop, {}, _cluster_cfg(tmp_path), "sft", str(tmp_path / "ray"),
                                           client=fake, write=lambda s: None, sleep=lambda s: None)
    assert run.code == 1
    assert isinstance(result.error, ray_job_files.ClusterJobError)
    assert "FAILED" in str(result.error) and "loss is NaN at step 17" in str(result.error)


def test_a_job_that_died_before_writing_a_result_reports_rays_message(tmp_path):
    from tests.cluster_jobs import tiny_train_loop

    fake = FakeJobs(final="STOPPED", message="Job was intentionally stopped.")
    result = ray_jobs_api.fit_with_jobs_api(tiny_train_loop, {}, _cluster_cfg(tmp_path), "sft", str(tmp_path / "ray"),
                                           client=fake, write=lambda s: None, sleep=lambda s: None)
    assert "STOPPED: Job was intentionally stopped." in str(result.error)


def test_a_restarted_task_reattaches_and_a_retry_is_a_new_attempt(tmp_path):
    from tests.cluster_jobs import tiny_train_loop

    cfg = _cluster_cfg(tmp_path)
    ray_uri = str(tmp_path / "ray")
    prefix = ray_job_files.job_prefix("pretrain", ray_job_files.job_key(ray_uri, "pretrain"))
    probe = FakeJobs()
    running = FakeJobs(jobs=[probe.job(f"{prefix}-0", "FAILED"), probe.job(f"{prefix}-1", "RUNNING"),
                             probe.job("someone-else-7", "RUNNING")])
    ray_jobs_api.fit_with_jobs_api(tiny_train_loop, {}, cfg, "pretrain", ray_uri, client=running,
                                  write=lambda s: None, sleep=lambda s: None)
    assert running.submitted == []  # attached to attempt 1

    failed = FakeJobs(jobs=[probe.job(f"{prefix}-0", "FAILED"), probe.job(f"{prefix}-1", "FAILED")])
    ray_jobs_api.fit_with_jobs_api(tiny_train_loop, {}, cfg, "pretrain", ray_uri, client=failed,
                                  write=lambda s: None, sleep=lambda s: None)
    assert [s["submission_id"] for s in failed.submitted] == [f"{prefix}-2"]


def test_sigterm_while_waiting_stops_the_job(tmp_path):
    from tests.cluster_jobs import tiny_train_loop

    class Killed(FakeJobs):
        async def tail_job_logs(self, job_id):
            yield "started\n"
            raise ray_jobs_api.Terminated("signal 15")

    fake = Killed()
    with pytest.raises(ray_jobs_api.Terminated):
        ray_jobs_api.fit_with_jobs_api(tiny_train_loop, {}, _cluster_cfg(tmp_path), "pretrain", str(tmp_path / "ray"),
                                      client=fake, write=lambda s: None, sleep=lambda s: None)
    assert fake.stopped == [fake.submitted[0]["submission_id"]]


def test_rayjob_manifest_for_an_ephemeral_cluster(tmp_path):
    cfg = _cluster_cfg(tmp_path, "kubernetes.ray.submit=rayjob", "kubernetes.training.shared_memory=32Gi",
                       "kubernetes.training.node_selector={nvidia.com/gpu.present: 'true'}",
                       "kubernetes.image_pull_secrets=[regcred]")
    key = ray_job_files.job_key("s3://fromscratch/runs/r1/ray", "pretrain")
    name = f"{ray_job_files.job_prefix('pretrain', key)}-0"
    manifest = kuberay.rayjob_manifest(cfg, name, "s3://fromscratch/runs/r1/ray/pretrain-jobs/x.request.json",
                                           "pretrain", key)
    check_custom_resource(manifest)
    spec = manifest["spec"]
    assert manifest["metadata"]["namespace"] == "fromscratch"
    assert manifest["metadata"]["labels"][kuberay.JOB_KEY_LABEL] == key
    assert spec["shutdownAfterJobFinishes"] is True and spec["jobId"] == name
    assert spec["entrypoint"].endswith("run s3://fromscratch/runs/r1/ray/pretrain-jobs/x.request.json")
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"][ray_env.IN_JOB_ENV] == "1"
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == cfg.ray.num_workers == 8
    pod = group["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["memory"] == "320Gi" and container["image"] == cfg.pipeline.base_image
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "fromscratch-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["FROMSCRATCH_IMAGE"]["value"] == cfg.pipeline.base_image
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "32Gi"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]


def test_rayjob_on_an_existing_cluster_selects_it(tmp_path):
    cfg = _cluster_cfg(tmp_path, "kubernetes.ray.submit=rayjob", "kubernetes.ray.cluster_name=fromscratch-ray")
    manifest = kuberay.rayjob_manifest(cfg, "fs-sft-0123456789-0", "/x.request.json", "sft", "0123456789")
    check_custom_resource(manifest)
    assert manifest["spec"]["clusterSelector"] == {"ray.io/cluster": "fromscratch-ray"}
    assert manifest["spec"]["shutdownAfterJobFinishes"] is False


class FakeCustomObjects:
    """kubernetes.client.CustomObjectsApi for RayJobs (its HTTP layer, replaced): each ``get``
    returns the next status KubeRay would have written."""

    def __init__(self, statuses: list[dict[str, Any]], items: list[dict] | None = None):
        self.statuses = list(statuses)
        self.items = items or []
        self.created: list[dict] = []
        self.deleted: list[str] = []

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
        assert (group, version, plural) == ("ray.io", "v1", "rayjobs")
        key = label_selector.split("=", 1)[1]
        return {"items": [o for o in self.items if o["metadata"]["labels"][kuberay.JOB_KEY_LABEL] == key]}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert body["metadata"]["namespace"] == namespace
        self.created.append(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"metadata": {"name": name}, "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


def test_rayjob_lifecycle_streams_logs_and_collects(tmp_path):
    from tests.cluster_jobs import tiny_train_loop

    cfg = _cluster_cfg(tmp_path, "kubernetes.ray.submit=rayjob")
    ray_uri = str(tmp_path / "ray")
    job_name = f"{ray_job_files.job_prefix('pretrain', ray_job_files.job_key(ray_uri, 'pretrain'))}-0"
    # What the job's entrypoint writes on the cluster when training finished.
    storage.write_text(ray_job_files.result_uri(ray_uri, "pretrain", job_name),
                       json.dumps({"error": None, "metrics": {"final": True}}))
    api = FakeCustomObjects([
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "jobId": job_name,
         "dashboardURL": "rc-head-svc.fromscratch.svc:8265"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "jobId": job_name},
    ])
    probe = FakeJobs()
    jobs = FakeJobs(jobs=[probe.job(job_name, "RUNNING")])
    addresses: list[str] = []
    out: list[str] = []

    def factory(address: str) -> FakeJobs:
        addresses.append(address)
        return jobs

    result = kuberay.fit_with_rayjob(tiny_train_loop, {}, cfg, "pretrain", ray_uri, api=api,
                                         jobs_client_factory=factory, write=out.append, sleep=lambda s: None)
    (created,) = api.created
    assert created["metadata"]["name"] == job_name and created["spec"]["jobId"] == job_name
    assert addresses == ["http://rc-head-svc.fromscratch.svc:8265"]
    assert "".join(out) == "line 1\nline 2\nline 3\n"
    assert result.error is None and result.metrics == {"final": True}


def test_rayjob_failure_carries_kuberays_reason(tmp_path):
    from tests.cluster_jobs import tiny_train_loop

    cfg = _cluster_cfg(tmp_path, "kubernetes.ray.submit=rayjob")
    api = FakeCustomObjects([{"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded",
                              "message": "the RayJob has passed the activeDeadlineSeconds"}])
    result = kuberay.fit_with_rayjob(tiny_train_loop, {}, cfg, "sft", str(tmp_path / "ray"), api=api,
                                         write=lambda s: None, sleep=lambda s: None)
    assert "DeadlineExceeded" in str(result.error) and "activeDeadlineSeconds" in str(result.error)


@pytest.mark.slow
def test_the_job_entrypoint_trains_with_real_ray(tmp_path, monkeypatch):
    """The part of a cluster job that runs on the cluster, for real: run_request → ray_launch.fit
    → TorchTrainer on a local Ray → the result file the task pod reads."""
    from tests.cluster_jobs import tiny_train_loop

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = _cluster_cfg(tmp_path, "ray.num_workers=1", "ray.cpus_per_worker=1", "ray.use_gpu=false")
    ray_uri = str(tmp_path / "runs" / "r" / "ray")
    request = ray_job_files.write_request(tiny_train_loop, {"steps": 3}, cfg, "pretrain", ray_uri, "fs-pretrain-x-0")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "components.common.ray_job_entry", "run", request],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = ray_job_files.read_result(ray_uri, "pretrain", "fs-pretrain-x-0", "SUCCEEDED", "")
    assert result.error is None and result.metrics.get("final") is True
    assert result.checkpoint is not None and Path(result.checkpoint.path, "state.json").is_file()
