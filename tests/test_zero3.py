"""ZeRO-3 on two CPU processes over gloo: PPO's policy partitioned as it loads, rollouts whose
ranks stop at different lengths (token for token the same as the unpartitioned model), and a
final save that holds the full weights.

Each case starts ``torchrun`` with two ranks of ``tests/zero3_worker.py`` (about 30-60 s here).
Without ``synced_gpus`` the rank that finishes first stops joining the parameter gathers and
the other hangs: the timeout turns that into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_ppo import toy_lm, toy_tokenizer

WORKER = Path(__file__).with_name("zero3_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def run_ranks(tmp_path: Path, precision: str) -> list[dict]:
    tokenizer = toy_tokenizer()
    model_dir = tmp_path / "sft"
    toy_lm(tokenizer, seed=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(WORKER), str(model_dir), str(out), precision,
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ZeRO-3 ranks hung (unpaired gathers?): {str(exc.stderr)[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-5000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero3_policy_rollout_and_save(tmp_path, precision):
    ranks = run_ranks(tmp_path, precision)
    for r in ranks:
        assert r["world"] == 2
        # the threshold 0 and the ZeRO-3 init path leave no parameter whole on a rank
        assert r["partitioned_params"] == r["total_params"] > 0
        # token for token what the unpartitioned model samples with the same seed
        assert r["sharded_ids"] == r["plain_ids"]
        tol = 1e-5 if precision == "fp32" else 5e-2
        assert r["logprob_max_diff"] <= tol
        assert r["ref_logprob_max_diff"] <= tol
    # rank 0 stopped after 3 new tokens, rank 1 went on to 11: different lengths
    assert len(ranks[0]["sharded_ids"][0]) < len(ranks[1]["sharded_ids"][0])
    # the final save gathered every shard: the full model, equal to what was loaded
    assert ranks[0]["saved_numel"] == ranks[0]["original_numel"]
    assert ranks[0]["saved_max_diff"] <= (1e-6 if precision == "fp32" else 2e-2)
