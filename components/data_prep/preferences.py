"""Chosen/rejected pairs from a labeler whose preference is written down as code.

Real preference data comes from people choosing the better of two replies. The embedded
default stands in for such a labeler with a stated, checkable taste — the *oracle*:

1. a correct answer beats a wrong one,
2. an answer beats an evasion, and an answer to this question beats one to another,
3. a complete answer beats one cut off mid-way, and a concise one beats a rambling one,
4. a polite reply beats a rude one.

``oracle_score`` turns that taste into a number, so generated pairs are consistent with it by
construction and evaluation can ask the same labeler which of two model replies it prefers
(next to the reward model, which only *learned* the taste: the gap between the two is how
reward hacking shows).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from components.data_prep.instructions import ANSWER_PREFIX, Example, well_formed
from components.data_prep.world import World

EVASIONS = ("I do not know.", "I cannot answer that.", "I am not sure about that.")
RUDE = ("That is a silly question.", "Ask someone else.", "Why do you ask me that?")
FILLERS = ("I hope that this helps.", "Thank you for the question.", "That is all I can say about it.")

_SENTENCE = re.compile(r"[^.!?]+[.!?]")


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (chat messages without the reply) and two assistant replies."""

    id: str
    family: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    reference: str | None  # the correct reply when known (generated data); None for user data
    kind: str  # why ``rejected`` loses: wrong / evasive / truncated / rambling / rude / off_topic / user


def oracle_score(reply: str, reference: str | None, family: str) -> float:
    """The stand-in labeler's score of a reply: higher is preferred.

    correct and concise 3; correct but padded 2 minus 0.5 per extra sentence; a well-formed
    but wrong answer 0.5; an evasion -1; rudeness -2 on top. Without a reference (user data)
    only the style terms apply.
    """
    text = reply.strip()
    score = 0.0
    lowered = text.lower()
    if any(r.lower() in lowered for r in RUDE):
        score -= 2.0
    if any(e.lower() in lowered for e in EVASIONS):
        score -= 1.0
    if reference is None:
        return score
    if text == reference.strip():
        return score + 3.0
    if reference.strip() and reference.strip() in text:
        extra = len(_SENTENCE.findall(text.replace(reference.strip(), "", 1)))
        return score + 2.0 - 0.5 * max(1, extra)
    if well_formed(family, text):
        score += 0.5
    return score


def oracle_prefers(a: str, b: str, reference: str | None, family: str) -> float:
    """1 if the oracle prefers ``a``, 0 if it prefers ``b``, 0.5 for a tie."""
    sa, sb = oracle_score(a, reference, family), oracle_score(b, reference, family)
    return 1.0 if sa > sb else 0.0 if sa < sb else 0.5


def _wrong_answer(example: Example, world: World, rng: random.Random) -> str | None:
    """A reply of the right shape whose content is wrong, or None where none is easy."""
    ref = example.answer
    family = example.family
    if family == "arithmetic":
        match = re.search(r"(\d+) ([-+]) (\d+) = (-?\d+)\. ", ref)
        if not match:
            return None
        a, op, b, c = match.groups()
        wrong = int(c) + rng.choice((-3, -2, -1, 1, 2, 3))
        return f"{a} {op} {b} = {wrong}. {ANSWER_PREFIX}{wrong}."
    if family.startswith("fact_"):
        name = ref.split(" ")[0].split("'")[0]
        others = [p for p in world.people if p.name != name]
        if not others:
            return None
        attr = {"fact_town": "town", "fact_job": "job", "fact_pet": "pet", "fact_color": "color"}[family]
        own = getattr(world.person(name), attr)
        candidates = [getattr(p, attr) for p in others if getattr(p, attr) != own]
        if not candidates:
            return None
        value = rng.choice(candidates)
        return ref.replace(own, value, 1) if own in ref else None
    if family == "uppercase":
        return ref[:-1] + ("S" if not ref.endswith("S") else "E")
    if family == "reverse_list":
        words = ref.split(", ")
        if len(words) < 2:
            return None
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        return ", ".join(shuffled)
    return None


def _off_topic(example: Example, others: list[Example], rng: random.Random) -> str | None:
    """A well-formed reply to a prompt of another family, or None where there is none."""
    candidates = [o for o in others if o.family != example.family]
    if not candidates:
        return None
    reply = rng.choice(candidates).answer
    return reply if oracle_score(reply, example.answer, example.family) < oracle_score(example.answer, example.answer, example.family) else None


def make_pair(
    example: Example, world: World, rng: random.Random, index: int, split: str, others: list[Example] | None = None
) -> PreferencePair:
    """One pair for one prompt: the reference reply against a dispreferred variant.

    ``others`` (the split's other examples) supply "off_topic" replies: a fine answer to a
    different question.
    """
    # "truncated" matters for RL: a reward model that only ever saw long bad replies learns
    # "shorter is better", and PPO then cuts answers off mid-sentence to please it.
    # "off_topic" too: without it the reward model had never seen a reply to another question
    # and scored "Zara has a horse." above a wrong upper-casing; PPO then answered every
    # prompt it could not solve with a fact (measured: compliance 0.72, oracle win 0.55).
    kinds = ["wrong", "wrong", "evasive", "truncated", "rambling", "rude", "off_topic"]
    kind = rng.choice(kinds)
    rejected = _wrong_answer(example, world, rng) if kind == "wrong" else None
    if kind == "off_topic":
        rejected = _off_topic(example, others or [], rng)
    if rejected is None and kind in ("wrong", "off_topic"):
        kind = "evasive"
    if kind == "evasive":
        rejected = rng.choice(EVASIONS)
    elif kind == "truncated":
        words = example.answer.split(" ")
        cut = rng.randint(1, max(1, len(words) - 1)) if len(words) > 1 else 0
        rejected = " ".join(words[:cut]) if cut else example.answer[: max(1, len(example.answer) // 2)]
    elif kind == "rambling":
        rejected = f"{example.answer} {rng.choice(FILLERS)} {rng.choice(FILLERS)}"
    elif kind == "rude":
        # rude before the answer, after it, or instead of it: the remark is what is disliked
        rejected = rng.choice(
            (f"{rng.choice(RUDE)} {example.answer}", f"{example.answer} {rng.choice(RUDE)}", rng.choice(RUDE))
        )
    assert rejected is not None
    return PreferencePair(
        id=f"pref-{split}-{index}", family=example.family, prompt=example.prompt_messages,
        chosen=example.answer, rejected=rejected, reference=example.answer, kind=kind,
    )


def generate_preferences(
    world: World, train: list[Example], heldout: list[Example], seed: int, num_train: int, num_heldout: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Pairs on the instruction prompts: held-in pairs from SFT train prompts, held-out pairs
    from SFT held-out prompts (so evaluation never scores a prompt the models trained on)."""
    rng_train, rng_held = random.Random(seed * 7 + 1), random.Random(seed * 7 + 2)
    pairs_train = [make_pair(rng_train.choice(train), world, rng_train, i, "train", train) for i in range(num_train)]
    pairs_held = [make_pair(heldout[i % len(heldout)], world, rng_held, i, "heldout", heldout) for i in range(num_heldout)]
    for pair in pairs_train + pairs_held:  # the data must agree with the labeler it stands for
        if oracle_score(pair.chosen, pair.reference, pair.family) <= oracle_score(pair.rejected, pair.reference, pair.family):
            raise AssertionError(f"generated pair {pair.id} contradicts the oracle: {pair}")
    return pairs_train, pairs_held


def to_record(pair: PreferencePair) -> dict[str, Any]:
    """The TRL conversational preference format, plus what evaluation needs."""
    return {
        "id": pair.id, "family": pair.family, "kind": pair.kind, "reference": pair.reference,
        "prompt": pair.prompt,
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }


def from_record(record: dict[str, Any]) -> PreferencePair:
    def reply(turns: Any) -> str:
        return turns[-1]["content"] if isinstance(turns, list) else str(turns)

    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return PreferencePair(
        id=str(record.get("id", "")), family=str(record.get("family", "user")), prompt=prompt,
        chosen=reply(record["chosen"]), rejected=reply(record["rejected"]),
        reference=record.get("reference"), kind=str(record.get("kind", "user")),
    )
