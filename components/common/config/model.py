"""The model's architecture: a Llama-style decoder; the tokenizer decides the vocabulary size."""

from __future__ import annotations

from pydantic import Field, model_validator

from components.common.config.base import Strict


class ModelConfig(Strict):
    """A Llama-style decoder; the tokenizer decides the vocabulary size."""

    hidden_size: int = Field(default=128, ge=8, description="Width of the residual stream.")
    intermediate_size: int = Field(default=384, ge=8, description="Width of the MLP's hidden layer.")
    num_layers: int = Field(default=4, ge=1, description="Decoder layers.")
    num_heads: int = Field(default=4, ge=1, description="Attention heads (hidden_size must divide by it).")
    num_kv_heads: int = Field(default=4, ge=1, description="Key/value heads (grouped-query attention when fewer).")
    max_seq_len: int = Field(default=256, ge=16, description="Context length; also the packed block length.")
    rope_theta: float = Field(default=10000.0, description="RoPE base frequency.")
    tie_embeddings: bool = Field(default=True, description="Share the input embedding with the output head.")
    init_std: float = Field(default=0.02, gt=0, description="Std of the random init's normal weights.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError("model.hidden_size must be divisible by model.num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("model.num_heads must be divisible by model.num_kv_heads")
        return self
