"""Markers make unfinished output invisible; staged writes publish all or nothing."""

from __future__ import annotations

import pytest

from components.common import storage


def test_staged_output_publishes_and_marks(tmp_path):
    uri = str(tmp_path / "out")
    with storage.staged_output(uri) as tmp:
        (tmp / "a.txt").write_text("hello")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("world")
    assert storage.is_complete(uri)
    assert storage.read_text(storage.join(uri, "sub", "b.txt")) == "world"


def test_failed_staged_output_leaves_nothing_finished(tmp_path):
    uri = str(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with storage.staged_output(uri) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert not storage.is_complete(uri)
    with pytest.raises(storage.StorageError, match="unfinished"):
        storage.require_complete(uri, "checkpoint")


def test_join_and_normalize():
    assert storage.join("s3://b/runs/", "r1", "/data") == "s3://b/runs/r1/data"
    assert storage.normalize("s3://b/x/") == "s3://b/x"
    assert storage.normalize("file:///tmp/x").endswith("/tmp/x")
    assert storage.is_remote("s3://b") and not storage.is_remote("/tmp")
