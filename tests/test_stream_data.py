"""Streaming data prep: formats and compressions, identical shards with 1 or 2 Ray Data
workers, duplicates counted, bad input named by file (and line/row), re-runs redo only what
is missing, and nothing half-written marked complete."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from components.common import storage
from components.common.errors import DataError
from components.data_prep.shards import read_split
from components.data_prep.sources import iter_unit, plan_units
from components.data_prep.step import data_uri, run_data_prep
from components.common.config.data import DataSource


def _doc(i: int) -> str:
    return f"Document {i} tells how the river {i % 7} meets the hill {i % 5} near town {i % 11}."


def _corpus(root: Path) -> Path:
    """Six files of four kinds; documents 0-9 appear twice (exact duplicates)."""
    root.mkdir()
    for f in range(2):
        (root / f"part-{f}.jsonl").write_text("".join(json.dumps({"text": _doc(f * 150 + i)}) + "\n" for i in range(150)))
    with gzip.open(root / "part-2.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps({"text": _doc(300 + i)}) + "\n" for i in range(150))
    (root / "part-3.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "\n\n".join(_doc(450 + i) for i in range(150)).encode()))
    table = pa.table({"id": list(range(150)), "text": [_doc(600 + i) for i in range(140)] + [_doc(i) for i in range(10)]})
    pq.write_table(table, root / "part-4.parquet", row_group_size=20)
    return root


def _cfg(make_config, corpus: Path, *extra: str):
    # the generated SFT tasks on purpose: these tests are about the corpus
    return make_config(f"data.sources=[{{uri: '{corpus}'}}]", "data.heldout_fraction=0.1",
                       "data.instructions.fallback=generated", *extra)


def test_every_format_streams(tmp_path: Path):
    corpus = _corpus(tmp_path / "c")
    units = plan_units([DataSource(uri=str(corpus))])
    kinds = [(Path(u.uri).name, u.kind, u.compression) for u in units]
    assert kinds[:4] == [("part-0.jsonl", "jsonl", None), ("part-1.jsonl", "jsonl", None),
                         ("part-2.jsonl.gz", "jsonl", "gzip"), ("part-3.txt.zst", "text", "zstd")]
    assert [u.row_groups for u in units[4:]] == [(0, 4), (4, 8)]  # 8 row groups, 4 per unit
    docs = [d for u in units for d in iter_unit(u)]
    assert len(docs) == 750 and docs[450] == _doc(450) and docs[-1] == _doc(9)


@pytest.mark.parametrize("unit_bytes", [1, 997, 4096, 10_000, 10**9])
def test_big_jsonl_is_cut_into_byte_ranges_that_read_every_line_once(tmp_path: Path, unit_bytes: int):
    """Ranges cut anywhere (mid-line, on a line start, one byte each) read every document exactly
    once and in file order, whatever the cut size."""
    lines = [json.dumps({"text": _doc(i) + " x" * (i % 13)}) for i in range(300)]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    units = plan_units([DataSource(uri=str(path))], unit_bytes)
    expected_units = 1 if unit_bytes >= path.stat().st_size else -(-path.stat().st_size // unit_bytes)
    assert len(units) == expected_units
    docs = [d for u in units for d in iter_unit(u)]
    assert docs == [json.loads(line)["text"] for line in lines]


def test_error_in_a_byte_range_names_the_files_own_line(tmp_path: Path):
    lines = [json.dumps({"text": _doc(i)}) for i in range(200)]
    lines[176] = '{"text": broken'
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    units = plan_units([DataSource(uri=str(path))], 1500)
    assert len(units) > 5
    with pytest.raises(DataError, match=r"big\.jsonl:177: not valid JSON"):
        for unit in units:
            list(iter_unit(unit))


def test_shards_identical_with_one_or_two_data_workers(make_config, local_ray, tmp_path: Path):
    corpus = _corpus(tmp_path / "c")
    out = {}
    for workers in (1, 2):
        # 4 KB byte-range units: the two JSONL files are cut into several units each
        cfg = _cfg(make_config, corpus, f"data.workers={workers}", "model.max_seq_len=32", "data.ray_min_mb=0",
                   "data.unit_mb=0.004")
        manifest = run_data_prep(cfg, f"w{workers}")
        assert manifest["corpus"]["ray_data"] is (workers == 2)
        files = {}
        for split in ("train", "heldout"):
            info = manifest["pretrain"][split]
            for shard in info["shards"]:
                data = Path(info["uri"], shard["file"]).read_bytes()
                assert hashlib.sha256(data).hexdigest() == shard["sha256"]
                files[shard["file"]] = data
        out[workers] = (files, manifest["pretrain"], manifest["corpus"])
    assert len(out[1][0]) >= 6 and out[1][0] == out[2][0]
    assert out[1][1] == {k: {**v, "uri": out[1][1][k]["uri"]} for k, v in out[2][1].items()}
    corpus_stats = out[2][2]
    assert corpus_stats["units"] > 7  # 5 files, the two plain JSONL ones in several ranges
    assert corpus_stats["documents"] == 750 and corpus_stats["duplicates_dropped"] == 10
    assert corpus_stats["train_documents"] + corpus_stats["heldout_documents"] == 740
    assert 0 < corpus_stats["heldout_documents"] < 150
    blocks = read_split({"pretrain": out[2][1]}, "train")
    assert blocks.shape[1] == 32 and blocks.dtype.name == "uint16"


def test_interrupted_run_redoes_only_missing_units(make_config, tmp_path: Path, monkeypatch):
    from components.data_prep import token_shards

    corpus = _corpus(tmp_path / "c")
    cfg = _cfg(make_config, corpus, "data.workers=1", "model.max_seq_len=32")
    real = token_shards.pack_unit
    calls: list[int] = []

    def crash_at_unit_3(task):
        if task["index"] == 3 and not calls:
            calls.append(3)
            raise RuntimeError("worker lost")  # a crash, not bad data
        return real(task)

    monkeypatch.setattr(token_shards, "pack_unit", crash_at_unit_3)
    with pytest.raises(RuntimeError, match="worker lost"):
        run_data_prep(cfg, "r")
    data = data_uri(storage.join(cfg.storage.root, "r"))
    assert not storage.is_complete(data) and not Path(data, "manifest.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in Path(data, "pretrain").glob("*.bin")}
    assert before and all("-00003-" not in n for n in before)  # units before the crash are written
    assert not list(Path(data, "pretrain").glob("*.tmp-*"))

    manifest = run_data_prep(cfg, "r")
    after = {p.name: p.stat().st_mtime_ns for p in Path(data, "pretrain").glob("*.bin")}
    assert all(after[n] == t for n, t in before.items())  # not rewritten
    assert any("-00003-" in n for n in after) and storage.is_complete(data)
    assert manifest["corpus"]["documents"] == 750
    # the resumed run's shards are those of a run that was never interrupted
    clean = _cfg(make_config, corpus, "data.workers=1", "model.max_seq_len=32")
    monkeypatch.setattr(token_shards, "pack_unit", real)
    fresh = run_data_prep(clean, "fresh")
    assert [s["sha256"] for s in fresh["pretrain"]["train"]["shards"]] == [
        s["sha256"] for s in manifest["pretrain"]["train"]["shards"]
    ]


def _bad(tmp_path: Path, name: str, data: bytes | None = None) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "good.jsonl").write_text("".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(40)))
    if data is not None:
        (folder / name).write_bytes(data)
    return folder


def _parquet_without_text() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"body": ["a", "b"]}), sink)
    return sink.getvalue().to_pybytes()


def _truncated_gzip() -> bytes:
    whole = gzip.compress("".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(400)).encode())
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("x.parquet", _parquet_without_text(), r"x\.parquet: no column 'text' \(columns: body\)"),
        ("x.jsonl.gz", _truncated_gzip(), r"x\.jsonl\.gz:\d+: cannot read gzip data after \d+ complete lines"),
        ("x.txt", b"ok line\nstill ok\nbad \xc3\x28 byte\n", r"x\.txt:3: not valid UTF-8"),
        ("x.jsonl.zst", b"this is not zstd at all\n" * 20, r"x\.jsonl\.zst:1: cannot read zstd data .*not zstd"),
    ],
)
def test_bad_file_is_named_and_nothing_is_marked_complete(make_config, tmp_path, name, data, expected):
    folder = _bad(tmp_path, name, data)
    cfg = _cfg(make_config, folder, "data.workers=1")
    with pytest.raises(DataError, match=expected) as err:
        run_data_prep(cfg, "bad")
    assert str(folder / name) in str(err.value)
    assert not storage.is_complete(data_uri(storage.join(cfg.storage.root, "bad")))


def test_corpus_without_documents_and_glob_without_files(make_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.jsonl").write_text("\n\n")
    (empty / "b.txt").write_text("   \n")
    cfg = _cfg(make_config, empty, "data.workers=1")
    with pytest.raises(DataError, match=r"the corpus has no documents \(.*empty"):
        run_data_prep(cfg, "e")
    assert not storage.is_complete(data_uri(storage.join(cfg.storage.root, "e")))
    cfg = make_config(f"data.sources=[{{uri: '{tmp_path}/nothing-*.parquet'}}]", "data.instructions.fallback=generated")
    with pytest.raises(DataError, match=r"nothing-\*\.parquet: no files match this pattern"):
        run_data_prep(cfg, "g")
    assert not storage.is_complete(data_uri(storage.join(cfg.storage.root, "g")))


def test_bad_unit_on_ray_data_workers_is_named_too(make_config, local_ray, tmp_path):
    folder = _bad(tmp_path, "x.txt", b"ok\n\xff\n")
    (folder / "more.jsonl").write_text(json.dumps({"text": "x y z"}) + "\n")
    cfg = _cfg(make_config, folder, "data.workers=2", "data.ray_min_mb=0")
    with pytest.raises(DataError, match=r"x\.txt:2: not valid UTF-8"):
        run_data_prep(cfg, "bad")


@pytest.mark.parametrize("bucket_docs", [7, 10**6])
def test_duplicates_are_every_later_copy_in_corpus_order(tmp_path: Path, monkeypatch, bucket_docs: int):
    """Against a plain first-seen set: the later copies (unit, index) of each hash, whether the
    hashes fit one bucket or are spread over many."""
    from components.data_prep import token_shards

    monkeypatch.setattr(token_shards, "DEDUP_BUCKET_DOCS", bucket_docs)
    rng = np.random.default_rng(3)
    counts = [40, 0, 25, 60]
    pool = rng.integers(0, 2**63, size=70, dtype=np.uint64)  # fewer values than documents: many repeats
    for unit, count in enumerate(counts):
        path = tmp_path / "scan" / f"unit-{unit:05d}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, rng.choice(pool, size=count))
    seen, expected = set(), {}
    for unit, count in enumerate(counts):
        for index, h in enumerate(np.load(tmp_path / "scan" / f"unit-{unit:05d}.npy") if count else []):
            if int(h) in seen:
                expected.setdefault(unit, []).append(index)
            seen.add(int(h))
    found = token_shards.find_duplicates(str(tmp_path), counts)
    assert {u: v.tolist() for u, v in found.items()} == expected and sum(map(len, expected.values())) > 50
