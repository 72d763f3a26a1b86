"""Held-out perplexity: the one number that says whether a checkpoint learned the language."""

from __future__ import annotations

import math

import numpy as np
import torch

from components.common.modeling import model_device


@torch.no_grad()
def heldout_perplexity(
    model: torch.nn.Module, blocks: np.ndarray, batch_size: int
) -> tuple[dict[str, float], list[float]]:
    """Token-weighted mean NLL over ``blocks`` ([n, seq_len] token ids) and its exp, and each
    block's mean NLL: the per-item values that let the promotion gate compare two models'
    held-out loss block by block (``heldout_loss``, direction ``min``)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    per_block: list[float] = []
    data = torch.from_numpy(blocks.astype(np.int64))
    device = model_device(model)
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view(targets.shape)
        per_block.extend(nll.mean(dim=1).tolist())
        total_nll += float(nll.sum())
        total_tokens += targets.numel()
    loss = total_nll / max(1, total_tokens)
    metrics = {"heldout_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "heldout_tokens": float(total_tokens)}
    return metrics, per_block
