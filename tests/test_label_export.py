"""Votes → prompt/chosen/rejected JSONL, agreement between labelers, the MLflow dataset, and the
export as a preference data source (alone and mixed with generated pairs)."""

from __future__ import annotations

import hashlib
import json

import pytest

from components.common import storage
from components.data_prep.preference_loaders import load_preference_file
from components.data_prep.step import run_data_prep
from components.label.export import agreement, write_export
from components.label.repository import Repository
from pipelines.cli import main as cli_main

# (pair index, labeler, choice): pair 0 both A; pair 1 A vs B (level → left out); pair 2 B
# by two, tie by one (B wins); pair 3 tie only; pair 4 both bad only; pair 5 A by one person.
VOTES = [
    (0, "ada", "a"), (0, "bob", "a"),
    (1, "ada", "a"), (1, "bob", "b"),
    (2, "ada", "b"), (2, "bob", "b"), (2, "cy", "tie"),
    (3, "ada", "tie"),
    (4, "bob", "both_bad"),
    (5, "cy", "a"),
]


@pytest.fixture
def voted(tmp_path):
    repo = Repository.from_url(f"sqlite:///{tmp_path / 'labels.db'}")
    ids = repo.add_pairs(
        {
            "batch": "b", "position": i, "prompt_id": f"p{i}",
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question {i}?"}],
            "reply_a": f"good {i}", "reply_b": f"bad {i}", "model_a": "models:/fromscratch@champion",
            "model_b": "models:/fromscratch@champion", "sampling": {"temperature": 0.8, "mode": "two samples"},
        }
        for i in range(6)
    )
    for n, (i, who, choice) in enumerate(VOTES):
        repo.record_vote(ids[i], who, choice, "because" if who == "cy" else "", f"nonce-{n}")
    return repo, ids


def test_export_keeps_decisive_majorities_and_loads_as_preference_data(voted, tmp_path):
    repo, ids = voted
    out = tmp_path / "prefs.jsonl"
    result = write_export(repo, str(out))
    got = {r["pair_id"]: (r["chosen"], r["rejected"]) for r in result.records}
    assert got == {ids[0]: ("good 0", "bad 0"), ids[2]: ("bad 2", "good 2"), ids[5]: ("good 5", "bad 5")}
    assert result.counts == {
        "votes": 10, "pairs_voted": 6, "records": 3, "tie_votes": 2, "both_bad_votes": 1,
        "level_pairs": 1, "labelers": 3,
    }
    assert result.digest == hashlib.sha256(out.read_bytes()).hexdigest()
    rec = result.records[1]
    assert rec["votes"] == {"a": 0, "b": 2, "tie": 1, "both_bad": 0} and rec["labelers"] == ["ada", "bob", "cy"]
    assert rec["model_chosen"] == "models:/fromscratch@champion" and rec["sampling"]["temperature"] == 0.8
    pairs = load_preference_file(str(out))
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [
        (f"label-{ids[0]}", "good 0", "bad 0"), (f"label-{ids[2]}", "bad 2", "good 2"), (f"label-{ids[5]}", "good 5", "bad 5"),
    ]
    assert pairs[0].prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question 0?"}]
    each = write_export(repo, str(tmp_path / "each.jsonl"), mode="each")
    assert len(each.records) == 7  # every A/B vote: 2 + 2 + 2 (+ cy's tie left out) + 1
    assert len({r["id"] for r in each.records}) == 7
    assert json.loads((tmp_path / "prefs.agreement.json").read_text())["counts"]["records"] == 3


def test_agreement_between_labelers(voted):
    repo, _ = voted
    report = agreement(repo.votes())
    # shared pairs: 0 (ada=bob a), 1 (ada a, bob b), 2 (ada b, bob b, cy tie)
    assert report["pairs_with_several_labelers"] == 3
    assert report["comparisons"] == 5 and report["agreement"] == pytest.approx(2 / 5)
    assert report["decisive_comparisons"] == 3 and report["decisive_agreement"] == pytest.approx(2 / 3)
    duos = {tuple(d["labelers"]): d for d in report["by_labeler_pair"]}
    ada_bob = duos[("ada", "bob")]
    assert ada_bob["shared_pairs"] == 3 and ada_bob["agreement"] == pytest.approx(2 / 3)
    # ada: a, a, b; bob: a, b, b → p_o 2/3, p_e (2·1 + 1·2)/9 = 4/9 → kappa (2/3-4/9)/(5/9) = 0.4
    assert ada_bob["cohen_kappa"] == pytest.approx(0.4)
    assert duos[("ada", "cy")]["agreement"] == 0.0 and duos[("ada", "cy")]["shared_pairs"] == 1


def test_cli_export(voted, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    code = cli_main([
        "label", "export", "--db", db, "--out", str(out),
        "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "--set", f"storage.root={tmp_path / 'runs'}",
    ])
    printed = capsys.readouterr().out
    assert code == 0 and "exported 3 pairs" in printed and "agreement: 40.0% over 5 comparisons" in printed
    assert "dataset 'label-preferences' logged to run" in printed
    assert len(storage.read_jsonl(str(out))) == 3
    # logged to MLflow: a run with the file as a dataset input, digest = the file's SHA-256
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("fromscratch").experiment_id], "tags.`fromscratch.stage` = 'label-export'"
    )
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "label-preferences"
    assert ds.dataset.digest == hashlib.sha256(out.read_bytes()).hexdigest()[:32]
    assert str(out) in ds.dataset.source
    assert run.data.metrics["records"] == 3 and run.data.metrics["agreement"] == pytest.approx(0.4)
    assert run.info.status == "FINISHED" and run.info.run_id in printed


def test_preference_data_prep_takes_the_export_alone_and_mixed(voted, tmp_path, make_config):
    repo, _ = voted
    # enough labelled pairs for a train and a held-out split
    more = repo.add_pairs(
        {"batch": "c", "position": i, "prompt_id": f"q{i}", "prompt": [{"role": "user", "content": f"Q{i}?"}],
         "reply_a": f"yes {i}", "reply_b": f"no {i}", "model_a": "m", "model_b": "m", "sampling": {}}
        for i in range(17)
    )
    for i, pid in enumerate(more):
        repo.record_vote(pid, "dee", "a" if i % 3 else "b", "", f"more-{i}")
    out = tmp_path / "prefs.jsonl"
    labelled = {r["id"]: (r["chosen"], r["rejected"]) for r in write_export(repo, str(out)).records}
    assert len(labelled) == 20

    def pairs_of(manifest):
        rows = [r for split in ("train", "heldout") for r in storage.read_jsonl(manifest["preference"][split]["uri"])]
        return {r["id"]: (r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows}

    alone = run_data_prep(make_config(f"data.preferences.sources=['{out}']"), "alone")
    assert pairs_of(alone) == labelled
    assert alone["preference"]["heldout"]["num_examples"] == 1  # 5% of 20
    assert alone["preference"]["source"] == str(out)

    mixed = run_data_prep(
        make_config(f"data.preferences.sources=['{out}']", "data.preferences.mix_generated=true",
                    "data.preferences.num_train=60", "data.preferences.num_heldout=10"),
        "mixed",
    )
    got = pairs_of(mixed)
    assert {k: v for k, v in got.items() if k in labelled} == labelled
    generated = {k for k in got if k not in labelled}
    assert len(generated) == 70
    assert mixed["preference"]["train"]["num_examples"] == 19 + 60
    assert mixed["preference"]["heldout"]["num_examples"] == 1 + 10
    assert mixed["preference"]["source"].startswith(f"{out} + generated pairs")
