"""The rehearsal preset end to end (issue 19): the whole pipeline on this CPU machine with the
GPU presets' code paths on — ZeRO-3 with every parameter partitioned, bf16, gradient
checkpointing in every training stage, flash-attention requested (sdpa here), the evaluation
path of the GPU task — at tiny sizes and step counts. It checks that every stage runs and
publishes a full model, not what the stages learn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_rehearsal_pipeline_under_zero3_bf16(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--preset", "rehearsal", "--new-run-id", "rehearsal",
         "--set", f"storage.root={tmp_path / 'runs'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "rehearsal"
    init = load_file(run / "checkpoints" / "init" / "model.safetensors")
    shapes = {k: tuple(v.shape) for k, v in init.items()}
    for stage in ("pretrain", "sft", "ppo", "rlvr"):
        weights = load_file(run / "checkpoints" / stage / "model.safetensors")
        # every save gathered the ZeRO-3 shards: the full model, not empty tensors
        assert {k: tuple(v.shape) for k, v in weights.items()} == shapes, stage
        summary = json.loads((run / "checkpoints" / stage / "train_summary.json").read_text())
        assert summary.get("train_seconds", 0) > 0, (stage, summary)
    results = json.loads((run / "eval" / "results.json").read_text())
    for stage in ("init", "pretrain", "sft", "preference", "rlvr"):
        assert results[stage]["metrics"]["perplexity"] > 0, stage
