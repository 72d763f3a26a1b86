"""User corpus loading: files, folders, globs, JSONL, and errors that point at file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.errors import DataError, at
from components.data_prep.loaders import iter_hf_dataset, iter_text_records


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_at_formats_location() -> None:
    assert str(at("a.jsonl", 3, "bad")) == "a.jsonl:3: bad"
    assert str(at("a.jsonl", None, "bad")) == "a.jsonl: bad"
    assert isinstance(at("x", 1, "y"), ValueError)


def test_text_file_paragraphs(tmp_path: Path) -> None:
    f = _write(tmp_path / "a.txt", "\n\nFirst doc\nstill first.\n\n\nSecond doc.\n\nThird.\n\n")
    assert list(iter_text_records(str(f))) == ["First doc\nstill first.", "Second doc.", "Third."]


def test_text_file_without_blank_lines_is_one_doc_per_line(tmp_path: Path) -> None:
    f = _write(tmp_path / "lines.txt", "one line\r\ntwo line\nthree\n")
    assert list(iter_text_records(str(f))) == ["one line", "two line", "three"]


def test_file_uri_and_bom(tmp_path: Path) -> None:
    f = _write(tmp_path / "bom.txt", "\ufeffhello\nworld\n")
    assert list(iter_text_records(f"file://{f}")) == ["hello", "world"]


def test_folder_mixes_formats_sorted_and_skips_others(tmp_path: Path) -> None:
    _write(tmp_path / "b.txt", "bee one\n\nbee two\n")
    _write(tmp_path / "a.jsonl", '{"text": "aye"}\n\n{"text": "aye2"}')
    _write(tmp_path / "sub" / "c.json", json.dumps({"text": "sea", "id": 1}) + "\n")
    _write(tmp_path / "notes.md", "ignored\n")
    _write(tmp_path / ".hidden" / "x.txt", "ignored\n")
    assert list(iter_text_records(str(tmp_path))) == ["aye", "aye2", "bee one", "bee two", "sea"]


def test_glob(tmp_path: Path) -> None:
    _write(tmp_path / "p1.txt", "one\n")
    _write(tmp_path / "p2.txt", "two\n")
    _write(tmp_path / "q.txt", "nope\n")
    assert list(iter_text_records(str(tmp_path / "p*.txt"))) == ["one", "two"]


def test_jsonl_custom_field_and_forced_format(tmp_path: Path) -> None:
    f = _write(tmp_path / "data.log", '{"body": "x y"}\n{"body": "z"}\n')
    assert list(iter_text_records(str(f), fmt="jsonl", field="body")) == ["x y", "z"]
    # forced text format reads the same file as plain lines
    assert len(list(iter_text_records(str(f), fmt="text"))) == 2
    with pytest.raises(ValueError, match="unknown format"):
        list(iter_text_records(str(f), fmt="csv"))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere\.txt: no such file or folder"):
        list(iter_text_records(str(tmp_path / "nothere.txt")))


def test_empty_folder_and_unmatched_glob(tmp_path: Path) -> None:
    folder = tmp_path / "emptyfolder"
    _write(folder / "readme.md", "not a corpus file\n")
    with pytest.raises(DataError, match="emptyfolder: folder has no"):
        list(iter_text_records(str(folder)))
    with pytest.raises(DataError, match="no files match"):
        list(iter_text_records(str(tmp_path / "zz*.txt")))


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"other": "x"}', "missing field 'text' (fields present: other)"),
        ('{"text": 5}', "field 'text' must be a string, got int"),
        ('{"text": "   "}', "field 'text' is empty"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    f = _write(tmp_path / "broken.jsonl", '{"text": "ok"}\n\n' + bad_line + "\n")
    with pytest.raises(DataError) as info:
        list(iter_text_records(str(f)))
    message = str(info.value)
    assert message.startswith(f"{f}:3: "), message
    assert expected in message


def test_jsonl_error_after_good_records_is_raised_lazily(tmp_path: Path) -> None:
    f = _write(tmp_path / "late.jsonl", '{"text": "a"}\n{"text": "b"}\n{oops\n')
    records = iter_text_records(str(f))
    assert next(records) == "a" and next(records) == "b"
    with pytest.raises(DataError, match=r"late\.jsonl:3: "):
        next(records)


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    f = _write(tmp_path / "latin1.txt", "fine\n".encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:2: not valid UTF-8"):
        list(iter_text_records(str(f)))


def test_hf_dataset_missing_locally_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    missing = str(tmp_path / "no-such-dataset")
    with pytest.raises(DataError, match="no-such-dataset"):
        list(iter_hf_dataset(missing, None, "train", "text"))


def test_hf_dataset_reads_field_and_names_bad_record(tmp_path: Path, monkeypatch) -> None:
    # A local folder of JSON Lines is a dataset the 'datasets' library loads without a hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [{"text": "alpha", "n": 0}, {"text": "", "n": 1}, {"text": "gamma", "n": 2}]
    _write(tmp_path / "ds" / "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    assert list(iter_hf_dataset(str(tmp_path / "ds"), None, "train", "text")) == ["alpha", "gamma"]
    with pytest.raises(DataError, match=r"record 0: missing field 'body'"):
        list(iter_hf_dataset(str(tmp_path / "ds"), None, "train", "body"))
