"""Instruction/response pairs about the synthetic world, for SFT and for grading it.

Why these tasks: after pre-training, the model continues text; SFT should teach it to
*answer*. Every task here has one short, canonical reply that follows from the ``World`` (or
from the instruction itself), so

* a ~1M-parameter model can learn the mapping in a couple of CPU minutes: the facts were
  already stated in the pre-training corpus, the answers re-use its phrasings ("Mira lives
  in Ashford."), and the text tasks use only words from the corpus vocabulary;
* grading is an exact string match, with no judge model (``check_reply``);
* arithmetic replies end in a fixed ``"The answer is N."`` so that a later RL stage can verify
  them with ``components.common.answer_format.final_answer`` whatever reasoning precedes the final answer.

Each question has several phrasings, so a model that memorised one sentence pattern fails on
the others. Train and held-out examples come from separate RNG streams, and a seeded hash
reserves a share of all possible user prompts for held-out use only: no held-out prompt ever
appears in the training set, even in families whose prompt space is small enough for the
training set to cover all of the rest (40 people x 3 phrasings per fact).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from components.common.answer_format import ANSWER_PREFIX
from components.data_prep.corpus import ITEMS, capitalize_first, number_word, stream_seed
from components.data_prep.world import (
    COLORS,
    FOODS,
    JOBS,
    PETS,
    TOWN_FEATURES,
    Person,
    World,
    article,
)

ROLES = ("system", "user", "assistant")

# One user prompt in HELDOUT_EVERY (chosen by a seeded hash of its text) is held-out only.
HELDOUT_EVERY = 8
# Draws tried before deciding that a family cannot supply a prompt for a split (tiny worlds).
DRAW_BUDGET = 200
# Share of arithmetic operands written as words ("three"), as in the corpus, so the model
# must map both spellings to the same number; the worked answer always uses digits.
WORDS_SHARE = 0.2

# Short words the corpus uses, for the text tasks: the model knows them as tokens already.
TEXT_WORDS: tuple[str, ...] = tuple(
    sorted(set(JOBS + PETS + COLORS + FOODS + TOWN_FEATURES + tuple(p for _, p in ITEMS)))
)

@dataclass(frozen=True)
class Example:
    """One conversation whose last turn is the expected assistant reply.

    ``answer`` duplicates the last assistant content on purpose: evaluation prompts the model
    with ``messages[:-1]`` and compares its reply with ``answer``, and keeping both makes a
    stored record self-describing. ``__post_init__`` refuses an example where they differ.
    """

    id: str
    family: str
    messages: list[dict[str, str]]
    answer: str

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError(f"example {self.id!r} has no messages")
        for m in self.messages:
            if m.get("role") not in ROLES:
                raise ValueError(f"example {self.id!r}: unknown role {m.get('role')!r}")
        last = self.messages[-1]
        if last["role"] != "assistant":
            raise ValueError(f"example {self.id!r}: the last turn must be the assistant's")
        if last["content"] != self.answer:
            raise ValueError(f"example {self.id!r}: answer differs from the last assistant turn")

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation without the expected reply: what the model is given at eval time."""
        return self.messages[:-1]


def user_prompt(example: Example) -> str:
    """All user turns joined by newlines: the text that must not repeat across splits."""
    return "\n".join(m["content"] for m in example.messages if m["role"] == "user")


def check_reply(example: Example, reply: str) -> dict[str, bool]:
    """Grade a model reply by exact match, ignoring surrounding whitespace.

    Stripping forgives a trailing newline from decoding; anything else (case, punctuation,
    extra words) counts as wrong, since every task has a single canonical reply.
    """
    return {"exact": reply.strip() == example.answer.strip()}


def to_record(example: Example) -> dict[str, Any]:
    """JSON-able form, one per line of a JSONL file; ``from_record`` reverses it."""
    return {
        "id": example.id,
        "family": example.family,
        "messages": [{"role": m["role"], "content": m["content"]} for m in example.messages],
        "answer": example.answer,
    }


def from_record(d: dict[str, Any]) -> Example:
    """Inverse of ``to_record``: a missing key raises ``KeyError``, a mismatch ``ValueError``.

    Meant for records this module wrote; user files go through ``chat_loaders`` instead, which
    reports problems with file and line.
    """
    return Example(
        id=str(d["id"]),
        family=str(d["family"]),
        messages=[{"role": m["role"], "content": m["content"]} for m in d["messages"]],
        answer=d["answer"],
    )


# -- task families ---------------------------------------------------------------------------
# Each takes (world, rng) and returns one Example with an empty id; ``generate_instructions``
# names it. Answers are built only from World fields, so they can never contradict the corpus.


def _example(family: str, user: str, answer: str) -> Example:
    return Example(
        id="",
        family=family,
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        answer=answer,
    )


def _count(n: str, item: tuple[str, str]) -> str:
    """"1 apple" / "one apple" / "3 apples": ``n`` is already spelled as digits or a word."""
    return f"{n} {item[0] if n == '1' or n == 'one' else item[1]}"


def fact_town(world: World, rng: random.Random) -> Example:
    """"Where does Mira live?" -> "Mira lives in Ashford." (the corpus' own sentence)."""
    p = rng.choice(world.people)
    question = rng.choice(
        (
            f"Where does {p.name} live?",
            f"In which town does {p.name} live?",
            f"What town does {p.name} live in?",
        )
    )
    return _example("fact_town", question, f"{p.name} lives in {p.town}.")


def fact_job(world: World, rng: random.Random) -> Example:
    """"What is Mira's job?" -> "Mira is a baker."."""
    p = rng.choice(world.people)
    question = rng.choice(
        (
            f"What is {p.name}'s job?",
            f"What does {p.name} do for work?",
            f"What work does {p.name} do?",
        )
    )
    return _example("fact_job", question, f"{p.name} is {article(p.job)}.")


def fact_pet(world: World, rng: random.Random) -> Example:
    """"What pet does Mira have?" -> "Mira has a cat."."""
    p = rng.choice(world.people)
    question = rng.choice(
        (
            f"What pet does {p.name} have?",
            f"What is {p.name}'s pet?",
            f"Which animal does {p.name} keep at home?",
        )
    )
    return _example("fact_pet", question, f"{p.name} has {article(p.pet)}.")


def fact_color(world: World, rng: random.Random) -> Example:
    """"What is Mira's favourite colour?" -> "Mira's favourite colour is blue."."""
    p = rng.choice(world.people)
    question = rng.choice(
        (
            f"What is {p.name}'s favourite colour?",
            f"Which colour does {p.name} like best?",
            f"What colour does {p.name} love?",
        )
    )
    return _example("fact_color", question, f"{p.name}'s favourite colour is {p.color}.")


def other_name(world: World, p: Person, rng: random.Random) -> str:
    names = [o.name for o in world.people if o.name != p.name]
    return rng.choice(names) if names else "a friend"


def arithmetic(world: World, rng: random.Random) -> Example:
    """A sum or difference of numbers 0-20, bare or as a corpus-style story.

    The reply is the worked equation and then the fixed final-answer sentence, e.g.
    "3 + 4 = 7. The answer is 7.": one step to learn, and a format RL can verify.
    """
    kind = rng.choice(("plus", "minus", "buy", "give", "find", "together"))
    words = rng.random() < WORDS_SHARE

    def num(n: int) -> str:
        return number_word(n) if words else str(n)

    p = rng.choice(world.people)
    item = rng.choice(ITEMS)
    he, He, plural = p.pronoun, capitalize_first(p.pronoun), item[1]
    if kind in ("minus", "give"):
        a = rng.randint(1, 20)
        b = rng.randint(0 if kind == "minus" else 1, a)
        op, c = "-", a - b
    else:
        low = 0 if kind == "plus" else 1
        a, b = rng.randint(low, 20), rng.randint(low, 20)
        op, c = "+", a + b
    x, y = num(a), num(b)
    if kind == "plus":
        question = rng.choice(
            (f"What is {x} plus {y}?", f"How much is {x} and {y}?", f"Add {x} and {y}.")
        )
    elif kind == "minus":
        question = rng.choice(
            (f"What is {x} minus {y}?", f"Take {y} away from {x}. What is left?")
        )
    elif kind == "buy":
        more = f"{y} more {item[0] if b == 1 else plural}"
        question = rng.choice(
            (
                f"{p.name} has {_count(x, item)}. {He} buys {more}. "
                f"How many {plural} does {he} have now?",
                f"{p.name} has {_count(x, item)} and buys {more}. "
                f"How many {plural} does {p.name} have now?",
            )
        )
    elif kind == "give":
        to = other_name(world, p, rng)
        question = rng.choice(
            (
                f"{p.name} has {_count(x, item)}. {He} gives {_count(y, item)} to {to}. "
                f"How many {plural} does {he} have left?",
                f"{p.name} has {_count(x, item)} and gives {_count(y, item)} to {to}. "
                f"How many {plural} are left?",
            )
        )
    elif kind == "find":
        more = f"{y} more {item[0] if b == 1 else plural}"
        question = rng.choice(
            (
                f"In the morning, {p.name} finds {_count(x, item)}. In the evening, {he} "
                f"finds {more}. How many {plural} does {he} find in all?",
                f"{p.name} finds {_count(x, item)} and then {more}. "
                f"How many {plural} does {he} find in all?",
            )
        )
    else:
        q = other_name(world, p, rng)
        question = rng.choice(
            (
                f"{p.name} has {_count(x, item)} and {q} has {_count(y, item)}. "
                f"How many {plural} do they have together?",
                f"{p.name} has {_count(x, item)}. {q} has {_count(y, item)}. "
                f"How many {plural} do they have in all?",
            )
        )
    return _example("arithmetic", question, f"{a} {op} {b} = {c}. {ANSWER_PREFIX}{c}.")


def uppercase(world: World, rng: random.Random) -> Example:
    """"Write this word in capital letters: baker" -> "BAKER" (a corpus word, so it is known)."""
    w = rng.choice(TEXT_WORDS)
    question = rng.choice(
        (
            f"Write this word in capital letters: {w}",
            f"Write the word {w} in capital letters.",
            f"Make this word uppercase: {w}",
        )
    )
    return _example("uppercase", question, w.upper())


def reverse_list(world: World, rng: random.Random) -> Example:
    """"Reverse this list: cat, dog, fish" -> "fish, dog, cat" (2-4 distinct corpus words).

    Pure copying in a new order: attention can learn it without knowing the words' meaning,
    and the short lists keep it within reach of a tiny model.
    """
    words = rng.sample(TEXT_WORDS, rng.randint(2, 4))
    shown = ", ".join(words)
    question = rng.choice(
        (
            f"Reverse this list: {shown}",
            f"Write this list in reverse order: {shown}",
            f"Say these words backwards: {shown}",
        )
    )
    return _example("reverse_list", question, ", ".join(reversed(words)))


FAMILIES: dict[str, Callable[[World, random.Random], Example]] = {
    "fact_town": fact_town,
    "fact_job": fact_job,
    "fact_pet": fact_pet,
    "fact_color": fact_color,
    "arithmetic": arithmetic,
    "uppercase": uppercase,
    "reverse_list": reverse_list,
}


# The shape of a well-formed reply per family: what "follows the expected format" means in
# evaluation, independent of whether the content is right. Families without an entry (user
# data) are only checked for a clean, EOS-terminated assistant turn.
REPLY_FORMATS: dict[str, re.Pattern[str]] = {
    "fact_town": re.compile(r"^[A-Z][a-z]+ lives in [A-Z][a-z]+\.$"),
    "fact_job": re.compile(r"^[A-Z][a-z]+ is an? [a-z ]+\.$"),
    "fact_pet": re.compile(r"^[A-Z][a-z]+ has an? [a-z ]+\.$"),
    "fact_color": re.compile(r"^[A-Z][a-z]+'s favourite colour is [a-z]+\.$"),
    "arithmetic": re.compile(r"^\d+ [-+] \d+ = -?\d+\. " + re.escape(ANSWER_PREFIX) + r"-?\d+\.$"),
    "uppercase": re.compile(r"^[A-Z]+$"),
    "reverse_list": re.compile(r"^[a-z]+(, [a-z]+)+$"),
}


def well_formed(family: str, reply: str) -> bool:
    """Does ``reply`` have the shape its family's replies have (content not checked)?"""
    pattern = REPLY_FORMATS.get(family)
    text = reply.strip()
    return bool(text) and (pattern is None or bool(pattern.match(text)))


# -- the splits ------------------------------------------------------------------------------


def is_heldout_prompt(prompt: str, seed: int) -> bool:
    """Whether ``prompt`` is reserved for the held-out split (a stable, seeded 1-in-N hash).

    Deciding per prompt text, not per draw, is what makes the splits disjoint by construction
    and keeps the training set the same whatever ``num_heldout`` is.
    """
    digest = hashlib.sha256(f"fromscratch:sft-split:{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_EVERY == 0


def _draw(
    family: str,
    world: World,
    rng: random.Random,
    accept: Callable[[str], bool],
    avoid: set[str] | None,
) -> Example | None:
    """One example of ``family`` whose prompt ``accept`` allows, or ``None`` if none turns up.

    With ``avoid`` given, prompts not in it are tried first (so held-out covers as many
    distinct prompts as exist) before repeats are allowed.
    """
    passes = [avoid, None] if avoid is not None else [None]
    for banned in passes:
        for _ in range(DRAW_BUDGET):
            ex = FAMILIES[family](world, rng)
            prompt = user_prompt(ex)
            if accept(prompt) and (banned is None or prompt not in banned):
                return ex
    return None


def _fill(
    world: World, rng: random.Random, n: int, split: str, accept: Callable[[str], bool]
) -> list[Example]:
    """``n`` examples with families balanced (counts differ by at most one), in shuffled order.

    A family that cannot supply an allowed prompt (possible only in a very small world, where
    the hash may reserve all or none of its few prompts) is dropped and its slots go to the
    others, rather than looping forever.
    """
    names = list(FAMILIES)
    order = [names[i % len(names)] for i in range(n)]
    rng.shuffle(order)
    open_families = list(names)
    seen: set[str] = set()
    out: list[Example] = []
    for i, family in enumerate(order):
        ex = None
        while ex is None:
            if family in open_families:
                ex = _draw(family, world, rng, accept, seen if split == "heldout" else None)
                if ex is not None:
                    break
                open_families.remove(family)
            if not open_families:
                raise ValueError(
                    f"cannot draw {split} instruction examples: no family has an allowed "
                    f"prompt in this world of {len(world.people)} people"
                )
            family = open_families[i % len(open_families)]
        seen.add(user_prompt(ex))
        out.append(replace(ex, id=f"{ex.family}-{split}-{i}"))
    return out


def generate_instructions(
    world: World, seed: int, num_train: int, num_heldout: int
) -> tuple[list[Example], list[Example]]:
    """(train, held-out) instruction examples about ``world``, fully determined by ``seed``.

    Families are balanced in each split. The splits use separate RNG streams, and a held-out
    example's user prompt never occurs in the training set (see ``is_heldout_prompt``).
    Held-out prefers distinct prompts; small families repeat prompts once they run out.
    """
    if num_train < 0 or num_heldout < 0:
        raise ValueError(
            f"num_train and num_heldout must be >= 0, got {num_train} and {num_heldout}"
        )
    if not world.people:
        raise ValueError("the world has no people to ask about")
    train = _fill(
        world,
        random.Random(stream_seed(seed, "sft-train")),
        num_train,
        "train",
        lambda prompt: not is_heldout_prompt(prompt, seed),
    )
    heldout = _fill(
        world,
        random.Random(stream_seed(seed, "sft-heldout")),
        num_heldout,
        "heldout",
        lambda prompt: is_heldout_prompt(prompt, seed),
    )
    return train, heldout
