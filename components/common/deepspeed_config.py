"""The DeepSpeed config every training stage uses, built from the preset.

One builder keeps ZeRO stage, precision and clipping identical whether DeepSpeed is driven by
our own loop (``deepspeed.initialize``) or by a TRL/HF trainer (its ``deepspeed=`` argument).
"""

from __future__ import annotations

from typing import Any

import torch

from components.common.config import DeepSpeedConfig


def resolve_precision(ds: DeepSpeedConfig, stage_precision: str | None = None) -> str:
    """The stage's precision (``stage_precision``, else ``deepspeed.precision``); ``auto`` means
    bf16 on a GPU that has it, fp32 elsewhere (CPU ZeRO stays in fp32)."""
    precision = stage_precision or ds.precision
    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def build_deepspeed_config(
    ds: DeepSpeedConfig, micro_batch_size: int, grad_accum: int, stage_precision: str | None = None
) -> dict[str, Any]:
    precision = resolve_precision(ds, stage_precision)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer and ds.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if ds.stage3_param_persistence_threshold is not None:
            zero["stage3_param_persistence_threshold"] = ds.stage3_param_persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # our own optimizer is handed in; this stops DeepSpeed building (and JIT-compiling) one
        "zero_allow_untested_optimizer": True,
    }
