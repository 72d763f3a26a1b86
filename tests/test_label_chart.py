"""The chart's labelling page: off by default; when enabled a Deployment + Service + Secret that
validate against the Kubernetes schemas and run `fromscratch label serve` as the CLI parses it."""

from __future__ import annotations

import base64
import re
import shlex
from typing import Any

import pytest

from pipelines.cli import build_parser
from tests.k8s_helpers import find, render, validate_all

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
    assert env["FROMSCRATCH_LABEL_SECRET"] == {"secretKeyRef": {"name": "my-label", "key": "FROMSCRATCH_LABEL_SECRET"}}
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert (args.model, args.model_b, args.prompts, args.cookie_secure) == ("s3://b/ckpt-a", "s3://b/ckpt-b", "s3://b/prompts.jsonl", True)
    assert args.set == ["tracking.uri=http://mlflow:5000"]
    # no model: serve what the database holds, no sampling flags
    objects = render(extra={"label": {"enabled": True, "model": ""}})["objects"]
    assert not any(a.startswith(("--model", "--temperature")) for a in _container(objects)["args"]), shlex.join(_container(objects)["args"])


def test_chart_with_the_label_page_lints_clean():
    import helm_python as helm

    from tests.k8s_helpers import CHART

    report = helm.lint(CHART, ON, strict=True)
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def _secret_data(objects: list[dict]) -> dict[str, str]:
    (secret,) = find(objects, "Secret", "fromscratch-label")
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_label_signing_secret_is_random_required_and_cookies_are_secure(label_chart):
    """The chart makes a random signing key (not the token, not derived from it), the pod cannot
    start without it, and the session cookie is Secure unless turned off for plain HTTP."""
    objects = label_chart["objects"]
    data = _secret_data(objects)
    secret, token = data["FROMSCRATCH_LABEL_SECRET"], data["FROMSCRATCH_LABEL_TOKEN"]
    assert re.fullmatch(r"[A-Za-z0-9]{48}", secret) and token not in secret
    again = _secret_data(render(extra=ON)["objects"])  # no cluster to look up: a fresh one each time
    assert again["FROMSCRATCH_LABEL_SECRET"] != secret
    given = _secret_data(render(extra={"label": {"enabled": True, "token": "chosen-token-123"}})["objects"])
    assert given["FROMSCRATCH_LABEL_TOKEN"] == "chosen-token-123"
    assert "chosen-token-123" not in given["FROMSCRATCH_LABEL_SECRET"] and len(given["FROMSCRATCH_LABEL_SECRET"]) == 48
    container = _container(objects)
    env = _env(container)
    assert env["FROMSCRATCH_LABEL_SECRET"] == {"secretKeyRef": {"name": "fromscratch-label", "key": "FROMSCRATCH_LABEL_SECRET"}}
    assert "FORWARDED_ALLOW_IPS" not in env
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert args.cookie_secure is True
    assert (args.session_ttl_s, args.login_max_failures, args.login_window_s, args.login_lockout_s) == (43200, 10, 900, 900)
    # plain-HTTP local use turns Secure off; the limits and the proxy list are values too
    objects = render(extra={"label": {
        "enabled": True, "cookieSecure": False, "sessionSeconds": 3600, "forwardedAllowIps": "10.0.0.0/8",
        "login": {"maxFailures": 3, "windowSeconds": 60, "lockoutSeconds": 600},
    }})["objects"]
    validate_all(objects)
    container = _container(objects)
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert args.cookie_secure is False and "--cookie-secure" not in container["args"]
    assert (args.session_ttl_s, args.login_max_failures, args.login_window_s, args.login_lockout_s) == (3600, 3, 60, 600)
    assert _env(container)["FORWARDED_ALLOW_IPS"] == "10.0.0.0/8"
