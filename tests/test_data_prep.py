"""data_prep end to end on generated and user corpora, and its errors."""

from __future__ import annotations

import json

import pytest

from components.common import storage
from components.common.errors import DataError
from components.common.tracking import Tracker
from components.data_prep.shards import read_shards
from components.data_prep.step import load_manifest, run_data_prep
from components.common.modeling import load_tokenizer


def test_generated_corpus_prepares_tokenizer_and_shards(make_config):
    cfg = make_config()
    manifest = run_data_prep(cfg, "r1")
    data = manifest["data_uri"]
    assert storage.is_complete(data)
    train = read_shards(manifest["pretrain"]["train"]["uri"], manifest["pretrain"]["train"]["files"])
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
    cfg = make_config(f"data.sources=[{{uri: '{path}'}}]", "data.vocab_size=400")
    manifest = run_data_prep(cfg, "user")
    assert manifest["source"] == str(path)
    assert manifest["pretrain"]["heldout"]["num_blocks"] >= 1


def test_missing_corpus_path_is_named(make_config, tmp_path):
    missing = tmp_path / "nope.txt"
    cfg = make_config(f"data.sources=[{{uri: '{missing}'}}]")
    with pytest.raises(DataError, match=r"nope\.txt"):
        run_data_prep(cfg, "bad")


def test_malformed_jsonl_line_names_file_and_line(make_config, tmp_path):
    path = _user_corpus(tmp_path, [json.dumps({"text": "fine"}), "{not json", json.dumps({"text": "x"})])
    cfg = make_config(f"data.sources=[{{uri: '{path}'}}]")
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
