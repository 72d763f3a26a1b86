"""Problems with one verifiable answer, for RLVR (and a worked share of them for SFT).

Why these problems: GRPO learns only from groups of sampled replies whose rewards differ, so
the model must already get *some* problems right after SFT, and the reward must be exact. Every
generated problem therefore has

* one correct answer, a small whole number, that a verifier can compare without a judge;
* a defined series of steps: the worked ``solution`` writes one equation per step and ends with
  the fixed final-answer sentence ("3 + 2 = 5. 5 - 1 = 4. The answer is 4."), the same reply
  style as the ``arithmetic`` SFT family, so SFT teaches the format RLVR later rewards;
* a ``difficulty`` knob: the number of steps (word problems) or one less than the number of
  values to compare (largest/smallest), 1..``max_difficulty``.

Word problems are told about the corpus' own people and items ("Mira has 3 apples. She buys 2
more. ..."), so the tiny model already knows every word. Operands are 1-9 and every running
total stays within 0..``MAX_VALUE`` (20), the range the corpus' arithmetic covers.

Splits follow ``instructions``: separate RNG streams per split, and the same seeded hash of the
prompt text (``is_heldout_prompt``) reserves held-out prompts, so no held-out problem's prompt
ever appears in training, in RLVR or in the SFT examples made from training problems.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.data_prep.corpus import ITEMS, capitalize_first, stream_seed
from components.data_prep.instructions import (
    ANSWER_PREFIX,
    ROLES,
    Example,
    is_heldout_prompt,
    other_name,
)
from components.data_prep.world import Person, World

# Every running total of a word problem stays in 0..MAX_VALUE; every step's operand in 1..9.
MAX_VALUE = 20
MAX_OPERAND = 9
# Word problems are the point of RLVR; comparisons are the easy wins GRPO needs early on.
FAMILY_WEIGHTS: dict[str, int] = {"word_problem": 2, "largest": 1, "smallest": 1}
# Draws tried per problem before a (family, difficulty) slot is declared impossible.
DRAW_BUDGET = 500


@dataclass(frozen=True)
class Problem:
    """A prompt (chat messages ending with the user's question) and its one correct answer.

    ``answer`` is the canonical number as a string ("7", "-3", "2.5"); ``solution`` is a worked
    reply ending with "The answer is <answer>." when known (generated data, question/answer
    user data) and ``None`` otherwise. ``__post_init__`` refuses an inconsistent problem, so a
    bad generator or loader fails here rather than as a silently wrong reward later.
    """

    id: str
    family: str
    difficulty: int
    prompt: list[dict[str, str]]
    answer: str
    solution: str | None = None

    def __post_init__(self) -> None:
        if not self.prompt or self.prompt[-1].get("role") != "user":
            raise ValueError(f"problem {self.id!r}: the prompt must end with a user turn")
        for m in self.prompt:
            if m.get("role") not in ROLES:
                raise ValueError(f"problem {self.id!r}: unknown role {m.get('role')!r}")
        if not self.answer:
            raise ValueError(f"problem {self.id!r} has no answer")
        if self.difficulty < 1:
            raise ValueError(f"problem {self.id!r}: difficulty must be >= 1, got {self.difficulty}")
        if self.solution is not None and not self.solution.endswith(final_sentence(self.answer)):
            raise ValueError(
                f"problem {self.id!r}: the solution must end with {final_sentence(self.answer)!r}"
            )

    @property
    def question(self) -> str:
        """The last user turn: the text the held-out split is decided on."""
        return self.prompt[-1]["content"]


def final_sentence(answer: str) -> str:
    """"The answer is 7.": how every worked solution ends, and what the verifiers look for."""
    return f"{ANSWER_PREFIX}{answer}."


def to_record(problem: Problem) -> dict[str, Any]:
    """JSON-able form, one per line of ``rlvr/*.jsonl``; ``from_record`` reverses it."""
    return {
        "id": problem.id,
        "family": problem.family,
        "difficulty": problem.difficulty,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in problem.prompt],
        "answer": problem.answer,
        "solution": problem.solution,
    }


def from_record(d: dict[str, Any]) -> Problem:
    """Inverse of ``to_record``, for records this project wrote (user files go through
    ``problem_loaders``, which report problems with file and line)."""
    return Problem(
        id=str(d["id"]),
        family=str(d["family"]),
        difficulty=int(d["difficulty"]),
        prompt=[{"role": m["role"], "content": m["content"]} for m in d["prompt"]],
        answer=str(d["answer"]),
        solution=d.get("solution"),
    )


def to_sft_examples(problems: list[Problem]) -> list[Example]:
    """Worked problems as SFT conversations (prompt + solution), so SFT teaches the answer
    format RLVR rewards. Problems without a solution have nothing to imitate and are skipped."""
    return [
        Example(
            id=f"sft-{p.id}",
            family=p.family,
            messages=[*p.prompt, {"role": "assistant", "content": p.solution}],
            answer=p.solution,
        )
        for p in problems
        if p.solution is not None
    ]


# -- families --------------------------------------------------------------------------------
# Each takes (world, rng, difficulty) and returns (question, answer, worked solution).

Draft = tuple[str, int, str]


def _amount(n: int, item: tuple[str, str]) -> str:
    return f"{n} {item[0] if n == 1 else item[1]}"


def _step(p: Person, other: str, item: tuple[str, str], total: int, rng: random.Random) -> tuple[str, str, int]:
    """One change to ``total``: (sentence with "{he}" as its subject slot, "+"/"-", operand).

    Adds only while the total can grow without passing ``MAX_VALUE``, takes only what is
    there, so every intermediate value stays in 0..MAX_VALUE.
    """
    can_add, can_take = total < MAX_VALUE, total > 0
    if can_add and (not can_take or rng.random() < 0.5):
        b = rng.randint(1, min(MAX_OPERAND, MAX_VALUE - total))
        noun = f" {item[0] if b == 1 else item[1]}" if rng.random() < 0.5 else ""
        sentence = rng.choice(
            (
                f"{{he}} buys {b} more{noun}.",
                f"{{he}} finds {b} more{noun}.",
                f"{other} gives {p.object_pronoun} {b} more{noun}.",
            )
        )
        return sentence, "+", b
    b = rng.randint(1, min(MAX_OPERAND, total))
    thing = _amount(b, item) if rng.random() < 0.5 else str(b)
    sentence = rng.choice(
        (f"{{he}} gives {thing} to {other}.", f"{{he}} sells {thing}.", f"{{he}} loses {thing}.")
    )
    return sentence, "-", b


def word_problem(world: World, rng: random.Random, difficulty: int) -> Draft:
    """"Mira has 3 apples. She buys 2 more. Then she gives 1 to Tom. How many apples does she
    have now?" -> "3 + 2 = 5. 5 - 1 = 4. The answer is 4." (``difficulty`` steps)."""
    p = rng.choice(world.people)
    item = rng.choice(ITEMS)
    total = rng.randint(1, MAX_OPERAND)
    sentences = [f"{p.name} has {_amount(total, item)}."]
    equations = []
    for k in range(difficulty):
        text, op, b = _step(p, other_name(world, p, rng), item, total, rng)
        new = total + b if op == "+" else total - b
        equations.append(f"{total} {op} {b} = {new}.")
        total = new
        if k == 0:
            sentences.append(capitalize_first(text.replace("{he}", p.pronoun)))
        else:
            lead = rng.choice(("Then", "After that,", "Later,"))
            sentences.append(f"{lead} {text.replace('{he}', p.pronoun)}")
    sentences.append(
        rng.choice(
            (
                f"How many {item[1]} does {p.pronoun} have now?",
                f"How many {item[1]} does {p.name} have now?",
                f"How many {item[1]} does {p.pronoun} have in the end?",
            )
        )
    )
    return " ".join(sentences), total, " ".join(equations + [final_sentence(str(total))])


def _compare(word: str, synonym: str, pick: Callable[[list[int]], int]) -> Callable[[World, random.Random, int], Draft]:
    """A family asking for the ``word`` ("largest") of ``difficulty + 1`` distinct numbers."""

    def family(world: World, rng: random.Random, difficulty: int) -> Draft:
        numbers = rng.sample(range(MAX_VALUE + 1), difficulty + 1)
        shown = ", ".join(map(str, numbers))
        question = rng.choice(
            (
                f"Which number is the {word}: {shown}?",
                f"What is the {word} of these numbers: {shown}?",
                f"Which is the {synonym} number here: {shown}?",
            )
        )
        value = pick(numbers)
        return question, value, f"The {word} is {value}. {final_sentence(str(value))}"

    family.__doc__ = f'"Which number is the {word}: 4, 9, 2?" -> "The {word} is N. The answer is N."'
    return family


FAMILIES: dict[str, Callable[[World, random.Random, int], Draft]] = {
    "word_problem": word_problem,
    "largest": _compare("largest", "biggest", max),
    "smallest": _compare("smallest", "lowest", min),
}


# -- the splits ------------------------------------------------------------------------------


def _slots(n: int, max_difficulty: int, rng: random.Random) -> list[tuple[str, int]]:
    """``n`` (family, difficulty) slots: families by ``FAMILY_WEIGHTS``, difficulties evenly
    spread within each family (counts differ by at most one per cycle), in shuffled order."""
    cycle = [
        (family, d)
        for family, weight in FAMILY_WEIGHTS.items()
        for _ in range(weight)
        for d in range(1, max_difficulty + 1)
    ]
    order = [cycle[i % len(cycle)] for i in range(n)]
    rng.shuffle(order)
    return order


def _split(world: World, seed: int, n: int, max_difficulty: int, split: str) -> list[Problem]:
    """``n`` problems of ``split`` whose prompts the seeded hash assigns to that split.

    Held-out problems avoid repeating a prompt while distinct ones can still be found (more
    distinct problems measure more); training problems may repeat, like any sampled data.
    """
    rng = random.Random(stream_seed(seed, f"rlvr-{split}"))
    want_heldout = split == "heldout"
    seen: set[str] = set()
    problems: list[Problem] = []
    for i, (family, difficulty) in enumerate(_slots(n, max_difficulty, rng)):
        draft = None
        for attempt in range(2 * DRAW_BUDGET):
            question, answer, solution = FAMILIES[family](world, rng, difficulty)
            fresh = not want_heldout or question not in seen or attempt >= DRAW_BUDGET
            if is_heldout_prompt(question, seed) == want_heldout and fresh:
                draft = question, answer, solution
                break
        if draft is None:
            raise ValueError(
                f"cannot draw a {split} {family} problem of difficulty {difficulty} in this world"
            )
        question, answer, solution = draft
        seen.add(question)
        problems.append(
            Problem(
                id=f"{family}-{split}-{i}",
                family=family,
                difficulty=difficulty,
                prompt=[{"role": "user", "content": question}],
                answer=str(answer),
                solution=solution,
            )
        )
    return problems


def generate_problems(
    world: World, seed: int, num_train: int, num_heldout: int, max_difficulty: int
) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems about ``world``, fully determined by ``seed``.

    Difficulties 1..``max_difficulty`` are spread evenly in each split; ids are
    ``<family>-<split>-<index>`` and so unique; a held-out prompt never occurs in train.
    """
    if num_train < 0 or num_heldout < 0:
        raise ValueError(f"num_train and num_heldout must be >= 0, got {num_train} and {num_heldout}")
    if max_difficulty < 1:
        raise ValueError(f"max_difficulty must be >= 1, got {max_difficulty}")
    if not world.people:
        raise ValueError("the world has no people to tell word problems about")
    train = _split(world, seed, num_train, max_difficulty, "train")
    heldout = _split(world, seed, num_heldout, max_difficulty, "heldout")
    return train, heldout
