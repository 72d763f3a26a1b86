"""``submit``, ``upload`` and ``schedule`` run the real ``kfp.Client`` against
tests/kfp_api_server.py, a local HTTP server answering the part of the KFP REST API they call;
the tests check the requests it received."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from components.common.config import load_config
from pipelines import cluster_cli
from pipelines import compiled as compiled_ir
from tests.k8s_helpers import cluster_cli_parser
from tests.kfp_api_server import KfpApiServer


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

    args = cluster_cli_parser().parse_args(list(argv))
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
    compiled = compiled_ir.read_compiled(tmp_path / "p.yaml")
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
