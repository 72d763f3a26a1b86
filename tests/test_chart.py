"""The Helm chart, rendered by the real Helm engine (helm-python-sdk) with the default and the GPU
values; every rendered object validated against the Kubernetes schemas (tests/k8s_helpers.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from components.common.config import load_config
from pipelines import cluster_cli
from tests.k8s_helpers import CHART, cluster_cli_parser, _deep_merge, check_custom_resource, find, render, validate_all, validate_k8s


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


@pytest.mark.parametrize("values", [(), ("values-gpu.yaml",)], ids=["default", "gpu"])
def test_register_job_calls_the_cli_with_a_config_that_validates(values):
    """The chart's --set overrides must be keys the config accepts, or every install fails late."""
    args = _register_args(render(values)["objects"])
    parsed = cluster_cli_parser().parse_args(args)
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
