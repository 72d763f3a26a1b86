"""In-context copying: can the checkpoint predict a token sequence the second time it sees it?

A transformer that has formed induction heads predicts the second copy of a repeated sequence
almost perfectly, however unpredictable the first copy was. That one ability underlies much of
what the later stages ask for: checking that a reply reverses the prompt's list, carrying a word
problem's numbers into the worked steps, quoting a fact from the prompt. A checkpoint without it
(the ``tiny`` preset's 1M-parameter model measured about 0 at every stage) has to solve those
tasks from memorised patterns, which bounds what the reward model and RLVR can reach; the
report card shows the score beside those figures so the bound is visible, not guessed.

The sequences are drawn from the held-out text's own tokens in random order: in-distribution
tokens (an untrained embedding row would fail for a reason unrelated to copying), but no
sentence the model could predict without looking back.
"""

from __future__ import annotations

import numpy as np
import torch

from components.common.modeling import model_device


@torch.no_grad()
def copy_losses(model: torch.nn.Module, sequences: torch.Tensor) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second copy of each row of ``sequences``.

    ``sequences`` is [n, length]; the model reads each row twice in a row. The first token of
    each copy is left out: nothing in the context predicts it.
    """
    if sequences.ndim != 2 or sequences.shape[1] < 2:
        raise ValueError(f"sequences must be [n, length >= 2], got shape {tuple(sequences.shape)}")
    length = sequences.shape[1]
    ids = torch.cat([sequences, sequences], dim=1)
    logits = model(input_ids=ids).logits[:, :-1].float()
    # nll[:, t] is the loss of predicting ids[:, t + 1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    first = nll[:, : length - 1]  # predicts tokens 1 .. length-1 of the first copy
    second = nll[:, length:]  # predicts tokens 1 .. length-1 of the second copy
    return float(first.mean()), float(second.mean())


def copy_score(first_loss: float, second_loss: float) -> float:
    """1 - second / first: 0 when the repeat is no easier than the original, 1 when it is
    predicted perfectly; negative when the repeat confuses the model."""
    return 1.0 - second_loss / first_loss if first_loss > 0 else 0.0


def in_context_copying(
    model: torch.nn.Module, blocks: np.ndarray, num_sequences: int, length: int, seed: int
) -> dict[str, float]:
    """The copying suite on ``num_sequences`` random sequences of ``length`` tokens drawn from
    ``blocks`` (held-out token ids, any shape)."""
    pool = np.asarray(blocks).reshape(-1)
    if pool.size == 0:
        raise ValueError("no held-out tokens to draw copying sequences from")
    rng = np.random.default_rng(seed)
    sequences = torch.from_numpy(rng.choice(pool, size=(num_sequences, length)).astype(np.int64))
    model.eval()
    first, second = copy_losses(model, sequences.to(model_device(model)))
    return {"copy.first_loss": first, "copy.second_loss": second, "copy.score": copy_score(first, second)}
