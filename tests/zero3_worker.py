"""One rank of the ZeRO-3 checks in ``test_zero3.py``, started twice by torchrun (gloo, CPU).

Usage: ``torchrun --nproc_per_node 2 tests/zero3_worker.py <model_dir> <out_dir> <precision>``.
``model_dir`` holds a tiny causal LM and its tokenizer (the "SFT checkpoint"). Each rank:

1. builds the PPO policy through ``build_policy`` under a ZeRO-3 config whose persistence
   threshold is 0, so every parameter really is partitioned, and wraps it in an engine;
2. samples a PPO rollout from its own prompts with its own reply budget (rank 0 stops after
   a few tokens, rank 1 goes on), and the same rollout from an unpartitioned copy of the model
   with the same seed, and records both;
3. saves the final policy with ``save_full_policy``; rank 0 reloads the folder.

Everything lands in ``out_dir/rank-N.json`` for the test to compare. A rank that hangs is
killed by the test's timeout.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(model_dir: str, out_dir: str, precision: str) -> None:
    import deepspeed
    import torch.distributed as dist

    from components.common.modeling import load_model, load_tokenizer
    from components.preference.ppo import PolicyWithValue, generate_rollout
    from components.preference.ppo_loop import build_policy, save_full_policy

    # a hang prints every thread's stack before the test's timeout kills the rank
    faulthandler.dump_traceback_later(int(sys.argv[4]) if len(sys.argv) > 4 else 150, exit=True)
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }

    class Knobs:  # the PPO stage settings build_policy reads
        attn_implementation = "sdpa"
        gradient_checkpointing = False

    tokenizer = load_tokenizer(model_dir)
    policy = build_policy(model_dir, ds_config, Knobs)
    partitioned = [p.ds_numel for p in policy.lm.parameters() if hasattr(p, "ds_id") and p.numel() == 0]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=optimizer, config=ds_config)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    reference = load_model(model_dir, dtype=dtype).eval()

    prompts = [f"w{rank + 3} w{rank + 7} w{rank + 1}", f"w{rank + 20} good"]
    budget = 3 if rank == 0 else 11  # the ranks finish at different lengths
    torch.manual_seed(100 + rank)
    sharded = generate_rollout(engine.module, reference, tokenizer, prompts, budget, 1.0, None)
    whole = PolicyWithValue(load_model(model_dir, dtype=dtype))
    torch.manual_seed(100 + rank)
    plain = generate_rollout(whole, reference, tokenizer, prompts, budget, 1.0, None)

    result = {
        "rank": rank,
        "world": world,
        "partitioned_params": len(partitioned),
        "total_params": sum(1 for _ in policy.lm.parameters()),
        "sharded_ids": sharded.input_ids.tolist(),
        "plain_ids": plain.input_ids.tolist(),
        "logprob_max_diff": float((sharded.logprobs - plain.logprobs).abs().max()),
        "ref_logprob_max_diff": float((sharded.ref_logprobs - plain.ref_logprobs).abs().max()),
    }
    save_dir = Path(out_dir, "saved")
    save_full_policy(engine, save_dir, rank)
    dist.barrier()
    if rank == 0:
        saved = load_model(save_dir).state_dict()
        original = load_model(model_dir).state_dict()
        result["saved_max_diff"] = max(
            float((saved[k].float() - original[k].float()).abs().max()) if saved[k].shape == original[k].shape
            else float("inf")
            for k in original
        )
        result["saved_numel"] = sum(v.numel() for v in saved.values())
        result["original_numel"] = sum(v.numel() for v in original.values())
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:4])
