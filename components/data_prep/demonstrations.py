"""Demonstrations as a crowd writes them: mostly right, some in a style the labeler dislikes.

Why: SFT imitates its demonstrations, preference tuning moves the model toward what the
labeler prefers. If every generated demonstration were already the labeler's ideal reply
(``Example.answer``), the SFT model would sample the preferred style by construction and
preference tuning would have nothing to win (measured: PPO and DPO tied SFT by the oracle).
Real instruction data is written by many people: some pad their answers with pleasantries,
some add a rude remark. ``flaw_demonstrations`` rewrites a seeded share of the training
demonstrations that way, keeping the answer itself intact, so

* SFT still learns every task, and greedy replies stay well-formed: every flaw comes *after*
  the complete answer, where ending the reply is still the most likely next step;
* sampled SFT replies carry the flaws at about the rate they were taught;
* the preference pairs, built from the ideal replies *before* this step, teach what to drop.

Why no flaw *before* or *instead of* the answer (a rude opening, an evasion): measured with
0.14 rude openings and 0.06 evasions, the SFT model answered every upper-casing and
list-reversal prompt, the tasks it is least sure of, with an evasion or a rude line
(greedy compliance 0.69): where the answer's first token is uncertain, a fixed
opening sentence is the single most likely continuation. The rude and evasive replies
stay in the preference pairs, as things the labeler dislikes.

Held-out examples are never flawed: evaluation compares replies with the ideal ones.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from components.data_prep.corpus import stream_seed
from components.data_prep.instructions import Example
from components.data_prep.preferences import FILLERS, RUDE

# How the flawed share splits between the kinds of flaw (padding is the more common habit).
FLAW_WEIGHTS: dict[str, float] = {"padded": 0.6, "rude": 0.4}


def flawed_reply(reply: str, kind: str, rng: random.Random) -> str:
    """``reply`` with one flaw after it: ``padded`` (one or two filler sentences) or ``rude``
    (a rude remark)."""
    if kind == "padded":
        fillers = rng.sample(FILLERS, rng.randint(1, 2))
        return " ".join([reply, *fillers])
    if kind == "rude":
        return f"{reply} {rng.choice(RUDE)}"
    raise ValueError(f"unknown flaw {kind!r}: expected one of {', '.join(FLAW_WEIGHTS)}")


def flaw_demonstrations(examples: list[Example], share: float, seed: int) -> tuple[list[Example], Counter[str]]:
    """``examples`` with ``round(share * len)`` of them (seeded choice) given a flawed reply.

    Returns the new list (same order, same ids) and how many got each kind of flaw.
    """
    if not 0 <= share < 1:
        raise ValueError(f"the flawed share must be in [0, 1), got {share}")
    rng = random.Random(stream_seed(seed, "sft-demonstration-flaws"))
    chosen = set(rng.sample(range(len(examples)), round(share * len(examples))))
    kinds, weights = list(FLAW_WEIGHTS), list(FLAW_WEIGHTS.values())
    counts: Counter[str] = Counter()
    out = []
    for i, example in enumerate(examples):
        if i not in chosen:
            out.append(example)
            continue
        kind = rng.choices(kinds, weights)[0]
        reply = flawed_reply(example.answer, kind, rng)
        counts[kind] += 1
        out.append(replace(example, messages=[*example.messages[:-1], {"role": "assistant", "content": reply}], answer=reply))
    return out, counts
