"""The chart's wiring of votes into the recurring run (issue #23): with pipeline.votes.enabled
the chart makes a Secret in the pipeline's namespace holding the labelling page's database URL
and password, and the registration Job schedules the pipeline with ``--votes-secret``, so every
task pod reads them and data prep snapshots the votes through ``env:``. Rendered by Helm and
validated against the Kubernetes schemas, like the rest of the chart."""

from __future__ import annotations

import base64

import pytest

from pipelines import cluster_cli
from tests.k8s_helpers import cluster_cli_parser, find, render, validate_all

VOTES = {
    "label": {"enabled": True},
    "pipeline": {"schedule": {"enabled": True, "fromChampion": True}, "votes": {"enabled": True, "mode": "weighted", "weight": 3}},
}


def _register_args(objects: list[dict]) -> list[str]:
    (job,) = find(objects, "Job")
    return job["spec"]["template"]["spec"]["containers"][0]["args"]


def _data(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_votes_are_off_by_default():
    objects = render()["objects"]
    assert not find(objects, "Secret", "fromscratch-label-db")
    assert not any(a.startswith("--votes-secret") for a in _register_args(objects))


def test_recurring_run_reads_the_label_database_through_a_secret(tmp_path):
    objects = render(extra=VOTES)["objects"]
    validate_all(objects)
    (secret,) = find(objects, "Secret", "fromscratch-label-db", namespace="kubeflow")
    data = _data(secret)
    assert data["FROMSCRATCH_LABEL_DB"] == "postgresql://mlflow@fromscratch-postgres.fromscratch.svc.cluster.local:5432/labels"
    (pg,) = find(objects, "Secret", "fromscratch-postgres")
    assert data["PGPASSWORD"] == _data(pg)["POSTGRES_PASSWORD"] and data["PGPASSWORD"]

    args = _register_args(objects)
    parsed = cluster_cli_parser().parse_args(args)
    assert parsed.command == "schedule" and parsed.from_champion and parsed.votes_secret == "fromscratch-label-db"
    cfg = cluster_cli._config(parsed)
    votes = cfg.data.preferences.votes
    assert votes.source == "env:FROMSCRATCH_LABEL_DB" and votes.mode == "weighted" and votes.weight == 3
    # the URL itself is in no argument and no compiled setting, only in the Secret
    assert not any("postgresql://" in a for a in args)
    (extra,) = [s for s in cfg.kubernetes.extra_secrets if s.name == "fromscratch-label-db"]
    assert extra.keys == {"FROMSCRATCH_LABEL_DB": "FROMSCRATCH_LABEL_DB", "PGPASSWORD": "PGPASSWORD"}

    from pipelines import compiled as compiled_ir

    pipe = compiled_ir.compile_pipeline(cfg, tmp_path / "pipeline.yaml")
    prep = pipe.tasks["data-prep"]
    secrets = {s["secretName"]: {m["secretKey"]: m["envVar"] for m in s["keyToEnv"]} for s in prep.kubernetes["secretAsEnv"]}
    assert secrets["fromscratch-label-db"] == {"FROMSCRATCH_LABEL_DB": "FROMSCRATCH_LABEL_DB", "PGPASSWORD": "PGPASSWORD"}
    assert "postgresql://" not in (tmp_path / "pipeline.yaml").read_text()


def test_existing_secret_and_external_database():
    objects = render(extra={**VOTES, "pipeline": {"votes": {"enabled": True, "existingSecret": "my-votes"}}})["objects"]
    assert not find(objects, "Secret", "fromscratch-label-db")
    assert "--votes-secret=my-votes" in _register_args(objects)
    objects = render(extra={"label": {"dbUrl": "postgresql://u:pw@db:5432/votes"},
                            "pipeline": {"votes": {"enabled": True}}})["objects"]
    validate_all(objects)
    (secret,) = find(objects, "Secret", "fromscratch-label-db")
    assert _data(secret) == {"FROMSCRATCH_LABEL_DB": "postgresql://u:pw@db:5432/votes", "PGPASSWORD": ""}


def test_votes_without_a_label_database_are_refused():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="pipeline.votes.enabled needs"):
        render(extra={"pipeline": {"votes": {"enabled": True}}})
