"""Resume reads data, never code (issue 24, item 6).

A DeepSpeed checkpoint written as the pipeline's loops write it resumes through
``load_engine_checkpoint`` under ZeRO-3 and bf16 (2 ranks, gloo) with the weights and client
state it was saved with. Then a malicious pickle is planted in place of a checkpoint file in a
run's Ray checkpoint folder (``<root>/<run>/ray/...``): DeepSpeed's own load runs it (the
control), the pipeline's resume refuses the file and the payload never runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("resume_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def ranks(ckpt: Path, out: Path, stage: int, precision: str, mode: str, nproc: int = 2) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(WORKER), str(ckpt), str(out), str(stage), precision, mode]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"{mode}-{r}.json").read_text()) for r in range(nproc)]


class Payload:
    """Unpickling this runs ``exec``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_zero3_checkpoint_resumes_and_a_planted_pickle_does_not_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # where Ray Train keeps a run's checkpoints: <root>/<run>/ray/<trial>/checkpoint_N/
    ckpt = tmp_path / "root" / "run1" / "ray" / "pretrain" / "checkpoint_000001"
    saved = ranks(ckpt, out, 3, "bf16", "save")
    loaded = ranks(ckpt, out, 3, "bf16", "load")
    for before, after in zip(saved, loaded):
        assert "error" not in after, after.get("trace")
        assert after["client_state"]["step"] == 1
        assert after["loss"] == before["loss"]  # same weights as when it was saved

    # plant: a model-states file that runs code when unpickled
    marker = tmp_path / "pwned"
    for target in ckpt.glob("ds/*model_states.pt"):  # one per rank under ZeRO-3
        shutil.copy(target, tmp_path / target.name)
        torch.save({"module": Payload(marker)}, target)

    refused = ranks(ckpt, out, 3, "bf16", "load")
    assert all("UnsafeCheckpointError" in r.get("error", "") for r in refused), refused
    assert not marker.exists()

    control = ranks(ckpt, out, 3, "bf16", "load-unguarded")  # DeepSpeed's plain load
    assert marker.exists(), control
