"""Runs that cannot hurt what is around them (issue 24, items 1-5).

Every CLI test here stops before the pipeline would start: ``build_pipeline`` and the Ray
start are replaced by a stand-in that raises ``Started``, so "refused before anything starts"
means exit 2 without ``Started``, and "accepted" means ``Started`` was raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.common import storage
from components.common.config import load_config
from pipelines import cli

REPO = Path(__file__).resolve().parents[1]


class Started(Exception):
    """The CLI got as far as building the pipeline / starting Ray."""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def no_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise Started("the pipeline would start here")

    monkeypatch.setattr("pipelines.pipeline.build_pipeline", refuse)
    monkeypatch.setattr(cli, "_start_ray", refuse)


def _run(root: Path, *argv: str) -> int:
    return cli.main(["run", "--set", f"storage.root={root}", *argv])


def _sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """A storage root inside a sandbox whose ``data/`` folder holds a file the run must not touch."""
    sandbox = tmp_path / "sandbox"
    keep = sandbox / "data" / "keep.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("precious")
    return sandbox / "root", keep


# ---- 1. run ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--run-id", "--new-run-id"])
@pytest.mark.parametrize("bad", ["..", "../x", "a/../..", "x/y", ".hidden", "a" * 129])
def test_bad_run_id_is_refused_before_anything(tmp_path, no_start, capsys, flag, bad):
    root, keep = _sandbox(tmp_path)
    assert _run(root, flag, bad) == 2
    err = capsys.readouterr().err
    assert "invalid run id" in err and "nothing was started" in err
    assert keep.read_text() == "precious"
    # nothing written anywhere: not the root, not beside it (data/, checkpoints/, kfp/)
    assert sorted(p.name for p in root.parent.iterdir()) == ["data"]
    assert [p.name for p in keep.parent.iterdir()] == ["keep.txt"]


def test_dotdot_run_id_exits_2_from_the_real_cli(tmp_path):
    root, keep = _sandbox(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--run-id", "..", "--set", f"storage.root={root}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "invalid run id '..'" in proc.stderr and "Traceback" not in proc.stderr
    assert keep.read_text() == "precious"
    assert sorted(p.name for p in root.parent.iterdir()) == ["data"]


def test_storage_remove_never_leaves_the_folder_it_is_given(tmp_path):
    root, keep = _sandbox(tmp_path)
    run = root / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "old.bin").write_text("x")
    (run / "link").symlink_to(keep.parent, target_is_directory=True)
    with pytest.raises(storage.StorageError, match=r"'\.\.' segment"):
        storage.remove(storage.join(str(root), "..", "data"))
    with pytest.raises(storage.StorageError, match="not inside"):
        storage.remove(str(keep.parent), inside=str(run))
    with pytest.raises(storage.StorageError, match="not inside"):
        storage.remove(str(run / "link"), inside=str(run))  # a symlink out of the run
    with pytest.raises(storage.StorageError, match="not inside"):
        storage.remove(str(run), inside=str(run))  # the run itself is not "inside" it
    assert keep.read_text() == "precious"
    storage.remove(str(run / "data"), inside=str(run))
    assert not (run / "data").exists()
    assert storage.is_inside("s3://b/root/run/data", "s3://b/root/run")
    assert not storage.is_inside("s3://b/root/run/../x", "s3://b/root/run")
    assert not storage.is_inside("s3://b/root/other", "s3://b/root/run")


def test_data_prep_clean_up_cannot_delete_outside_the_run(tmp_path, monkeypatch, make_config):
    """Even if the data folder's URI pointed outside the run, data prep's clean-up refuses."""
    from components.common.stage import StageContext
    from components.data_prep import step

    root, keep = _sandbox(tmp_path)
    run_uri = str(root / "run")
    monkeypatch.setattr(step, "data_uri", lambda run: storage.join(run, "..", "..", "data"))
    cfg = make_config(
        f"storage.root={root}", "data.generated.num_train_docs=40", "data.generated.num_heldout_docs=10",
        "data.instructions.num_train=30", "data.instructions.num_heldout=10", "data.preferences.num_train=10",
        "data.preferences.num_heldout=5", "data.problems.num_train=20", "data.problems.num_heldout=5",
    )
    no_tracker = SimpleNamespace(client=None)  # random init: data prep asks MLflow nothing
    ctx = StageContext(cfg, "run", "data_prep", run_uri, no_tracker, "", "")  # type: ignore[arg-type]
    with pytest.raises(storage.StorageError, match="refusing to delete"):
        step.prepare(ctx)
    assert keep.read_text() == "precious"


# ---- 2. unknown run ids, new ones ------------------------------------------------------------


def test_resuming_an_unknown_run_id_is_refused(tmp_path, no_start, capsys):
    root = tmp_path / "runs"
    assert _run(root, "--run-id", "typo-123") == 2
    err = capsys.readouterr().err
    assert "no run 'typo-123'" in err and str(root) in err and "--new-run-id typo-123" in err
    assert not (root / "typo-123").exists()


def test_new_run_id_starts_a_run_and_records_its_config(tmp_path, no_start, capsys):
    from components.common import run_record

    root = tmp_path / "runs"
    with pytest.raises(Started):
        _run(root, "--new-run-id", "mine", "--set", "seed=7")
    record = json.loads((root / "mine" / "config.json").read_text())
    cfg = load_config("tiny", [f"storage.root={root}", "seed=7"])
    assert record["config"]["seed"] == 7 and record["run_id"] == "mine"
    assert record["digest"] == run_record.digest(cfg) == run_record.digest(record["config"])
    # the same id again is not a new run
    assert _run(root, "--new-run-id", "mine") == 2
    assert "a run 'mine' already exists" in capsys.readouterr().err
    # and the id that exists resumes
    with pytest.raises(Started):
        _run(root, "--run-id", "mine", "--set", "seed=7")


def test_rerun_changed_needs_a_resume(tmp_path, no_start, capsys):
    assert _run(tmp_path / "runs", "--rerun-changed") == 2
    assert "--rerun-changed only applies to a resume" in capsys.readouterr().err


def test_run_help_documents_the_run_id_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--new-run-id ID" in out and "--rerun-changed" in out and "an error if there is none" in out


# ---- 3. resume compares the configuration ----------------------------------------------------


def _finish(run: Path, *parts: str) -> None:
    for part in parts:
        (run / part).mkdir(parents=True, exist_ok=True)
        (run / part / "_COMPLETE").write_text("{}")


def test_changed_config_resume_is_refused_with_its_keys(tmp_path, no_start, capsys):
    root = tmp_path / "runs"
    # a run whose data_prep and pretrain finished, with the configuration it started with
    _finish(root / "r1", "data", "checkpoints/init", "checkpoints/pretrain")
    started_with = json.loads(load_config("tiny", [f"storage.root={root}"]).to_json())
    (root / "r1" / "config.json").write_text(json.dumps({"run_id": "r1", "config": started_with}))
    before = (root / "r1" / "config.json").read_text()
    code = _run(root, "--run-id", "r1", "--set", "data.generated.num_train_docs=999", "--set", "pretrain.lr=0.01",
                "--set", "pretrain.log_every=3", "--set", "kubernetes.namespace=team-b")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "data.generated.num_train_docs: 6000 -> 999" in err
    assert "pretrain.lr: 0.003 -> 0.01" in err
    assert "log_every" not in err and "kubernetes" not in err  # may differ: not listed
    assert "--rerun-changed" in err
    assert (root / "r1" / "config.json").read_text() == before  # the record is untouched
    assert (root / "r1" / "data" / "_COMPLETE").exists()


def test_settings_that_cannot_change_results_may_differ(tmp_path, no_start):
    root = tmp_path / "runs"
    with pytest.raises(Started):
        _run(root, "--new-run-id", "r1")
    _finish(root / "r1", "data", "checkpoints/pretrain", "checkpoints/sft", "eval")
    with pytest.raises(Started):
        _run(root, "--run-id", "r1", "--set", "pretrain.log_every=3", "--set", "sft.checkpoint_every=7",
             "--set", "ray.max_failures=1", "--set", "pipeline.base_image=other:1", "--set", "tracking.experiment=x")


def test_changes_to_stages_not_yet_started_are_accepted_and_recorded(tmp_path, no_start):
    root = tmp_path / "runs"
    with pytest.raises(Started):
        _run(root, "--new-run-id", "r1")
    _finish(root / "r1", "data", "checkpoints/init", "checkpoints/pretrain")
    first = json.loads((root / "r1" / "config.json").read_text())["digest"]
    with pytest.raises(Started):
        _run(root, "--run-id", "r1", "--set", "rlvr.steps=5", "--set", "evaluate.pass_k=2")
    record = json.loads((root / "r1" / "config.json").read_text())
    assert record["config"]["rlvr"]["steps"] == 5
    assert record["history"][-1]["digest"] == first and record["digest"] != first
    # a later resume compares with what the remaining stages now run with
    (root / "r1" / "checkpoints" / "rlvr").mkdir(parents=True)
    assert _run(root, "--run-id", "r1") == 2


def test_rerun_changed_removes_the_changed_stages_and_later_ones(tmp_path, no_start, capsys):
    root = tmp_path / "runs"
    with pytest.raises(Started):
        _run(root, "--new-run-id", "r1")
    run = root / "r1"
    _finish(run, "data", "checkpoints/init", "checkpoints/pretrain", "checkpoints/sft", "ray/sft", "eval")
    outside = tmp_path / "beside.txt"
    outside.write_text("keep")
    from components.common.tracking import Tracker

    tracker = Tracker(load_config("tiny", [f"storage.root={root}"]))
    parent = tracker.pipeline_run("r1")
    old_sft, old_pretrain = tracker.stage_run(parent, "r1", "sft"), tracker.stage_run(parent, "r1", "pretrain")
    with pytest.raises(Started):
        _run(root, "--run-id", "r1", "--rerun-changed", "--set", "sft.lr=0.002")
    # the re-run sft opens a fresh MLflow run (the old one keeps its parameters); pretrain's stays
    assert tracker.stage_run(parent, "r1", "sft") != old_sft
    assert tracker.client.get_run(old_sft).data.tags["fromscratch.stage"] == "sft.replaced"
    assert tracker.stage_run(parent, "r1", "pretrain") == old_pretrain
    assert "re-running sft, evaluate" in capsys.readouterr().out
    assert (run / "data" / "_COMPLETE").exists() and (run / "checkpoints" / "pretrain" / "_COMPLETE").exists()
    assert not (run / "checkpoints" / "sft").exists() and not (run / "ray" / "sft").exists()
    assert not (run / "eval").exists()
    assert outside.read_text() == "keep"
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["sft"]["lr"] == 0.002 and record["rerun_on_resume"] == ["sft", "evaluate"]


def test_a_run_from_before_records_is_resumed_and_recorded(tmp_path, no_start):
    root = tmp_path / "runs"
    _finish(root / "old", "data")
    with pytest.raises(Started):
        _run(root, "--run-id", "old", "--set", "seed=9")
    assert json.loads((root / "old" / "config.json").read_text())["config"]["seed"] == 9


def test_every_setting_is_classified():
    """Each may-differ pattern names real settings (a typo would silently allow nothing), and
    a few representative keys land where they should."""
    from components.common import run_record

    keys = run_record.flatten(json.loads(load_config("tiny").to_json()))
    for pattern in run_record.MAY_DIFFER:
        assert any(run_record.fnmatch.fnmatchcase(k, pattern) for k in keys), pattern
    assert run_record.first_stage("model.max_seq_len") == "data_prep"
    assert run_record.first_stage("model.hidden_size") == "pretrain"
    assert run_record.first_stage("ray.num_workers") == "pretrain"
    assert run_record.first_stage("preference.ppo.kl_coef") == "preference"
    assert run_record.first_stage("promotion.gate") == "evaluate"
    assert run_record.first_stage("something.new") == "data_prep"
    assert run_record.may_differ("kubernetes.training.gpus") and not run_record.may_differ("ray.use_gpu")


# ---- 4. MLflow artifacts under the storage root ----------------------------------------------


@pytest.mark.parametrize("explicit_tracking_uri", [False, True])
def test_mlflow_artifacts_land_under_the_storage_root_not_cwd(tmp_path, monkeypatch, explicit_tracking_uri):
    import mlflow

    from components.common.tracking import Tracker, version_model_id

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = tmp_path / "root"
    overrides = [f"storage.root={root}"]
    if explicit_tracking_uri:
        overrides.append(f"tracking.uri=sqlite:///{tmp_path / 'db' / 'mlflow.db'}")
        (tmp_path / "db").mkdir()
    global_uri = mlflow.get_tracking_uri()
    tracker = Tracker(load_config("tiny", overrides))
    parent = tracker.pipeline_run("r1")
    tracker.log_text(parent, "hello", "notes/hello.txt")
    found = list(root.rglob("hello.txt"))
    assert found and (root / "mlartifacts") in found[0].parents, list(tmp_path.rglob("hello.txt"))
    assert "MLFLOW_TRACKING_URI" not in os.environ  # no process-wide side effect
    assert mlflow.get_tracking_uri() == global_uri
    # registering a LoggedModel (what promotion does) needs no process-wide URI either
    model_id = tracker.log_checkpoint(parent, "rlvr", "file:///nowhere", None, None, [])
    tracker.client.create_registered_model("m")
    version = tracker.client.create_model_version("m", source=f"models:/{model_id}", model_id=model_id)
    assert version_model_id(version) == model_id
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() == global_uri
    assert not (cwd / "mlruns").exists() and not any(cwd.iterdir())


# ---- 5. preflight checks every input ---------------------------------------------------------


def test_missing_preference_file_is_refused_by_preflight(tmp_path, no_start, capsys):
    missing = tmp_path / "no-such-prefs.jsonl"
    assert _run(tmp_path / "runs", "--set", f"data.preferences.sources=['{missing}']") == 2
    err = capsys.readouterr().err
    assert "preflight failed, nothing was started" in err
    assert f"inputs: data.preferences.sources[0] {missing}: not found" in err


def test_preflight_names_every_missing_input_at_once(tmp_path, make_config):
    from components.common.preflight import PreflightError, check_inputs

    present = tmp_path / "corpus.txt"
    present.write_text("a\nb\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = make_config(
        f"data.sources=[{{uri: '{present}'}}, {{uri: '{tmp_path / 'gone.txt'}'}}]",
        f"data.instructions.sources=['{tmp_path / 'chat' / '*.jsonl'}']",
        f"data.preferences.sources=['{empty}']",
        f"data.problems.sources=['{tmp_path / 'problems.jsonl'}']",
        f"pretrain.init_from={tmp_path / 'ckpt'}",
    )
    with pytest.raises(PreflightError) as err:
        check_inputs(cfg)
    assert err.value.problems == [
        f"data.sources[1].uri {tmp_path / 'gone.txt'}: not found",
        f"data.instructions.sources[0] {tmp_path / 'chat' / '*.jsonl'}: no files match this pattern",
        f"data.preferences.sources[0] {empty}: an empty folder",
        f"data.problems.sources[0] {tmp_path / 'problems.jsonl'}: not found",
        f"pretrain.init_from {tmp_path / 'ckpt'}: not found",
    ]
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_text("half-written")
    with pytest.raises(PreflightError, match="no _COMPLETE marker"):
        check_inputs(make_config(f"pretrain.init_from={tmp_path / 'ckpt'}"))
    assert "generated data" in check_inputs(make_config())
    assert "1 input path(s) found" in check_inputs(make_config(f"data.sources=[{{uri: '{present}'}}]"))


def test_report_with_a_dotdot_run_id_writes_nothing_outside(tmp_path, capsys):
    root, keep = _sandbox(tmp_path)
    root.mkdir()
    assert cli.main(["report", "..", "--set", f"storage.root={root}"]) == 2
    assert "invalid run id '..'" in capsys.readouterr().err
    assert sorted(p.name for p in root.parent.iterdir()) == ["data", "root"]
    assert not any(root.iterdir())


def test_stack_run_checks_its_run_id_before_the_stack_starts(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise Started("the stack would start here")

    monkeypatch.setattr("pipelines.stack_cli.LocalStack", refuse)
    assert cli.main(["stack", "run", "--run-id", "../x"]) == 2
    assert "invalid run id '../x'" in capsys.readouterr().err
    # a stack run starts a new run: the inner `fromscratch run` gets --new-run-id
    from pipelines.stack_cli import pipeline_command

    info = SimpleNamespace(overrides=lambda: [], ray_address="127.0.0.1:1")
    cmd = pipeline_command(info, "r1", "tiny", [])
    assert cmd[cmd.index("--new-run-id") + 1] == "r1" and "--run-id" not in cmd
