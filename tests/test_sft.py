"""SFT: instruction data in data_prep, its input errors, and a worker killed mid-SFT."""

from __future__ import annotations

import json
import os

import pytest

from components.common import storage
from components.common.errors import DataError
from components.common.tracking import Tracker
from components.data_prep.instructions import from_record
from components.data_prep.step import run_data_prep
from components.pretrain.step import run_pretrain
from components.sft.step import run_sft
from tests.faults import kill_worker_after_first_checkpoint


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_data_prep_writes_instruction_splits(make_config):
    manifest = run_data_prep(make_config("data.instructions.num_train=300", "data.instructions.num_heldout=35"), "r")
    with storage.open_uri(manifest["sft"]["heldout"]["uri"], "r") as fh:
        heldout = [from_record(json.loads(line)) for line in fh]
    with storage.open_uri(manifest["sft"]["train"]["uri"], "r") as fh:
        train = [from_record(json.loads(line)) for line in fh]
    assert len(train) == 300 and len(heldout) == 35
    assert {e.family for e in heldout} >= {"fact_town", "arithmetic", "uppercase"}
    assert not {e.messages[0]["content"] for e in heldout} & {e.messages[0]["content"] for e in train}


def test_user_instruction_formats_are_loaded(make_config, tmp_path):
    rows = []
    for i in range(20):
        rows.append({"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": f"{i}"}]})
        rows.append({"prompt": f"Double {i}", "completion": f"{2 * i}"})
        rows.append({"instruction": "Add one", "input": f"{i}", "output": f"{i + 1}"})
    path = _jsonl(tmp_path / "mine.jsonl", rows)
    manifest = run_data_prep(make_config(f"data.instructions.sources=['{path}']"), "u")
    assert manifest["sft"]["train"]["num_examples"] + manifest["sft"]["heldout"]["num_examples"] == 60
    assert manifest["sft"]["source"] == str(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}]', "not valid JSON"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "assistant"),
        ({"question": "hi", "reply": "ho"}, "messages"),
    ],
)
def test_bad_instruction_records_name_file_and_line(make_config, tmp_path, record, message):
    good = {"prompt": "a", "completion": "b"}
    path = _jsonl(tmp_path / "broken.jsonl", [good, good, record, good])
    cfg = make_config(f"data.instructions.sources=['{path}']")
    with pytest.raises(DataError, match=rf"broken\.jsonl:3.*{message}|{message}.*broken\.jsonl:3"):
        run_data_prep(cfg, "bad")
    assert not storage.is_complete(storage.join(cfg.storage.root, "bad", "data"))


def test_too_few_instructions_for_two_splits(make_config, tmp_path):
    path = _jsonl(tmp_path / "one.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match=r"one\.jsonl.*split"):
        run_data_prep(make_config(f"data.instructions.sources=['{path}']"), "bad")


def test_killed_worker_during_sft_resumes_and_finishes(make_config, local_ray):
    cfg = make_config(
        "pretrain.steps=30", "pretrain.checkpoint_every=30",
        "data.instructions.num_train=600", "data.instructions.num_heldout=35",
        "sft.steps=80", "sft.checkpoint_every=20", "sft.micro_batch_size=8",
    )
    manifest = run_data_prep(cfg, "kill")
    base = run_pretrain(cfg, "kill", manifest["data_uri"])["pretrain"]
    killed: list[int] = []
    watcher = kill_worker_after_first_checkpoint(os.path.join(cfg.storage.root, "kill", "ray", "sft"), killed)
    out = run_sft(cfg, "kill", manifest["data_uri"], base)
    watcher.join(timeout=5)
    assert killed, "no SFT worker was killed"
    assert out["resumed_from_step"] >= 20
    assert storage.is_complete(out["uri"])
    # lineage: sft → pretrain → init
    chain = Tracker(cfg).lineage(out["model_id"])
    assert [link["stage"] for link in chain] == ["sft", "pretrain", "init"]
    assert any("sft-train" in d for d in chain[0]["datasets"])
