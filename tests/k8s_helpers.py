"""What the cluster-facing tests share: the chart rendered by the real Helm engine
(helm-python-sdk), objects validated by kubernetes-validate against the Kubernetes schemas,
hand checks of KubeRay's custom resources (kubernetes-validate has no schema for them), and
the parser of the cluster commands.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from pipelines import cluster_cli

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "fromscratch"
# The oldest Kubernetes the chart declares and a recent one.
K8S_VERSIONS = ("1.29.0", "1.34.0")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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




def cluster_cli_parser() -> argparse.ArgumentParser:
    """The parser of the cluster commands (submit, upload, schedule, register) alone."""
    parser = argparse.ArgumentParser(prog="fromscratch")
    cluster_cli.add_cluster_commands(parser.add_subparsers(dest="command", required=True))
    return parser
