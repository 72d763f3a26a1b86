"""Scratch folders: removed when the training function ends, and, for a process killed
before it could clean up, by the next process that makes a scratch root."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from components.common import scratch


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_training_function_leaves_no_scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []

    @scratch.cleans_scratch
    def train() -> None:
        made.append(scratch.scratch_dir("ckpt"))
        assert made[0].is_dir()

    train()
    assert made and not made[0].exists() and list(tmp_path.iterdir()) == []


def test_roots_of_dead_processes_are_removed_by_the_next_root(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    orphan = tmp_path / f"fromscratch-scratch-{_dead_pid()}-abc"
    (orphan / "ckpt-x").mkdir(parents=True)
    (orphan / "ckpt-x" / "weights.bin").write_bytes(b"0" * 16)
    live = tmp_path / f"fromscratch-scratch-{os.getppid()}-def"  # a running process
    live.mkdir()
    unrelated = tmp_path / "fromscratch-scratch-notapid"
    unrelated.mkdir()
    try:
        folder = scratch.scratch_dir("out")
        assert folder.is_dir()
        assert not orphan.exists()
        assert live.is_dir() and unrelated.is_dir()
    finally:
        scratch.clear_scratch()
