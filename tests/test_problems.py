"""Generated RLVR problems: deterministic, disjoint splits, and answers that really follow.

The answers are re-derived here from the *question text* (not from the generator's own
bookkeeping), and the worked solution is checked equation by equation against that, so a
generator that wrote a plausible but wrong number, or a solution that skips a step, fails.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from components.common.answer_format import ANSWER_PREFIX, final_answer
from components.data_prep.problems import (
    FAMILIES,
    MAX_OPERAND,
    MAX_VALUE,
    Problem,
    from_record,
    generate_problems,
    to_record,
    to_sft_examples,
)
from components.data_prep.world import World, build_world
from components.common.answer_format import normalize_number

SEED = 1234
MAX_DIFFICULTY = 3

_EQUATION = re.compile(r"(\d+) ([-+]) (\d+) = (\d+)\.")
_START = re.compile(r"^[A-Z][a-z]+ has (\d+) [a-z]+\.$")
_ADD = re.compile(r"\b(?:buys|finds|gives (?:him|her)) (\d+) more\b")
_TAKE = re.compile(r"\b(?:gives|sells|loses) (\d+)\b(?! more)")


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(SEED, 40)


@pytest.fixture(scope="module")
def splits(world: World) -> tuple[list[Problem], list[Problem]]:
    return generate_problems(world, SEED, 600, 120, MAX_DIFFICULTY)


def _records(problems: list[Problem]) -> list[dict]:
    return [to_record(p) for p in problems]


def _replay(question: str) -> list[tuple[int, str, int]]:
    """The (before, op, operand) steps a word problem's question describes, read from its text."""
    sentences = re.findall(r"[^.?]+[.?]", question)
    start = _START.match(sentences[0].strip())
    assert start, question
    total, steps = int(start.group(1)), []
    for sentence in sentences[1:-1]:
        add, take = _ADD.search(sentence), _TAKE.search(sentence)
        assert bool(add) != bool(take), sentence
        op, b = ("+", int(add.group(1))) if add else ("-", int(take.group(1)))
        steps.append((total, op, b))
        total = total + b if op == "+" else total - b
    assert sentences[-1].strip().startswith("How many"), question
    return steps


def test_deterministic_by_seed(world: World, splits: tuple[list[Problem], list[Problem]]) -> None:
    again = generate_problems(world, SEED, 600, 120, MAX_DIFFICULTY)
    assert _records(again[0]) == _records(splits[0])
    assert _records(again[1]) == _records(splits[1])
    other = generate_problems(world, SEED + 1, 600, 120, MAX_DIFFICULTY)
    assert _records(other[0]) != _records(splits[0])


def test_counts_ids_and_spread(splits: tuple[list[Problem], list[Problem]]) -> None:
    train, heldout = splits
    assert len(train) == 600 and len(heldout) == 120
    ids = [p.id for p in train + heldout]
    assert len(set(ids)) == len(ids)
    for split in splits:
        assert {p.family for p in split} == set(FAMILIES)
        by_difficulty = Counter(p.difficulty for p in split)
        assert set(by_difficulty) == set(range(1, MAX_DIFFICULTY + 1))
        assert max(by_difficulty.values()) - min(by_difficulty.values()) <= 4, by_difficulty
        for family in FAMILIES:
            per = Counter(p.difficulty for p in split if p.family == family)
            assert max(per.values()) - min(per.values()) <= 2, (family, per)


def test_heldout_prompts_never_in_train(splits: tuple[list[Problem], list[Problem]]) -> None:
    train, heldout = splits
    assert not {p.question for p in heldout} & {p.question for p in train}
    assert len({p.question for p in heldout}) == len(heldout)  # distinct, when there are enough


def test_train_does_not_depend_on_heldout_size(world: World, splits: tuple[list[Problem], list[Problem]]) -> None:
    train, _ = generate_problems(world, SEED, 600, 7, MAX_DIFFICULTY)
    assert _records(train) == _records(splits[0])


def test_word_problem_answers_follow_the_question(splits: tuple[list[Problem], list[Problem]]) -> None:
    seen = 0
    for p in splits[0] + splits[1]:
        if p.family != "word_problem":
            continue
        seen += 1
        steps = _replay(p.question)
        equations = [(int(a), op, int(b), int(c)) for a, op, b, c in _EQUATION.findall(p.solution)]
        assert len(equations) == len(steps) == p.difficulty, p
        for (before, op, b), (a, op2, b2, c) in zip(steps, equations):
            assert (a, op2, b2) == (before, op, b), p
            assert c == (a + b if op == "+" else a - b), p
            assert 1 <= b <= MAX_OPERAND and 0 <= c <= MAX_VALUE, p
        assert p.answer == str(equations[-1][3])
        assert p.solution == " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in equations) + f" {ANSWER_PREFIX}{p.answer}."
    assert seen > 100


def test_largest_and_smallest_are_correct(splits: tuple[list[Problem], list[Problem]]) -> None:
    for p in splits[0] + splits[1]:
        if p.family not in ("largest", "smallest"):
            continue
        numbers = [int(n) for n in p.question.split(":")[1].rstrip("?").split(",")]
        assert len(numbers) == p.difficulty + 1 == len(set(numbers)), p
        expected = max(numbers) if p.family == "largest" else min(numbers)
        assert p.answer == str(expected)
        assert p.solution == f"The {p.family} is {expected}. {ANSWER_PREFIX}{expected}."


def test_answers_are_canonical_and_readable_by_the_verifier(splits: tuple[list[Problem], list[Problem]]) -> None:
    for p in splits[0] + splits[1]:
        assert normalize_number(p.answer) == p.answer
        assert final_answer(p.solution) == p.answer
        assert p.prompt[-1]["role"] == "user" and len(p.prompt) == 1


def test_record_round_trip(splits: tuple[list[Problem], list[Problem]]) -> None:
    for p in splits[0][:50] + splits[1][:50]:
        record = to_record(p)
        assert set(record) == {"id", "family", "difficulty", "prompt", "answer", "solution"}
        assert from_record(record) == p


def test_sft_examples_teach_the_worked_solution(splits: tuple[list[Problem], list[Problem]]) -> None:
    problems = splits[0][:20] + [Problem(id="u", family="user", difficulty=1, prompt=[{"role": "user", "content": "2+2?"}], answer="4")]
    examples = to_sft_examples(problems)
    assert len(examples) == 20  # the problem without a solution has nothing to imitate
    for p, e in zip(problems, examples):
        assert e.family == p.family and e.answer == p.solution
        assert e.messages == [*p.prompt, {"role": "assistant", "content": p.solution}]


def test_difficulty_knob(world: World) -> None:
    easy, _ = generate_problems(world, SEED, 60, 10, 1)
    assert {p.difficulty for p in easy} == {1}
    hard, _ = generate_problems(world, SEED, 100, 10, 5)
    assert {p.difficulty for p in hard} == set(range(1, 6))
    assert max(len(_EQUATION.findall(p.solution)) for p in hard if p.family == "word_problem") == 5


def test_bad_arguments_and_inconsistent_problems(world: World) -> None:
    with pytest.raises(ValueError, match="num_train"):
        generate_problems(world, SEED, -1, 10, 3)
    with pytest.raises(ValueError, match="max_difficulty"):
        generate_problems(world, SEED, 10, 10, 0)
    user = [{"role": "user", "content": "2+2?"}]
    with pytest.raises(ValueError, match="must end with"):
        Problem(id="x", family="f", difficulty=1, prompt=user, answer="4", solution="2 + 2 = 5. The answer is 5.")
    with pytest.raises(ValueError, match="user turn"):
        Problem(id="x", family="f", difficulty=1, prompt=[{"role": "assistant", "content": "hi"}], answer="4")
    with pytest.raises(ValueError, match="difficulty"):
        Problem(id="x", family="f", difficulty=0, prompt=user, answer="4")
