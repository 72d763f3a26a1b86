"""The next-token picture: what "the model computes P(next token | context)" looks like, stage
by stage.

A language model is, at every position, a probability distribution over the vocabulary for the
token that comes next. Random init spreads it almost evenly (entropy near ln |V|); pre-training
piles it onto the few words the corpus allows; SFT and RL make it sharper still on the replies
they train. Two views of that, per checkpoint:

- ``top_next_tokens``: for a few fixed prompts, the ``k`` most likely next tokens with their
  probabilities and the entropy of the whole distribution (drawn as bars by ``plot_next_tokens``);
- ``heldout_next_token``: on the first ``kl_tokens`` positions of the held-out text, the mean
  entropy of the next-token distribution, and the KL divergence from the stage before it,
  ``KL(P_stage || P_before)`` in nats, averaged over positions: how far the stage moved the model's
  predictions on ordinary text (large after pre-training, small after a light fine-tune).

The model runs where it already is; only the previous stage's log-probabilities (``kl_tokens``
x vocabulary floats) are kept, on the CPU, for the next comparison.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of log-probabilities."""
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def top_next_tokens(model: torch.nn.Module, tokenizer: Any, prompts: list[str], top_k: int) -> list[dict[str, Any]]:
    """Per prompt: ``{prompt, entropy, top: [[token, probability], ...]}`` (most likely first)."""
    model.eval()
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(_device(model))
        logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
        probs, index = logp.exp().topk(min(top_k, logp.numel()))
        tokens = [tokenizer.decode([int(i)]) for i in index.tolist()]
        out.append({
            "prompt": prompt,
            "entropy": float(_entropy(logp)),
            "max_entropy": math.log(logp.numel()),
            "top": [[t, float(p)] for t, p in zip(tokens, probs.tolist())],
        })
    return out


@torch.no_grad()
def heldout_logprobs(model: torch.nn.Module, blocks: np.ndarray, positions: int, batch_size: int) -> torch.Tensor:
    """``[positions, vocab]`` next-token log-probabilities on the first ``positions`` held-out
    positions (block by block, every position but a block's last), float32 on the CPU."""
    model.eval()
    rows: list[torch.Tensor] = []
    have = 0
    data = torch.from_numpy(np.asarray(blocks).astype(np.int64))
    per_block = max(1, data.shape[1] - 1)
    start = 0
    while have < positions and start < len(data):
        # only as many blocks as the positions still needed (a long context x a large vocabulary
        # is a lot of memory per block)
        take = min(batch_size, math.ceil((positions - have) / per_block))
        batch = data[start : start + take].to(_device(model))
        start += take
        logp = torch.log_softmax(model(input_ids=batch).logits[:, :-1].float(), dim=-1)
        flat = logp.reshape(-1, logp.shape[-1])[: positions - have].cpu()
        rows.append(flat)
        have += flat.shape[0]
    return torch.cat(rows) if rows else torch.empty(0)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """Mean over positions of ``KL(P || Q)`` in nats, from row-wise log-probabilities."""
    if logp.shape != logq.shape or logp.numel() == 0:
        raise ValueError(f"need two equal non-empty [positions, vocab] tensors, got {tuple(logp.shape)} and {tuple(logq.shape)}")
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def heldout_next_token(
    model: torch.nn.Module, blocks: np.ndarray, positions: int, batch_size: int, previous: torch.Tensor | None
) -> tuple[dict[str, float], torch.Tensor | None]:
    """``next_token.entropy`` (mean, nats) and, given the stage before's log-probabilities,
    ``next_token.kl_to_previous``; returns the metrics and this stage's log-probabilities (for the
    next stage). Nothing when ``positions`` is 0."""
    if positions <= 0 or len(blocks) == 0:
        return {}, None
    logp = heldout_logprobs(model, blocks, positions, batch_size)
    metrics = {"next_token.entropy": float(_entropy(logp).mean())}
    if previous is not None and previous.shape == logp.shape:
        metrics["next_token.kl_to_previous"] = kl_divergence(logp, previous)
    return metrics, logp


# -- the figure -------------------------------------------------------------------------------
PLOT_NAME = "next-token.png"


def _label(token: str) -> str:
    shown = token.replace("\n", "\\n")
    return f"'{shown}'" if shown.strip() == shown and shown else repr(shown)


def plot_next_tokens(pictures: dict[str, list[dict[str, Any]]]) -> bytes | None:
    """One PNG: a row per prompt, a column per checkpoint (stage order), each panel the top
    next-token probabilities as horizontal bars with the entropy in its title. None when no
    checkpoint has a picture."""
    stages = [name for name, rows in pictures.items() if rows]
    if not stages:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts = [row["prompt"] for row in pictures[stages[0]]]
    fig, axes = plt.subplots(
        len(prompts), len(stages), figsize=(2.6 * len(stages) + 0.6, 2.3 * len(prompts) + 0.8), squeeze=False
    )
    for col, stage in enumerate(stages):
        by_prompt = {row["prompt"]: row for row in pictures[stage]}
        for row_i, prompt in enumerate(prompts):
            ax = axes[row_i][col]
            pic = by_prompt.get(prompt)
            if pic is None:
                ax.set_visible(False)
                continue
            tokens = [_label(t) for t, _ in pic["top"]][::-1]
            probs = [p for _, p in pic["top"]][::-1]
            ax.barh(range(len(probs)), probs, color="#3b6fb6")
            for y, prob in enumerate(probs):  # the value, so a flat distribution's tiny bars still read
                ax.text(min(prob, 0.78) + 0.02, y, f"{prob:.1%}" if prob >= 0.001 else f"{prob:.2%}",
                        va="center", fontsize=6, color="#333")
            ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
            ax.set_xlim(0, 1)
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{stage}: H = {pic['entropy']:.2f} nats", fontsize=9)
            if col == 0:
                ax.set_ylabel(f'"{prompt}" →', fontsize=9)
    ln_v = pictures[stages[0]][0].get("max_entropy")
    flat = f"\nH: entropy of the whole distribution (flat: ln|V| = {ln_v:.2f} nats)" if ln_v else ""
    fig.suptitle(f"P(next token | prompt), top tokens per checkpoint{flat}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
