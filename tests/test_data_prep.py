"""data_prep end to end on generated and user corpora, and its errors."""

from __future__ import annotations

import json
import re

import pytest

from components.common import storage
from components.common.errors import DataError
from components.common.modeling import load_tokenizer
from components.common.tracking import Tracker
from components.data_prep.problems import from_record
from components.data_prep.shards import read_split
from components.data_prep.step import dataset_refs, load_manifest, run_data_prep


def test_generated_corpus_prepares_tokenizer_and_shards(make_config):
    cfg = make_config()
    manifest = run_data_prep(cfg, "r1")
    data = manifest["data_uri"]
    assert storage.is_complete(data)
    train = read_split(manifest, "train")
    assert train.shape[1] == cfg.model.max_seq_len and train.shape[0] > 10
    tok = load_tokenizer(manifest["tokenizer_uri"])
    assert tok.eos_token == "<|eos|>" and tok.pad_token_id is not None
    assert int(train.max()) < len(tok)
    text = tok.decode(train[0][:40].tolist())
    assert any(word in text for word in ("lives", "is", "has")), text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], tokenize=False
    )
    assert chat == "<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|eos|>\n"
    # Datasets are logged as MLflow inputs of the data_prep run, with digests.
    tracker = Tracker(cfg)
    run = tracker.client.get_run(tracker.stage_run(manifest["mlflow_parent_run_id"], "r1", "data_prep"))
    names = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert names["pretrain-train"] == manifest["pretrain"]["train"]["digest"][:32]
    assert names["rlvr-heldout"] == manifest["rlvr"]["heldout"]["digest"][:32]


def test_rlvr_problem_splits_and_their_share_of_sft(make_config):
    cfg = make_config("data.problems.num_train=200", "data.problems.num_heldout=30", "data.instructions.num_train=300")
    manifest = run_data_prep(cfg, "rl")
    rlvr = manifest["rlvr"]
    assert rlvr["source"].startswith("generated problems")
    assert (rlvr["train"]["num_examples"], rlvr["heldout"]["num_examples"]) == (200, 30)
    splits = {split: [from_record(r) for r in storage.read_jsonl(rlvr[split]["uri"])] for split in ("train", "heldout")}
    assert len(splits["train"]) == 200 and len(splits["heldout"]) == 30
    assert not {p.question for p in splits["train"]} & {p.question for p in splits["heldout"]}
    refs = {r.name: r.context for r in dataset_refs(manifest, ("rlvr",))}
    assert refs == {"rlvr-train": "training", "rlvr-heldout": "evaluation", "rlvr-instructions": "training"}
    assert {r.name for r in dataset_refs(manifest)} >= {"pretrain-train", "sft-heldout", "preference-train", "rlvr-heldout"}
    # SFT keeps its size; sft_share of it (0.15 of 300) is worked training problems, none held out
    sft_train = storage.read_jsonl(manifest["sft"]["train"]["uri"])
    problem_families = {"word_problem", "largest", "smallest"}
    worked = [r for r in sft_train if r["family"] in problem_families]
    assert len(sft_train) == 300 and len(worked) == manifest["sft"]["num_problem_examples"] == 45
    held_questions = {p.question for p in splits["heldout"]}
    assert not {r["messages"][0]["content"] for r in worked} & held_questions
    assert all(re.search(r"\. The answer is \d+\.$", r["answer"]) for r in worked), worked[:3]
    # a share of the instruction demonstrations is flawed; held-out and preference replies are ideal
    flawed = manifest["sft"]["flawed_demonstrations"]
    assert sum(flawed.values()) == round(cfg.data.instructions.flawed_share * (300 - 45))
    held = storage.read_jsonl(manifest["sft"]["heldout"]["uri"])
    pairs = storage.read_jsonl(manifest["preference"]["train"]["uri"])
    styles = ("I hope that this helps.", "Thank you for the question.", "That is a silly question.", "Ask someone else.")
    assert any(any(s in r["answer"] for s in styles) for r in sft_train)
    assert not any(any(s in r["answer"] for s in styles) for r in held)
    assert not any(any(s in p["chosen"][0]["content"] for s in styles) for p in pairs)
    # RLVR's instruction rows carry the ideal replies of the training prompts
    rows = storage.read_jsonl(rlvr["instructions"]["uri"])
    assert len(rows) == 300 - 45 and not any(any(s in r["reference"] for s in styles) for r in rows)
    assert {r["prompt"][-1]["content"] for r in rows} <= {r["messages"][-2]["content"] for r in sft_train}


def test_user_problems_are_split_and_not_mixed_into_sft(make_config, tmp_path):
    path = tmp_path / "problems.jsonl"
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = {2 * i}.\n#### {2 * i}"} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = run_data_prep(make_config(f"data.problems.sources=['{path}']", "data.instructions.num_train=300"), "up")
    rlvr = manifest["rlvr"]
    assert rlvr["source"] == str(path)
    assert rlvr["train"]["num_examples"] + rlvr["heldout"]["num_examples"] == 40
    assert rlvr["heldout"]["num_examples"] == 4  # heldout_fraction 0.1
    assert manifest["sft"]["num_problem_examples"] == 0 and manifest["sft"]["train"]["num_examples"] == 300


def test_same_seed_same_data_other_seed_other_data(make_config):
    a = run_data_prep(make_config(), "a")["pretrain"]["train"]["digest"]
    b = run_data_prep(make_config(), "b")["pretrain"]["train"]["digest"]
    c = run_data_prep(make_config("seed=99"), "c")["pretrain"]["train"]["digest"]
    assert a == b != c


def test_rerun_reuses_finished_output(make_config):
    cfg = make_config()
    first = run_data_prep(cfg, "r1")
    marker = storage.join(first["data_uri"], storage.COMPLETE_MARKER)
    before = storage.filesystem(marker)[0].modified(marker)
    second = run_data_prep(cfg, "r1")
    assert storage.filesystem(marker)[0].modified(marker) == before
    assert second["pretrain"]["train"]["digest"] == first["pretrain"]["train"]["digest"]


def _user_corpus(tmp_path, lines):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_jsonl_corpus(make_config, tmp_path):
    docs = [json.dumps({"text": f"Document {i} says the sky over town {i % 7} is blue today."}) for i in range(300)]
    path = _user_corpus(tmp_path, docs)
    # no instruction data for a user corpus: the generated tasks only when asked for by name
    cfg = make_config(f"data.sources=[{{uri: '{path}'}}]", "data.vocab_size=400", "data.instructions.fallback=generated")
    manifest = run_data_prep(cfg, "user")
    assert manifest["source"] == str(path)
    assert manifest["pretrain"]["heldout"]["num_blocks"] >= 1
    assert manifest["sft"]["source"].startswith("fallback generated: tasks about the generated world")


def test_missing_corpus_path_is_named(make_config, tmp_path):
    missing = tmp_path / "nope.txt"
    cfg = make_config(f"data.sources=[{{uri: '{missing}'}}]")
    with pytest.raises(DataError, match=r"nope\.txt"):
        run_data_prep(cfg, "bad")


def test_malformed_jsonl_line_names_file_and_line(make_config, tmp_path):
    path = _user_corpus(tmp_path, [json.dumps({"text": "fine"}), "{not json", json.dumps({"text": "x"})])
    cfg = make_config(f"data.sources=[{{uri: '{path}'}}]", "data.instructions.fallback=generated")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2"):
        run_data_prep(cfg, "bad")
    # nothing that looks finished was left behind, and the MLflow run is kept, marked FAILED
    assert not storage.is_complete(storage.join(cfg.storage.root, "bad", "data"))
    tracker = Tracker(cfg)
    runs = tracker.client.search_runs(
        [tracker.experiment_id], "tags.`fromscratch.stage` = 'data_prep' and tags.`fromscratch.run_id` = 'bad'"
    )
    assert [r.info.status for r in runs] == ["FAILED"], (tracker.uri, [(r.info.run_id, r.info.status) for r in runs])


def test_empty_corpus_is_an_error(make_config, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    cfg = make_config(f"data.sources=[{{uri: '{path}'}}]")
    with pytest.raises(DataError, match=r"empty.*empty\.txt"):
        run_data_prep(cfg, "bad")


def test_unfinished_data_is_refused(make_config):
    cfg = make_config()
    manifest = run_data_prep(cfg, "r1")
    storage.remove(storage.join(manifest["data_uri"], storage.COMPLETE_MARKER))
    with pytest.raises(storage.StorageError, match="unfinished"):
        load_manifest(manifest["data_uri"])
