"""Pairs for the page: sampled from a tiny checkpoint (a folder, or a registry alias resolved
through MLflow), on a prompt file or a run's labelling pool (training prompts, none held out),
stored once per batch."""

from __future__ import annotations

import json

import pytest

from components.common import storage
from components.common.config import load_config
from components.common.errors import DataError
from components.common.modeling import random_init_model
from components.data_prep.tokenizer import train_tokenizer
from components.label.pairs import resolve_model
from components.label.prompts import load_prompts
from components.label.repository import Repository
from pipelines.cli import build_parser
from pipelines.cli import main as cli_main

DOCS = ["Anna lives in Rome. Bob has a red car. Where does Anna live? Anna lives in Rome."] * 40
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
        "model.num_kv_heads=2", "model.max_seq_len=128"]


def tiny_checkpoint(path, seed: int) -> str:
    tok = train_tokenizer(DOCS, 300, 1)
    model = random_init_model(load_config("tiny", TINY).model, tok, seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    storage.mark_complete(str(path))
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return tiny_checkpoint(root / "a", 0), tiny_checkpoint(root / "b", 1)


def pairs_in(db: str):
    repo = Repository.from_url(db)
    with repo.session() as s:
        from sqlalchemy import select

        from components.label.db import Pair

        return list(s.scalars(select(Pair).order_by(Pair.id)))


def test_issue_spelling_parses():
    args = build_parser().parse_args(["label", "--model", "models:/fromscratch@champion"])
    assert args.fn.__name__ == "cmd_serve" and args.model == "models:/fromscratch@champion"
    args = build_parser().parse_args(["label", "--model", "x", "serve", "--port", "9000"])
    assert args.fn.__name__ == "cmd_serve" and args.model == "x" and args.port == 9000
    args = build_parser().parse_args(["label", "export", "--out", "p.jsonl"])
    assert args.fn.__name__ == "cmd_export" and args.mode == "majority"


def test_two_checkpoints_on_a_prompt_file(checkpoints, tmp_path, capsys):
    a, b = checkpoints
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Where does person {i} live?"}) + "\n" for i in range(5))
        + json.dumps({"messages": [{"role": "user", "content": "Hi <b>there</b>"}, {"role": "assistant", "content": "x"}]}) + "\n"
    )
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    argv = ["label", "--model", a, "--model-b", b, "--prompts", str(prompts), "--max-new-tokens", "8",
            "--db", db, "--no-serve", "--set", f"storage.root={tmp_path / 'runs'}"]
    assert cli_main(argv) == 0
    pairs = pairs_in(db)
    assert 1 <= len(pairs) <= 6 and "pairs:" in capsys.readouterr().out
    assert all({p.model_a, p.model_b} == {a, b} and p.reply_a != p.reply_b for p in pairs)
    assert all(json.loads(p.sampling)["mode"] == "two checkpoints" for p in pairs)
    assert json.loads(pairs[-1].prompt) == [{"role": "user", "content": "Hi <b>there</b>"}]
    # the same arguments again: the stored batch is reused, nothing sampled twice
    assert cli_main(argv) == 0
    assert len(pairs_in(db)) == len(pairs)


def test_registry_alias_and_the_runs_labelling_pool(checkpoints, tmp_path, make_config):
    from components.common.tracking import Tracker
    from components.data_prep.step import run_data_prep
    from components.evaluate.promotion import register

    a, _ = checkpoints
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(f"tracking.uri={tracking}", "tracking.log_model_artifacts=false")
    manifest = run_data_prep(cfg, "lab")
    tracker = Tracker(cfg)
    stage_run = tracker.stage_run(tracker.pipeline_run("lab"), "lab", "rlvr")
    model_id = tracker.log_checkpoint(stage_run, "rlvr", a, None, None, [])
    version = register(tracker.client, "fromscratch", model_id, "lab", "rlvr", {})
    tracker.client.set_registered_model_alias("fromscratch", "champion", version.version)

    resolved = resolve_model("models:/fromscratch@champion", tracking)
    assert (resolved.checkpoint_uri, resolved.run_id) == (a, "lab")
    assert resolve_model(f"models:/{model_id}", tracking).checkpoint_uri == a
    assert resolve_model("models:/fromscratch/1", tracking).checkpoint_uri == a
    with pytest.raises(DataError, match="not found in the MLflow registry"):
        resolve_model("models:/fromscratch@nobody", tracking)
    with pytest.raises(DataError, match="no such checkpoint"):
        resolve_model(str(tmp_path / "missing"), tracking)

    db = f"sqlite:///{tmp_path / 'labels.db'}"
    code = cli_main(["label", "--model", "models:/fromscratch@champion", "--num-pairs", "4", "--max-new-tokens", "8",
                     "--db", db, "--no-serve", "--set", f"storage.root={cfg.storage.root}", "--set", f"tracking.uri={tracking}"])
    assert code == 0
    from components.data_prep.votes import label_prompt_pool, manifest_heldout_keys, prompt_key

    pool = label_prompt_pool(manifest)[:4]
    pairs = pairs_in(db)
    assert pairs and {p.prompt_id for p in pairs} <= {str(r["id"]) for r in pool}
    by_id = {str(r["id"]): r["prompt"] for r in pool}
    assert all(json.loads(p.prompt) == by_id[p.prompt_id] for p in pairs)
    # no pair is on a prompt any evaluation suite holds out: votes on them cannot leak
    held = manifest_heldout_keys(manifest)
    assert held and not any(prompt_key(json.loads(p.prompt)) in held for p in pairs)
    assert all(p.model_a == p.model_b == "models:/fromscratch@champion" and p.checkpoint_a == a for p in pairs)
    sampling = json.loads(pairs[0].sampling)
    assert sampling == {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 8, "seed": 0, "mode": "two samples"}


def test_bad_prompt_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected a 'prompt'"):
        load_prompts(str(bad))
    txt = tmp_path / "p.txt"
    txt.write_text("First?\n\nSecond?\n")
    assert [p.messages[0]["content"] for p in load_prompts(str(txt))] == ["First?", "Second?"]
