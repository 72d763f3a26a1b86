"""Model and tokenizer factories: one place decides how a checkpoint is built and loaded, on
which device, in which dtype, with which attention kernel, and — under ZeRO-3 — partitioned
across the ranks as it loads."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from components.common.config import ModelConfig

log = logging.getLogger("fromscratch.modeling")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def llama_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A Llama-style config whose vocabulary and special ids come from the tokenizer."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def random_init_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """Stage 0: a freshly initialised model, deterministic by seed."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def flash_attention_available() -> bool:
    """flash-attn needs CUDA and its package (the CUDA image installs it)."""
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attention(requested: str | None) -> str:
    """The attention kernel a model is built with: ``flash_attention_2`` only where it can run,
    ``sdpa`` otherwise (with a warning, so a CPU rehearsal of a GPU preset still runs)."""
    if requested is None:
        return "sdpa"
    if requested == "flash_attention_2" and not flash_attention_available():
        log.warning("flash_attention_2 requested but unavailable here (no CUDA or no flash-attn); using sdpa")
        return "sdpa"
    return requested


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    device: torch.device | str | None = None,
) -> LlamaForCausalLM:
    """A saved causal LM (safetensors). Under an active ZeRO-3 config (``zero3_loading`` or a
    trainer's arguments) transformers partitions it across the ranks while it loads."""
    model = LlamaForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation=resolve_attention(attn_implementation)
    )
    return model.to(device) if device is not None else model


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights live on (the first parameter's; the CPU for a model
    without parameters): where its inputs go."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """True when DeepSpeed ZeRO-3 partitioned the model's parameters (they carry ``ds_id``):
    generation must then run with ``synced_gpus`` so every rank joins every gather."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def zero3_loading(ds_config: dict[str, Any]) -> Iterator[None]:
    """Inside, ``from_pretrained`` builds the model through DeepSpeed's ZeRO-3 init path
    (``deepspeed.zero.Init``): each rank keeps only its shard, the full model is never
    materialised on one device. A no-op for ZeRO stages 0-2. Models loaded after the block
    (a frozen reference, a reward model) load whole again."""
    if ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    holder = HfDeepSpeedConfig(ds_config)  # transformers keeps only a weak reference
    try:
        yield
    finally:
        del holder
        unset_hf_deepspeed_config()
