"""One rank of the resume checks in ``test_safe_resume.py`` (torchrun, gloo, CPU).

Usage: ``torchrun --nproc_per_node N tests/resume_worker.py <ckpt_dir> <out_dir> <zero_stage> <precision> <mode>``

``save``: train one step of a toy LM under DeepSpeed and write a checkpoint as the pipeline's
loops do (``engine.save_checkpoint`` with tag ``ds`` and a client state). ``load``: build a
fresh engine and resume it through ``load_engine_checkpoint``; rank 0 records whether the
weights equal the saved ones and the client state. ``load-unguarded`` loads with
DeepSpeed's plain ``engine.load_checkpoint`` (the control that shows a planted file is live).
Errors are recorded, not raised.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(ckpt_dir: str, out_dir: str, zero_stage: str, precision: str, mode: str) -> None:
    import deepspeed
    import torch.distributed as dist

    from components.common.ds_checkpoint import CKPT_TAG, load_engine_checkpoint
    from tests.test_ppo import toy_lm, toy_tokenizer

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    stage = int(zero_stage)
    zero: dict = {"stage": stage}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
        "zero_optimization": zero, "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
    }
    tok = toy_tokenizer()
    model = toy_lm(tok, seed=0 if mode == "save" else 9)  # the resumed engine starts elsewhere
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    batch = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    result: dict = {"rank": rank}
    if mode == "save":
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        engine.save_checkpoint(ckpt_dir, tag=CKPT_TAG, client_state={"step": 1})
        result["loss"] = float(engine(input_ids=batch, labels=batch).loss)
    else:
        try:
            if mode == "load-unguarded":  # DeepSpeed's own load, as the code before issue 24 did
                result["client_state"] = engine.load_checkpoint(ckpt_dir, tag=CKPT_TAG)[1]
            else:
                result["client_state"] = load_engine_checkpoint(engine, ckpt_dir)
            result["loss"] = float(engine(input_ids=batch, labels=batch).loss)
        except Exception as exc:  # noqa: BLE001 - the test reads what happened
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["trace"] = traceback.format_exc()[-2000:]
    Path(out_dir, f"{mode}-{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:6])
