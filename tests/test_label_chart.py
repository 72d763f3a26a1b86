"""The chart's labelling page: off by default; when enabled a Deployment + Service + Secret that
validate against the Kubernetes schemas and run `fromscratch label serve` as the CLI parses it."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from pipelines.cli import build_parser
from tests.test_cluster import find, render, validate_all

ON = {"label": {"enabled": True}}


@pytest.fixture(scope="module")
def label_chart() -> dict[str, Any]:
    return render(extra=ON)


def _container(objects: list[dict], name: str = "fromscratch-label") -> dict[str, Any]:
    (deployment,) = find(objects, "Deployment", name)
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_label_page_is_off_by_default():
    objects = render()["objects"]
    assert not find(objects, "Deployment", "fromscratch-label")
    assert not find(objects, "Service", "label") and not find(objects, "Secret", "fromscratch-label")


@pytest.mark.parametrize("values", [(), ("values-gpu.yaml",)], ids=["default", "gpu"])
def test_enabled_label_page_validates(values):
    objects = render(values, extra=ON)["objects"]
    validate_all(objects)
    assert find(objects, "Deployment", "fromscratch-label") and find(objects, "Service", "label")


def test_label_deployment_service_and_secret(label_chart):
    objects = label_chart["objects"]
    (service,) = find(objects, "Service", "label")
    (deployment,) = find(objects, "Deployment", "fromscratch-label")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"] == pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    container = _container(objects)
    assert container["ports"] == [{"name": "http", "containerPort": 8765}]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] == 60
    env = _env(container)
    assert env["FROMSCRATCH_LABEL_DB"] == (
        "postgresql://mlflow@fromscratch-postgres.fromscratch.svc.cluster.local:5432/labels"
    )
    assert env["FROMSCRATCH_LABEL_TOKEN"] == {"secretKeyRef": {"name": "fromscratch-label", "key": "FROMSCRATCH_LABEL_TOKEN"}}
    assert env["PGPASSWORD"] == {"secretKeyRef": {"name": "fromscratch-postgres", "key": "POSTGRES_PASSWORD"}}
    assert "MLFLOW_TRACKING_URI" in env and "AWS_ACCESS_KEY_ID" in env
    (secret,) = find(objects, "Secret", "fromscratch-label")
    assert set(secret["data"]) == {"FROMSCRATCH_LABEL_TOKEN", "FROMSCRATCH_LABEL_SECRET"}
    init = pod["spec"]["initContainers"][0]
    assert 'CREATE DATABASE "labels"' in init["command"][-1]
    # the command is one the CLI accepts, with the champion as the model
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert args.fn.__name__ == "cmd_serve" and args.model == "models:/fromscratch@champion"
    assert (args.host, args.port, args.preset, args.num_pairs) == ("0.0.0.0", 8765, "tiny", 50)


def test_label_values_existing_secret_db_url_and_two_models():
    objects = render(extra={"label": {
        "enabled": True, "existingSecret": "my-label", "dbUrl": "postgresql://u@db:5432/x", "model": "s3://b/ckpt-a",
        "modelB": "s3://b/ckpt-b", "prompts": "s3://b/prompts.jsonl", "cookieSecure": True,
        "set": ["tracking.uri=http://mlflow:5000"],
    }}, ).get("objects")
    validate_all(objects)
    assert not find(objects, "Secret", "fromscratch-label")
    container = _container(objects)
    env = _env(container)
    assert env["FROMSCRATCH_LABEL_TOKEN"]["secretKeyRef"]["name"] == "my-label"
    assert env["FROMSCRATCH_LABEL_DB"] == "postgresql://u@db:5432/x" and "PGPASSWORD" not in env
    (deployment,) = find(objects, "Deployment", "fromscratch-label")
    assert "initContainers" not in deployment["spec"]["template"]["spec"]
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert (args.model, args.model_b, args.prompts, args.cookie_secure) == ("s3://b/ckpt-a", "s3://b/ckpt-b", "s3://b/prompts.jsonl", True)
    assert args.set == ["tracking.uri=http://mlflow:5000"]
    # no model: serve what the database holds, no sampling flags
    objects = render(extra={"label": {"enabled": True, "model": ""}})["objects"]
    assert not any(a.startswith(("--model", "--temperature")) for a in _container(objects)["args"]), shlex.join(_container(objects)["args"])


def test_chart_with_the_label_page_lints_clean():
    import helm_python as helm

    from tests.test_cluster import CHART

    report = helm.lint(CHART, ON, strict=True)
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]
