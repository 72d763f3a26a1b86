"""The CPU-runnable parts of the GPU check (``make gpu-check``): its overrides validate against
the gpu preset, and the per-stage figures (MFU included) and tables come out of a run folder."""

from __future__ import annotations

from benchmarks.gpu_check import main


def test_gpu_check_self_test(capsys):
    assert main(["--self-test"]) == 0
    out = capsys.readouterr().out
    assert "| pretrain | 60.0 | 500,000.0 tokens/s | 38.9% | 30.00 |" in out
    assert "self-test ok" in out


def test_gpu_check_refuses_to_run_without_cuda(capsys, tmp_path):
    assert main(["--out", str(tmp_path)]) == 2  # this machine has no GPU: nothing is started
    assert "no CUDA device" in capsys.readouterr().err
