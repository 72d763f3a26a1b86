"""Running on a cluster, checked offline: the Helm chart, task placement, Ray cluster jobs, the
KFP commands, infra scripts and CI.

- The chart is rendered by the real Helm engine (helm-python-sdk) with the default and the GPU
  values, and every rendered object is validated by kubernetes-validate against the Kubernetes
  schemas. KubeRay's RayCluster/RayJob are custom resources kubernetes-validate has no schema
  for: their structure is checked here by hand (minimal: required fields, types, replica
  bounds), and the pod templates inside them are validated as real Pods.
- ``configure_task`` is checked on a small pipeline of this module and, in the section marked
  WIRING, on the project's pipeline compiled for the gpu and cluster presets; those tests pass
  only once pipelines/pipeline.py calls ``configure_task`` for each task.
- The Ray Jobs API client and the Kubernetes custom-objects API are replaced by fakes: they are
  the HTTP layer. What the code does with their answers (submit, re-attach, stream logs without
  duplicates, stop on SIGTERM, turn failures into errors) is real.
- ``submit``, ``upload`` and ``schedule`` run the real ``kfp.Client`` against
  tests/kfp_api_server.py, a local HTTP server answering the part of the KFP REST API they call;
  the tests check the requests it received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from components.common import ray_cluster, storage
from components.common.config import ConfigError, load_config
from pipelines import cluster, cluster_cli
from tests.kfp_api_server import KfpApiServer

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "fromscratch"
# The oldest Kubernetes the chart declares and a recent one.
K8S_VERSIONS = ("1.29.0", "1.34.0")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ---- the chart ---------------------------------------------------------------------------------


def render(values_files: tuple[str, ...] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render the chart like ``helm template fromscratch -n fromscratch [-f ...]``."""
    import helm_python as helm

    values: dict[str, Any] = {}
    for name in values_files:
        values = _deep_merge(values, yaml.safe_load((CHART / name).read_text()))
    values = _deep_merge(values, extra or {})
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=values, name="fromscratch", namespace="fromscratch")
    objects = [
        doc for path, text in manifests.items() if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text) if doc
    ]
    return {"objects": objects, "notes": manifests.get("fromscratch/templates/NOTES.txt", "")}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def find(objects: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [
        o for o in objects if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def pod_from_template(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A pod template as a Pod object, so kubernetes-validate checks it with the Pod schema."""
    meta = {"name": name, **(template.get("metadata") or {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def validate_k8s(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def check_ray_pod_template(template: dict[str, Any], where: str) -> None:
    assert template["spec"]["containers"], f"{where}: no containers"
    validate_k8s(pod_from_template(template, where))


def check_raycluster_spec(spec: dict[str, Any], where: str) -> None:
    """Minimal structure of a KubeRay RayCluster spec (kubernetes-validate has no CRD schemas)."""
    assert isinstance(spec.get("rayVersion"), str) and re.match(r"^\d+\.\d+\.\d+", spec["rayVersion"]), where
    head = spec["headGroupSpec"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in head.get("rayStartParams", {}).items()), (
        f"{where}: rayStartParams must map strings to strings"
    )
    check_ray_pod_template(head["template"], f"{where}-head")
    groups = spec.get("workerGroupSpecs") or []
    assert groups, f"{where}: no worker group"
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names), f"{where}: duplicate group names {names}"
    for group in groups:
        assert DNS_LABEL.match(group["groupName"]), group["groupName"]
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group[key], int) and group[key] >= 0, f"{where}: {key}={group[key]!r}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where}: replica bounds"
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
        check_ray_pod_template(group["template"], f"{where}-{group['groupName']}")


def check_custom_resource(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "ray.io/v1", obj["apiVersion"]
    assert len(obj["metadata"]["name"]) <= 47 and DNS_LABEL.match(obj["metadata"]["name"])
    if obj["kind"] == "RayCluster":
        check_raycluster_spec(obj["spec"], obj["metadata"]["name"])
    elif obj["kind"] == "RayJob":
        spec = obj["spec"]
        assert isinstance(spec["entrypoint"], str) and spec["entrypoint"]
        assert ("clusterSelector" in spec) != ("rayClusterSpec" in spec), "exactly one of clusterSelector/rayClusterSpec"
        if "rayClusterSpec" in spec:
            check_raycluster_spec(spec["rayClusterSpec"], obj["metadata"]["name"])
        assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "InteractiveMode")
        yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))
    else:
        raise AssertionError(f"unexpected custom resource {obj['kind']}")


def validate_all(objects: list[dict]) -> None:
    for obj in objects:
        if obj["apiVersion"].startswith("ray.io/"):
            check_custom_resource(obj)
        else:
            validate_k8s(obj)


@pytest.fixture(scope="module")
def default_chart() -> dict[str, Any]:
    return render()


@pytest.fixture(scope="module")
def gpu_chart() -> dict[str, Any]:
    return render(("values-gpu.yaml",))


@pytest.mark.parametrize("values", [(), ("values-gpu.yaml",)], ids=["default", "gpu"])
def test_chart_renders_and_every_object_validates(values):
    objects = render(values)["objects"]
    validate_all(objects)
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "Deployment", "Service", "Secret", "ConfigMap", "RayCluster", "ServiceAccount",
            "Role", "RoleBinding", "Job"} <= kinds


@pytest.mark.parametrize("values", [(), ("values-gpu.yaml",)], ids=["default", "gpu"])
def test_chart_lints_clean(values):
    import helm_python as helm

    merged: dict[str, Any] = {}
    for name in values:
        merged = _deep_merge(merged, yaml.safe_load((CHART / name).read_text()))
    report = helm.lint(CHART, merged, strict=True)
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def test_validation_catches_a_broken_object(default_chart):
    """The validator is not a rubber stamp: a wrong type in a rendered object fails."""
    import kubernetes_validate

    deployment = json.loads(json.dumps(find(default_chart["objects"], "Deployment")[0]))
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(deployment)
    raycluster = json.loads(json.dumps(find(default_chart["objects"], "RayCluster")[0]))
    raycluster["spec"]["workerGroupSpecs"][0]["minReplicas"] = 5
    with pytest.raises(AssertionError, match="replica bounds"):
        check_custom_resource(raycluster)


def test_mlflow_runs_on_postgres_with_s3_artifacts_and_basic_auth(default_chart):
    objects = default_chart["objects"]
    (deploy,) = find(objects, "Deployment", "fromscratch-mlflow")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--backend-store-uri=postgresql://mlflow@fromscratch-postgres.fromscratch.svc.cluster.local:5432/mlflow" in args
    assert "--artifacts-destination=s3://fromscratch/mlflow" in args and "--serve-artifacts" in args
    assert "--app-name=basic-auth" in args
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow.fromscratch.svc.cluster.local:*" in hosts  # the name the presets use
    env = {e["name"]: e for e in container["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "fromscratch-postgres"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "fromscratch-mlflow"
    # No credential in a ConfigMap or a command line.
    for cm in find(objects, "ConfigMap"):
        assert "password" not in json.dumps(cm["data"]).lower().replace("admin_password", "")
    (sts,) = find(objects, "StatefulSet", "fromscratch-postgres")
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    (svc,) = find(objects, "Service", "mlflow")
    assert svc["spec"]["ports"][0]["port"] == 5000


def test_secrets_are_in_both_namespaces_with_one_generated_password(default_chart):
    import base64

    objects = default_chart["objects"]
    copies = find(objects, "Secret", "fromscratch-mlflow")
    assert {s["metadata"]["namespace"] for s in copies} == {"fromscratch", "kubeflow"}
    passwords = {base64.b64decode(s["data"]["MLFLOW_TRACKING_PASSWORD"]) for s in copies}
    assert len(passwords) == 1 and len(passwords.pop()) == 32
    assert {s["metadata"]["namespace"] for s in find(objects, "Secret", "fromscratch-s3")} == {"fromscratch", "kubeflow"}
    assert "s3.accessKeyId is empty" in default_chart["notes"]


def test_default_raycluster_is_cpu_and_gpu_values_add_a_gpu_group(default_chart, gpu_chart):
    (cpu_rc,) = find(default_chart["objects"], "RayCluster")
    assert [g["groupName"] for g in cpu_rc["spec"]["workerGroupSpecs"]] == ["cpu"]
    assert "nvidia.com/gpu" not in json.dumps(cpu_rc["spec"]["workerGroupSpecs"])

    (gpu_rc,) = find(gpu_chart["objects"], "RayCluster")
    assert gpu_rc["metadata"]["name"] == "fromscratch-ray"
    (group,) = gpu_rc["spec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert group["groupName"] == "gpu" and group["replicas"] == 2 and limits["nvidia.com/gpu"] == "4"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert pod["containers"][0]["image"].startswith("ghcr.io/fromscratch/fromscratch-cuda:")
    assert gpu_rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rbac_lets_the_pipeline_runner_create_rayjobs(default_chart):
    objects = default_chart["objects"]
    (role,) = find(objects, "Role", "fromscratch-rayjobs", "fromscratch")
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "get", "list", "watch", "delete"} <= rules[("ray.io", "rayjobs")]
    (binding,) = find(objects, "RoleBinding", "fromscratch-rayjobs", "fromscratch")
    subjects = {(s["name"], s.get("namespace")) for s in binding["subjects"]}
    assert ("fromscratch-pipeline-runner", "kubeflow") in subjects and ("pipeline-runner", "kubeflow") in subjects
    (sa,) = find(objects, "ServiceAccount", "fromscratch-pipeline-runner", "kubeflow")
    assert sa


def _register_args(objects: list[dict]) -> list[str]:
    (job,) = find(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["fromscratch"]
    return container["args"]


def _cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fromscratch")
    cluster_cli.add_cluster_commands(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize("values", [(), ("values-gpu.yaml",)], ids=["default", "gpu"])
def test_register_job_calls_the_cli_with_a_config_that_validates(values):
    """The chart's --set overrides must be keys the config accepts, or every install fails late."""
    args = _register_args(render(values)["objects"])
    parsed = _cli_parser().parse_args(args)
    cfg = load_config(parsed.preset, parsed.set)
    assert cfg.storage.root == "s3://fromscratch/runs"
    assert cfg.tracking.uri == "http://mlflow.fromscratch.svc.cluster.local:5000"
    assert cfg.kubernetes.s3_secret == "fromscratch-s3" and cfg.kubernetes.mlflow_secret == "fromscratch-mlflow"
    assert cfg.kubernetes.service_account == "fromscratch-pipeline-runner"
    if values:
        assert parsed.command == "schedule" and parsed.preset == "cluster"
        assert cluster_cli.validate_cron(parsed.cron) == "0 0 3 * * 0"
        assert cfg.pipeline.base_image.startswith("ghcr.io/fromscratch/fromscratch-cuda:")
        assert cfg.kubernetes.ray.mode == "cluster" and cfg.kubernetes.ray.submit == "jobs"
        assert cfg.kubernetes.ray.address == "http://fromscratch-ray-head-svc.fromscratch.svc.cluster.local:8265"
    else:
        assert parsed.command == "upload" and cfg.kubernetes.ray.mode == "local"


def test_chart_refuses_an_unknown_ray_mode():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="rayMode"):
        render(extra={"pipeline": {"register": {"rayMode": "remote"}}})


@pytest.mark.parametrize("preset", ["gpu", "cluster"])
def test_presets_name_what_the_chart_creates(preset, gpu_chart):
    cfg = load_config(preset)
    objects = gpu_chart["objects"]
    secret_names = {s["metadata"]["name"] for s in find(objects, "Secret", namespace="kubeflow")}
    assert {cfg.kubernetes.s3_secret, cfg.kubernetes.mlflow_secret} <= secret_names
    assert find(objects, "ServiceAccount", cfg.kubernetes.service_account, cfg.kubernetes.namespace)
    (svc,) = find(objects, "Service", "mlflow", "fromscratch")
    assert cfg.tracking.uri == f"http://mlflow.fromscratch.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    if cfg.kubernetes.ray.mode == "cluster":
        (rc,) = find(objects, "RayCluster")
        assert cfg.kubernetes.ray.address == f"http://{rc['metadata']['name']}-head-svc.fromscratch.svc.cluster.local:8265"


# ---- configure_task on a pipeline of this module (no wiring needed) ---------------------------


def _tiny_pipeline(cfg, stages: tuple[str, ...]):
    from tests.cluster_jobs import placement_pipeline

    return placement_pipeline(cfg, stages)


def _compile_own(cfg, stages: tuple[str, ...], tmp_path: Path) -> dict[str, cluster.CompiledTask]:
    from kfp import compiler

    path = tmp_path / "own.yaml"
    compiler.Compiler().compile(_tiny_pipeline(cfg, stages), str(path))
    compiled = cluster.read_compiled(path)
    # The tasks are echo, echo-2, ... in the order the stages were given.
    names = ["echo"] + [f"echo-{i}" for i in range(2, len(stages) + 1)]
    return {stage: compiled.tasks[name] for stage, name in zip(stages, names)}


def test_gpu_preset_puts_training_on_a_gpu_node(tmp_path):
    tasks = _compile_own(load_config("gpu"), ("data_prep", "pretrain"), tmp_path)
    prep, train = tasks["data_prep"], tasks["pretrain"]

    assert train.resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train.resources["accelerator"]["resourceCount"] == "1"  # ray: 1 worker x 1 GPU
    assert train.resources["resourceCpuRequest"] == "9" and train.resources["resourceMemoryLimit"] == "128Gi"
    k8s = train.kubernetes
    assert k8s["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    assert k8s["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "16Gi"}]

    assert "accelerator" not in prep.resources and "nodeSelector" not in prep.kubernetes
    assert prep.resources["resourceMemoryRequest"] == "8Gi"
    for task in (prep, train):
        secrets = {s["secretName"]: {m["secretKey"]: m["envVar"] for m in s["keyToEnv"]} for s in task.kubernetes["secretAsEnv"]}
        assert secrets["fromscratch-s3"] == {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
        assert "MLFLOW_TRACKING_PASSWORD" in secrets["fromscratch-mlflow"].values()
        assert all(s["secretNameParameter"] == {"runtimeValue": {"constant": s["secretName"]}} for s in task.kubernetes["secretAsEnv"])
        assert task.env["MLFLOW_TRACKING_URI"] == "http://mlflow.fromscratch.svc.cluster.local:5000"


def test_cluster_preset_training_pods_only_submit(tmp_path):
    tasks = _compile_own(load_config("cluster"), ("pretrain", "evaluate"), tmp_path)
    train, ev = tasks["pretrain"], tasks["evaluate"]
    assert "accelerator" not in train.resources  # the GPUs are the RayCluster's
    assert train.resources["resourceCpuRequest"] == "1"
    assert train.env["RAY_API_SERVER_ADDRESS"] == "http://fromscratch-ray-head-svc.fromscratch.svc.cluster.local:8265"
    assert "RAY_ADDRESS" not in train.env  # ray.init() would choke on an http:// address
    assert ev.resources["resourceCpuRequest"] == "16" and "RAY_API_SERVER_ADDRESS" not in ev.env


def test_stage_override_and_explicit_gpus(tmp_path):
    cfg = load_config("gpu", [
        "kubernetes.stages={evaluate: {gpus: 1, memory_limit: 64Gi}}",
        "kubernetes.image_pull_secrets=[regcred]",
        "kubernetes.tolerations=[{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]",
        "kubernetes.accelerator_type=amd.com/gpu",
    ])
    tasks = _compile_own(cfg, ("evaluate", "sft"), tmp_path)
    ev = tasks["evaluate"]
    assert ev.resources["accelerator"] == {"count": "1", "resourceCount": "1", "resourceType": "amd.com/gpu", "type": "amd.com/gpu"}
    assert ev.resources["resourceMemoryLimit"] == "64Gi" and ev.resources["resourceMemoryRequest"] == "8Gi"
    tolerations = ev.kubernetes["tolerations"]
    assert tolerations[0] == {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert ev.kubernetes["imagePullSecret"][0]["secretName"] == "regcred"


def test_tiny_defaults_touch_nothing_but_a_cpu_request(tmp_path):
    tasks = _compile_own(load_config("tiny"), ("data_prep", "pretrain"), tmp_path)
    assert tasks["data_prep"].resources == {} and tasks["data_prep"].kubernetes == {} and tasks["data_prep"].env == {}
    assert tasks["pretrain"].resources == {"cpuRequest": 3.0, "resourceCpuRequest": "3"}
    assert tasks["pretrain"].kubernetes == {}


def test_configured_tasks_still_run_under_the_local_runner(tmp_path):
    """kfp.local ignores resources and platform config: configuring never breaks `make run`."""
    from kfp import local

    cfg = load_config("gpu")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    _tiny_pipeline(cfg, ("pretrain",))(text="ok")  # raises if the local runner refuses the task


@pytest.mark.parametrize(
    "override, message",
    [
        ("kubernetes.training.cpu_request=two", r"kubernetes\.training\.cpu_request"),
        ("kubernetes.light.memory_limit=8GB", r"kubernetes\.light\.memory_limit"),
        ("kubernetes.ray.mode=cluster", r"ray\.submit=jobs needs ray\.address"),
        ("kubernetes.s3_secret=Not_A_Name", r"kubernetes\.s3_secret"),
        ("kubernetes.gpus=1", r"unknown config key 'kubernetes\.gpus'"),
        ("kubernetes.tolerations=[{operator: Equal}]", r"without a key"),
    ],
)
def test_bad_kubernetes_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


# ---- WIRING: the project's pipeline; passes once pipelines/pipeline.py calls configure_task ----


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, cluster.CompiledPipeline]:
    out = tmp_path_factory.mktemp("compiled")
    return {p: cluster.compile_pipeline(load_config(p), out / f"{p}.yaml") for p in ("gpu", "cluster")}


def _stage(task_name: str) -> str:
    return task_name.replace("-", "_")


@pytest.mark.parametrize("preset", ["gpu", "cluster"])
def test_compiled_pipeline_tasks_images_and_parameters(preset, compiled):
    """Independent of the wiring: which tasks, on which image, with which parameters."""
    pipe = compiled[preset]
    cfg = load_config(preset)
    assert {"data-prep", "pretrain", "sft", "evaluate"} <= set(pipe.tasks)
    assert {t.image for t in pipe.tasks.values()} == {cfg.pipeline.base_image}
    params = pipe.parameters
    assert set(params) >= {"config_json", "overrides", "run_id"}
    baked = json.loads(params["config_json"])
    assert baked["kubernetes"] == json.loads(cfg.to_json())["kubernetes"]


def _wired(pipe: cluster.CompiledPipeline) -> None:
    if not any(t.kubernetes for t in pipe.tasks.values()):
        pytest.fail("no task has Kubernetes settings: pipelines/pipeline.py does not call "
                    "pipelines.cluster.configure_task yet (see the report)")


def test_wired_gpu_pipeline_requests_gpus_for_training_only(compiled):
    pipe = compiled["gpu"]
    _wired(pipe)
    for name, task in pipe.tasks.items():
        stage = _stage(name)
        secrets = {s["secretName"] for s in task.kubernetes.get("secretAsEnv", [])}
        assert secrets == {"fromscratch-s3", "fromscratch-mlflow"}, name
        if stage in ("data_prep", "evaluate"):
            assert "accelerator" not in task.resources, name
            assert "nodeSelector" not in task.kubernetes, name
        else:
            assert task.resources["accelerator"]["resourceCount"] == "1", name
            assert task.resources["accelerator"]["resourceType"] == "nvidia.com/gpu", name
            assert task.kubernetes["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}, name
            assert task.kubernetes["emptyDirMounts"][0]["sizeLimit"] == "16Gi", name


def test_wired_cluster_pipeline_submits_to_the_raycluster(compiled):
    pipe = compiled["cluster"]
    _wired(pipe)
    address = load_config("cluster").kubernetes.ray.address
    for name, task in pipe.tasks.items():
        assert "accelerator" not in task.resources, name
        assert {s["secretName"] for s in task.kubernetes["secretAsEnv"]} == {"fromscratch-s3", "fromscratch-mlflow"}
        if _stage(name) in ("data_prep", "evaluate"):
            assert "RAY_API_SERVER_ADDRESS" not in task.env, name
        else:
            assert task.env["RAY_API_SERVER_ADDRESS"] == address, name
    assert pipe.tasks["evaluate"].resources["resourceCpuRequest"] == "16"


# ---- Ray on the cluster -------------------------------------------------------------------------


def _cluster_cfg(tmp_path: Path, *extra: str):
    return load_config("cluster", [f"storage.root={tmp_path / 'runs'}", *extra])


def test_training_function_travels_by_import_path():
    from tests.cluster_jobs import tiny_train_loop

    ref = ray_cluster.function_ref(tiny_train_loop)
    assert ref == "tests.cluster_jobs:tiny_train_loop"
    assert ray_cluster.resolve_function(ref) is tiny_train_loop

    def local_fn(config):
        return None

    with pytest.raises(ValueError, match="module-level"):
        ray_cluster.function_ref(local_fn)


def test_only_the_task_pod_submits(tmp_path, monkeypatch):
    monkeypatch.delenv(ray_cluster.IN_JOB_ENV, raising=False)
    assert ray_cluster.submits_to_cluster(_cluster_cfg(tmp_path))
    assert not ray_cluster.submits_to_cluster(load_config("gpu"))
    assert not ray_cluster.submits_to_cluster(_cluster_cfg(tmp_path, "kubernetes.ray.submit=client",
                                                           "kubernetes.ray.address=ray://head:10001"))
    monkeypatch.setenv(ray_cluster.IN_JOB_ENV, "1")
    assert not ray_cluster.submits_to_cluster(_cluster_cfg(tmp_path))


def test_ray_launch_fit_hands_cluster_runs_over(tmp_path, monkeypatch):
    from components.common import ray_launch
    from tests.cluster_jobs import tiny_train_loop

    monkeypatch.delenv(ray_cluster.IN_JOB_ENV, raising=False)
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
        assert argv[:4] == ["python", "-m", "components.common.ray_cluster", "run"]
        seen = {}

        def fake_fit(fn, loop_config, cfg, name, storage_uri):
            seen.update(fn=fn, loop_config=loop_config, cfg=cfg, name=name)
            if isinstance(fit_result, Exception):
                raise fit_result
            return fit_result

        with monkeypatch.context() as m:
            m.setattr(ray_launch, "fit", fake_fit)
            m.setenv(ray_cluster.IN_JOB_ENV, "0")  # run_request sets it; restored afterwards
            code = ray_cluster.main(argv[3:])
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

    result = ray_cluster.fit_with_jobs_api(tiny_train_loop, {"steps": 2}, cfg, "pretrain", ray_uri,
                                           client=fake, write=out.append, sleep=lambda s: None)

    (sub,) = fake.submitted
    assert sub["submission_id"].startswith("fs-pretrain-") and sub["submission_id"].endswith("-0")
    env = sub["runtime_env"]["env_vars"]
    assert env[ray_cluster.IN_JOB_ENV] == "1" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "AWS_SECRET_ACCESS_KEY" not in env  # credentials come from the cluster's Secrets
    assert run.code == 0 and run.seen["fn"] is tiny_train_loop and run.seen["name"] == "pretrain"
    assert run.seen["loop_config"] == {"steps": 2} and run.seen["cfg"].ray.address is None
    # The log connection broke after two chunks; the reconnect printed only the rest.
    assert "".join(out) == "line 1\nline 2\nline 3\n" and fake.connections == 2
    assert result.error is None and result.metrics == {"final": True, "loss": 0.5}
    assert result.checkpoint_path == str(tmp_path / "ckpt")
    request = json.loads(storage.read_text(ray_cluster.request_uri(ray_uri, "pretrain", sub["submission_id"])))
    assert request["image"] == cfg.pipeline.base_image and request["train_fn"] == "tests.cluster_jobs:tiny_train_loop"


def test_a_failed_job_is_the_stage_error(tmp_path, monkeypatch):
    from tests.cluster_jobs import tiny_train_loop

    run = _execute_entrypoint(monkeypatch, ValueError("loss is NaN at step 17"))
    fake = FakeJobs(run=run, final="FAILED", message="Job entrypoint command failed with exit code 1")
    result = ray_cluster.fit_with_jobs_api(tiny_train_loop, {}, _cluster_cfg(tmp_path), "sft", str(tmp_path / "ray"),
                                           client=fake, write=lambda s: None, sleep=lambda s: None)
    assert run.code == 1
    assert isinstance(result.error, ray_cluster.ClusterJobError)
    assert "FAILED" in str(result.error) and "loss is NaN at step 17" in str(result.error)


def test_a_job_that_died_before_writing_a_result_reports_rays_message(tmp_path):
    from tests.cluster_jobs import tiny_train_loop

    fake = FakeJobs(final="STOPPED", message="Job was intentionally stopped.")
    result = ray_cluster.fit_with_jobs_api(tiny_train_loop, {}, _cluster_cfg(tmp_path), "sft", str(tmp_path / "ray"),
                                           client=fake, write=lambda s: None, sleep=lambda s: None)
    assert "STOPPED: Job was intentionally stopped." in str(result.error)


def test_a_restarted_task_reattaches_and_a_retry_is_a_new_attempt(tmp_path):
    from tests.cluster_jobs import tiny_train_loop

    cfg = _cluster_cfg(tmp_path)
    ray_uri = str(tmp_path / "ray")
    prefix = ray_cluster.job_prefix("pretrain", ray_cluster.job_key(ray_uri, "pretrain"))
    probe = FakeJobs()
    running = FakeJobs(jobs=[probe.job(f"{prefix}-0", "FAILED"), probe.job(f"{prefix}-1", "RUNNING"),
                             probe.job("someone-else-7", "RUNNING")])
    ray_cluster.fit_with_jobs_api(tiny_train_loop, {}, cfg, "pretrain", ray_uri, client=running,
                                  write=lambda s: None, sleep=lambda s: None)
    assert running.submitted == []  # attached to attempt 1

    failed = FakeJobs(jobs=[probe.job(f"{prefix}-0", "FAILED"), probe.job(f"{prefix}-1", "FAILED")])
    ray_cluster.fit_with_jobs_api(tiny_train_loop, {}, cfg, "pretrain", ray_uri, client=failed,
                                  write=lambda s: None, sleep=lambda s: None)
    assert [s["submission_id"] for s in failed.submitted] == [f"{prefix}-2"]


def test_sigterm_while_waiting_stops_the_job(tmp_path):
    from tests.cluster_jobs import tiny_train_loop

    class Killed(FakeJobs):
        async def tail_job_logs(self, job_id):
            yield "started\n"
            raise ray_cluster.Terminated("signal 15")

    fake = Killed()
    with pytest.raises(ray_cluster.Terminated):
        ray_cluster.fit_with_jobs_api(tiny_train_loop, {}, _cluster_cfg(tmp_path), "pretrain", str(tmp_path / "ray"),
                                      client=fake, write=lambda s: None, sleep=lambda s: None)
    assert fake.stopped == [fake.submitted[0]["submission_id"]]


def test_rayjob_manifest_for_an_ephemeral_cluster(tmp_path):
    cfg = _cluster_cfg(tmp_path, "kubernetes.ray.submit=rayjob", "kubernetes.training.shared_memory=32Gi",
                       "kubernetes.training.node_selector={nvidia.com/gpu.present: 'true'}",
                       "kubernetes.image_pull_secrets=[regcred]")
    key = ray_cluster.job_key("s3://fromscratch/runs/r1/ray", "pretrain")
    name = f"{ray_cluster.job_prefix('pretrain', key)}-0"
    manifest = ray_cluster.rayjob_manifest(cfg, name, "s3://fromscratch/runs/r1/ray/pretrain-jobs/x.request.json",
                                           "pretrain", key)
    check_custom_resource(manifest)
    spec = manifest["spec"]
    assert manifest["metadata"]["namespace"] == "fromscratch"
    assert manifest["metadata"]["labels"][ray_cluster.JOB_KEY_LABEL] == key
    assert spec["shutdownAfterJobFinishes"] is True and spec["jobId"] == name
    assert spec["entrypoint"].endswith("run s3://fromscratch/runs/r1/ray/pretrain-jobs/x.request.json")
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"][ray_cluster.IN_JOB_ENV] == "1"
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
    manifest = ray_cluster.rayjob_manifest(cfg, "fs-sft-0123456789-0", "/x.request.json", "sft", "0123456789")
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
        return {"items": [o for o in self.items if o["metadata"]["labels"][ray_cluster.JOB_KEY_LABEL] == key]}

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
    job_name = f"{ray_cluster.job_prefix('pretrain', ray_cluster.job_key(ray_uri, 'pretrain'))}-0"
    # What the job's entrypoint writes on the cluster when training finished.
    storage.write_text(ray_cluster.result_uri(ray_uri, "pretrain", job_name),
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

    result = ray_cluster.fit_with_rayjob(tiny_train_loop, {}, cfg, "pretrain", ray_uri, api=api,
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
    result = ray_cluster.fit_with_rayjob(tiny_train_loop, {}, cfg, "sft", str(tmp_path / "ray"), api=api,
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
    request = ray_cluster.write_request(tiny_train_loop, {"steps": 3}, cfg, "pretrain", ray_uri, "fs-pretrain-x-0")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "components.common.ray_cluster", "run", request],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = ray_cluster.read_result(ray_uri, "pretrain", "fs-pretrain-x-0", "SUCCEEDED", "")
    assert result.error is None and result.metrics.get("final") is True
    assert result.checkpoint is not None and Path(result.checkpoint.path, "state.json").is_file()


# ---- the KFP commands -----------------------------------------------------------------------------
# The real kfp.Client talks HTTP to tests/kfp_api_server.py, a local server answering the part of
# KFP's v2beta1 REST API these commands call (the real backend cannot run here). The assertions
# are on the requests it received.

SIX_TASKS = {"data-prep", "pretrain", "sft", "preference", "rlvr", "evaluate"}


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    import kfp

    # kfp.Client reads its context (namespace, auth) from ~/.config/kfp/context.json: not here.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KFP_HOST", "KFP_TOKEN", "GITHUB_SHA", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                 "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    with KfpApiServer() as server:
        yield server


def _run_cli(server: KfpApiServer, *argv: str) -> int:
    """``fromscratch <argv>``; every request it sends must be one the server accepts."""
    import warnings

    args = _cli_parser().parse_args(list(argv))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This client only works", FutureWarning)
        code = args.fn(args)
    refused = [(r.route, r.status, r.json or r.query) for r in server.requests if r.status != 200]
    assert not refused, refused
    return code


def _by_name(name: str) -> dict[str, Any]:
    return {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}


def _by_name_sdk(name: str) -> dict[str, Any]:
    """The same filter as kfp.Client itself writes it (the operation as its enum number)."""
    return {"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]}


def _uploaded_spec(request) -> dict[str, Any]:
    filename, data = request.files["uploadfile"]
    assert filename.endswith(".yaml")
    return next(yaml.safe_load_all(data))


def _tasks(spec: dict[str, Any]) -> set[str]:
    return set(spec["root"]["dag"]["tasks"])


def test_submit_sends_the_compiled_pipeline_and_waits(kfp_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KFP_HOST", kfp_server.url + "/")
    monkeypatch.setenv("KFP_TOKEN", "t0ken")
    code = _run_cli(kfp_server, "submit", "--preset", "gpu", "--set", "pretrain.steps=10",
                    "--param", "overrides=seed=3", "--wait", "-o", str(tmp_path / "p.yaml"))
    assert code == 0
    # namespace "kubeflow" is the client's default: it asks the server whether it is multi-user
    assert kfp_server.routes() == ["GET /healthz", "GET /experiments", "POST /experiments", "POST /runs",
                                   "GET /runs/{run_id}"]
    assert all(r.headers.get("authorization") == "Bearer t0ken" for r in kfp_server.requests)
    (lookup,) = kfp_server.sent("GET /experiments")
    assert lookup.filter == _by_name_sdk("fromscratch-gpu")
    (experiment,) = kfp_server.named(kfp_server.experiments, "fromscratch-gpu")

    (create,) = kfp_server.sent("POST /runs")
    run = create.json
    assert run["experiment_id"] == experiment["experiment_id"]
    assert run["runtime_config"]["parameters"] == {"overrides": "seed=3"}
    assert run["service_account"] == "fromscratch-pipeline-runner"
    assert "pipeline_version_reference" not in run
    # the compiled package itself travels in the run: pipeline spec plus the kubernetes platform spec
    compiled = cluster.read_compiled(tmp_path / "p.yaml")
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert _tasks(spec) == SIX_TASKS and spec["pipelineInfo"] == compiled.spec["pipelineInfo"]
    assert platform == compiled.platform and "kubernetes" in platform["platforms"]
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in spec["root"]["dag"]["tasks"].values())
    baked = json.loads(spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"])
    assert baked["pretrain"]["steps"] == 10

    (run_id,) = kfp_server.runs
    (poll,) = kfp_server.sent("GET /runs/{run_id}")
    assert poll.path.endswith(f"/runs/{run_id}")
    out = capsys.readouterr().out
    assert f"submitted run {run_id}: {kfp_server.url}/#/runs/details/{run_id}" in out
    assert f"run {run_id} finished: SUCCEEDED" in out


@pytest.mark.parametrize(
    "states, code, polls",
    [(["FAILED"], 1, 1), (["PENDING", "RUNNING", "SUCCEEDED"], 0, 3), (["RUNNING", "ERROR"], 1, 2)],
)
def test_submit_wait_follows_the_run_state(kfp_server, monkeypatch, capsys, states, code, polls):
    from kfp.client import client as kfp_client

    sleeps: list[float] = []
    monkeypatch.setattr(kfp_client, "time", SimpleNamespace(sleep=sleeps.append))  # its 5 s between polls
    kfp_server.run_states = states
    assert _run_cli(kfp_server, "submit", "--host", kfp_server.url, "--wait") == code
    assert len(kfp_server.sent("GET /runs/{run_id}")) == polls and len(sleeps) == polls - 1
    assert f"finished: {states[-1]}" in capsys.readouterr().out


def test_submit_without_output_leaves_no_compiled_yaml_behind(kfp_server, monkeypatch, tmp_path):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert _run_cli(kfp_server, "submit", "--host", kfp_server.url) == 0
    assert _run_cli(kfp_server, "upload", "--host", kfp_server.url) == 0
    assert kfp_server.sent("POST /runs") and list(scratch.iterdir()) == []


def test_submit_reuses_the_experiment_of_its_namespace(kfp_server):
    existing = kfp_server.add_experiment("fromscratch", namespace="team-a")
    assert _run_cli(kfp_server, "submit", "--host", kfp_server.url, "--namespace", "team-a") == 0
    # a namespace given: no multi-user probe, the experiment is looked up there and reused
    assert kfp_server.routes() == ["GET /experiments", "POST /runs"]
    (lookup,) = kfp_server.sent("GET /experiments")
    assert lookup.query["namespace"] == "team-a" and lookup.filter == _by_name_sdk("fromscratch")
    (create,) = kfp_server.sent("POST /runs")
    assert create.json["experiment_id"] == existing["experiment_id"]
    assert "service_account" not in create.json  # the tiny preset names none: the server's default
    assert "authorization" not in create.headers


@pytest.mark.parametrize(
    "argv, message",
    [
        (["submit"], "pass --host or set KFP_HOST"),
        (["submit", "--host", "{host}", "--param", "seed=3"], r"unknown pipeline parameter\(s\) \['seed'\]"),
        (["schedule", "--host", "{host}", "--cron", "0 3 * * 0"], r"6 fields.*did you mean '0 0 3 \* \* 0'"),
        (["schedule", "--host", "{host}", "--cron", "0 0 3 * * 0", "--from-champion", "--set", "pretrain.init_from=x"],
         "from-champion.*pretrain.init_from"),
    ],
)
def test_cli_mistakes_are_one_line(kfp_server, capsys, argv, message):
    assert _run_cli(kfp_server, *[a.format(host=kfp_server.url) for a in argv]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert kfp_server.requests == []  # caught before anything is sent


def test_upload_is_idempotent(kfp_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("GITHUB_SHA", "abcdef0123")  # the default version name carries the commit
    host = kfp_server.url
    assert _run_cli(kfp_server, "upload", "--host", host, "-o", str(tmp_path / "p.yaml")) == 0
    version = cluster_cli.default_version_name(tmp_path / "p.yaml")
    assert "-abcdef0-" in version
    assert kfp_server.routes() == ["GET /healthz", "GET /pipelines", "POST /pipelines/upload",
                                   "GET /pipelines/{pipeline_id}/versions", "POST /pipelines/upload_version"]
    assert kfp_server.sent("GET /pipelines")[0].filter == _by_name_sdk("fromscratch")
    (pipeline,) = kfp_server.pipelines.values()
    (created,) = kfp_server.sent("POST /pipelines/upload")
    assert created.query["name"] == "fromscratch" and created.query["description"] == "fromscratch tiny preset"
    assert created.files["uploadfile"][1] == (tmp_path / "p.yaml").read_bytes()
    assert _tasks(_uploaded_spec(created)) == SIX_TASKS
    (listed,) = kfp_server.sent("GET /pipelines/{pipeline_id}/versions")
    assert listed.path.endswith(f"/pipelines/{pipeline['pipeline_id']}/versions")
    assert listed.filter == _by_name(version)
    (added,) = kfp_server.sent("POST /pipelines/upload_version")
    assert added.query["name"] == version and added.query["pipelineid"] == pipeline["pipeline_id"]
    assert added.files["uploadfile"][1] == (tmp_path / "p.yaml").read_bytes()
    # KFP makes a pipeline's first upload its first version (named after it); ours comes beside it
    assert sorted(v["display_name"] for v in kfp_server.versions.values()) == sorted(["fromscratch", version])

    kfp_server.requests.clear()
    assert _run_cli(kfp_server, "upload", "--host", host) == 0
    assert kfp_server.routes() == ["GET /healthz", "GET /pipelines", "GET /pipelines/{pipeline_id}/versions"]
    assert f"already has version {version}" in capsys.readouterr().out

    # another config compiles to other YAML: a new version of the same pipeline
    kfp_server.requests.clear()
    assert _run_cli(kfp_server, "upload", "--host", host, "--set", "pretrain.steps=7") == 0
    assert kfp_server.routes()[-1] == "POST /pipelines/upload_version"
    (added,) = kfp_server.sent("POST /pipelines/upload_version")
    assert added.query["name"] != version and added.query["pipelineid"] == pipeline["pipeline_id"]
    assert len(kfp_server.pipelines) == 1 and len(kfp_server.versions) == 3


def test_default_version_name_follows_the_compiled_yaml(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("x: 1\n")
    b.write_text("x: 2\n")
    va, vb = cluster_cli.default_version_name(a), cluster_cli.default_version_name(b)
    assert va != vb and va.startswith(cluster_cli.project_version())


def test_schedule_creates_then_replaces_the_recurring_run(kfp_server, monkeypatch):
    monkeypatch.setenv("KFP_HOST", kfp_server.url)
    argv = ["schedule", "--preset", "cluster", "--cron", "0 0 3 * * 0", "--version", "v7",
            "--param", "overrides=pretrain.steps=100"]
    assert _run_cli(kfp_server, *argv) == 0
    assert kfp_server.routes() == [
        "GET /healthz", "GET /pipelines", "POST /pipelines/upload", "GET /pipelines/{pipeline_id}/versions",
        "POST /pipelines/upload_version", "GET /experiments", "POST /experiments", "GET /recurringruns",
        "POST /recurringruns",
    ]
    (pipeline,) = kfp_server.pipelines.values()
    (version,) = kfp_server.named(kfp_server.versions, "v7")
    (experiment,) = kfp_server.named(kfp_server.experiments, "fromscratch-cluster")
    (listed,) = kfp_server.sent("GET /recurringruns")
    assert listed.query["experiment_id"] == experiment["experiment_id"]
    assert listed.filter == _by_name("fromscratch-retrain")
    (create,) = kfp_server.sent("POST /recurringruns")
    rr = create.json
    assert rr["display_name"] == "fromscratch-retrain" and rr["experiment_id"] == experiment["experiment_id"]
    assert rr["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert int(rr["max_concurrency"]) == 1 and rr["no_catchup"] is True and rr["mode"] == "ENABLE"
    assert rr["pipeline_version_reference"] == {"pipeline_id": pipeline["pipeline_id"],
                                                "pipeline_version_id": version["pipeline_version_id"]}
    assert "pipeline_spec" not in rr  # it runs the uploaded version, not a copy of the YAML
    assert rr["runtime_config"] == {"parameters": {"overrides": "pretrain.steps=100"}}
    assert rr["service_account"] == "fromscratch-pipeline-runner"
    assert rr["description"] == "retrain fromscratch on '0 0 3 * * 0'"
    (first,) = kfp_server.recurring_runs

    # others' schedules: another name in the same experiment, the same name in another experiment
    mine = experiment["experiment_id"]
    kept = {kfp_server.add_recurring_run("nightly-eval", mine)["recurring_run_id"],
            kfp_server.add_recurring_run("fromscratch-retrain", kfp_server.add_experiment("other")["experiment_id"])[
                "recurring_run_id"]}
    kfp_server.requests.clear()
    assert _run_cli(kfp_server, *argv) == 0
    # the version and the experiment exist: nothing uploaded or created but the new schedule
    assert kfp_server.routes() == ["GET /healthz", "GET /pipelines", "GET /pipelines/{pipeline_id}/versions",
                                   "GET /experiments", "GET /recurringruns", "DELETE /recurringruns/{recurring_run_id}",
                                   "POST /recurringruns"]
    (deleted,) = kfp_server.sent("DELETE /recurringruns/{recurring_run_id}")
    assert deleted.path.endswith(f"/recurringruns/{first}")
    (second,) = set(kfp_server.recurring_runs) - kept
    assert second != first and kfp_server.recurring_runs[second]["experiment_id"] == mine

    kfp_server.requests.clear()
    assert _run_cli(kfp_server, *argv, "--no-replace") == 0
    assert "DELETE /recurringruns/{recurring_run_id}" not in kfp_server.routes()
    assert len([r for r in kfp_server.named(kfp_server.recurring_runs, "fromscratch-retrain")
                if r["experiment_id"] == mine]) == 2


@pytest.mark.parametrize("params, overrides", [
    (["--param", "overrides=seed=1"], "seed=1; pretrain.init_from=champion"),
    ([], "pretrain.init_from=champion"),
])
def test_from_champion_adds_its_override(kfp_server, params, overrides):
    """The override reaches the schedule's parameters (resolved by each run, not now), after the
    user's own overrides, and the recurring run says what it does."""
    assert _run_cli(kfp_server, "schedule", "--host", kfp_server.url, "--cron", "@daily", "--version", "v",
                    "--from-champion", *params) == 0
    (create,) = kfp_server.sent("POST /recurringruns")
    rr = create.json
    assert rr["runtime_config"]["parameters"] == {"overrides": overrides}
    assert rr["trigger"] == {"cron_schedule": {"cron": "@daily"}}
    assert rr["description"].endswith("from the champion")
    assert load_config("tiny", [s.strip() for s in overrides.split(";")]).pretrain.init_from == "champion"


@pytest.mark.parametrize("cron", ["0 0 3 * * 0", "*/30 * * * * *", "0 15 10 ? * MON-FRI", "@every 24h"])
def test_valid_crons(cron):
    assert cluster_cli.validate_cron(cron) == cron


# ---- images, infra scripts, CI ---------------------------------------------------------------------


def test_workflow_copy_is_identical_and_submits():
    source = REPO / "infra" / "github" / "workflows" / "pipeline.yaml"
    assert (REPO / ".github" / "workflows" / "pipeline.yaml").read_text() == source.read_text()
    flow = yaml.safe_load(source.read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert triggers["push"]["tags"] == ["v*"] and "workflow_dispatch" in triggers
    steps = [s.get("run", "") for job in flow["jobs"].values() for s in job["steps"]]
    assert any("docker/build.sh all --push" in s for s in steps)
    assert any("fromscratch submit" in s for s in steps)
    assert not any("${{ inputs." in s for s in steps), "inputs must reach scripts through env"


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "infra").glob("*.sh")))
def test_infra_scripts_are_strict_and_parse(script):
    path = REPO / "infra" / script
    text = path.read_text()
    assert "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-x", script], cwd=path.parent, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_infra_versions_are_pinned():
    versions = (REPO / "infra" / "versions.env").read_text()
    for name in ("KFP_VERSION", "KUBERAY_VERSION", "GPU_OPERATOR_VERSION"):
        match = re.search(rf'{name}:=(v?\d+\.\d+\.\d+)', versions)
        assert match, f"{name} is not pinned to a release"
    for script in (REPO / "infra").glob("install-*.sh"):
        assert "latest" not in script.read_text()


def test_images_take_versions_as_build_args_and_tag_version_and_commit():
    for flavour in ("cpu", "cuda"):
        text = (REPO / "docker" / f"Dockerfile.{flavour}").read_text()
        for arg in ("TORCH_VERSION", "FROMSCRATCH_VERSION", "GIT_COMMIT"):
            assert f"ARG {arg}" in text, (flavour, arg)
        assert "ray[default,train]" in text  # the RayCluster head serves the Jobs API
    proc = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), "--print-tag"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    version = cluster_cli.project_version()
    assert re.fullmatch(rf"{re.escape(version)}-([0-9a-f]{{7}}|nogit)(-dirty)?", proc.stdout.strip()), proc.stdout
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "fromscratch-runs", ".git"} <= set(ignored)
