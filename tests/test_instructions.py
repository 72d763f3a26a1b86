"""Generated instruction data: deterministic, true to the world, correct sums, disjoint splits."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from components.common.answer_format import final_answer
from components.data_prep.corpus import NUMBER_WORDS
from components.data_prep.instructions import (
    ANSWER_PREFIX,
    FAMILIES,
    TEXT_WORDS,
    Example,
    check_reply,
    from_record,
    generate_instructions,
    to_record,
    user_prompt,
)
from components.data_prep.world import World, article, build_world

SEED = 1234
NUM = {w: i for i, w in enumerate(NUMBER_WORDS)}


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(SEED, 40)


@pytest.fixture(scope="module")
def splits(world: World) -> tuple[list[Example], list[Example]]:
    return generate_instructions(world, SEED, 700, 140)


def _records(examples: list[Example]) -> list[dict]:
    return [to_record(e) for e in examples]


# -- splits ----------------------------------------------------------------------------------


def test_deterministic(world: World, splits: tuple[list[Example], list[Example]]) -> None:
    again = generate_instructions(world, SEED, 700, 140)
    assert _records(again[0]) == _records(splits[0])
    assert _records(again[1]) == _records(splits[1])
    other = generate_instructions(world, SEED + 1, 700, 140)
    assert _records(other[0]) != _records(splits[0])


def test_counts_ids_and_balance(splits: tuple[list[Example], list[Example]]) -> None:
    train, heldout = splits
    assert len(train) == 700 and len(heldout) == 140
    ids = [e.id for e in train + heldout]
    assert len(set(ids)) == len(ids)
    assert all(e.id.startswith(f"{e.family}-train-") for e in train)
    assert all(e.id.startswith(f"{e.family}-heldout-") for e in heldout)
    for split in (train, heldout):
        counts = Counter(e.family for e in split)
        assert set(counts) == set(FAMILIES)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_heldout_prompts_never_in_train(splits: tuple[list[Example], list[Example]]) -> None:
    train, heldout = splits
    train_prompts = {user_prompt(e) for e in train}
    assert not train_prompts & {user_prompt(e) for e in heldout}
    # Held-out is a fresh stream with distinct prompts where the family has enough of them.
    assert len({user_prompt(e) for e in heldout}) > len(heldout) // 2


def test_train_does_not_depend_on_heldout_size(
    world: World, splits: tuple[list[Example], list[Example]]
) -> None:
    train, _ = generate_instructions(world, SEED, 700, 0)
    assert _records(train) == _records(splits[0])


def test_tiny_world_still_disjoint() -> None:
    small = build_world(7, 2)
    train, heldout = generate_instructions(small, 7, 60, 20)
    assert len(train) == 60 and len(heldout) == 20
    assert not {user_prompt(e) for e in train} & {user_prompt(e) for e in heldout}


def test_bad_counts() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        generate_instructions(build_world(1, 3), 1, -1, 0)


def test_shape_of_examples(splits: tuple[list[Example], list[Example]]) -> None:
    for e in splits[0] + splits[1]:
        assert [m["role"] for m in e.messages] == ["user", "assistant"]
        assert e.messages[-1]["content"] == e.answer
        assert e.prompt_messages == e.messages[:-1]
        assert e.answer == e.answer.strip() and "\n" not in e.answer


def test_several_phrasings_per_family(
    world: World, splits: tuple[list[Example], list[Example]]
) -> None:
    names = "|".join(p.name for p in world.people)
    for family in FAMILIES:
        shapes = {
            re.sub(r"\d+", "N", re.sub(names, "X", user_prompt(e))).split(":")[0]
            for e in splits[0]
            if e.family == family
        }
        assert len(shapes) >= 2, family


# -- answers follow the world ----------------------------------------------------------------

FACT_ANSWERS = {
    "fact_town": (r"(\w+) lives in (\w+)\.", lambda p: p.town),
    "fact_job": (r"(\w+) is (an? \w+)\.", lambda p: article(p.job)),
    "fact_pet": (r"(\w+) has (an? \w+)\.", lambda p: article(p.pet)),
    "fact_color": (r"(\w+)'s favourite colour is (\w+)\.", lambda p: p.color),
}


def test_fact_answers_match_world(
    world: World, splits: tuple[list[Example], list[Example]]
) -> None:
    seen = Counter()
    for e in splits[0] + splits[1]:
        if e.family not in FACT_ANSWERS:
            continue
        pattern, value = FACT_ANSWERS[e.family]
        m = re.fullmatch(pattern, e.answer)
        assert m, e.answer
        name, said = m.groups()
        assert name in user_prompt(e)
        assert said == value(world.person(name)), (e.id, e.answer)
        seen[e.family] += 1
    assert set(seen) == set(FACT_ANSWERS)


def _num(token: str) -> int:
    return NUM[token.lower()] if token.lower() in NUM else int(token)


def test_arithmetic_is_correct(splits: tuple[list[Example], list[Example]]) -> None:
    checked = 0
    for e in splits[0] + splits[1]:
        if e.family != "arithmetic":
            continue
        m = re.fullmatch(r"(\d+) ([+-]) (\d+) = (\d+)\. The answer is (\d+)\.", e.answer)
        assert m, e.answer
        a, op, b, c, final = m.groups()
        a, b, c = int(a), int(b), int(c)
        assert c == (a + b if op == "+" else a - b)
        assert final == str(c) and final_answer(e.answer) == str(c)
        assert 0 <= a <= 20 and 0 <= b <= 20 and 0 <= c <= 40
        # The operands are the numbers the question states, in order (digits or words).
        words = "|".join(NUMBER_WORDS)
        stated = [_num(t) for t in re.findall(rf"\b(\d+|{words})\b", user_prompt(e), re.I)]
        expected = [b, a] if user_prompt(e).startswith("Take ") else [a, b]
        assert stated == expected, (user_prompt(e), e.answer)
        checked += 1
    assert checked > 50


def test_text_tasks(splits: tuple[list[Example], list[Example]]) -> None:
    for e in splits[0] + splits[1]:
        prompt = user_prompt(e)
        if e.family == "uppercase":
            word = next(w for w in re.findall(r"[a-z]+", prompt) if w.upper() == e.answer)
            assert word in TEXT_WORDS
        elif e.family == "reverse_list":
            items = prompt.split(": ", 1)[1].split(", ")
            assert 2 <= len(items) <= 4 and all(w in TEXT_WORDS for w in items)
            assert e.answer == ", ".join(reversed(items))


# -- grading and records ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The answer is 12.", "12"),
        ("3 + 4 = 7. The answer is 7.", "7"),
        ("The answer is 5. No wait. The answer is 6.", None),  # a hedge states no answer
        ("The answer is 7", "7"),
        ("The answer is -3.", "-3"),
        ("The answer is 2.5.", "2.5"),
        ("3 + 4 = 7.", None),
        ("the answer is 7.", None),
        ("", None),
    ],
)
def test_final_answer(reply: str, expected: str | None) -> None:
    assert final_answer(reply) == expected


def test_answer_prefix() -> None:
    assert ANSWER_PREFIX == "The answer is "


def test_check_reply(splits: tuple[list[Example], list[Example]]) -> None:
    e = splits[0][0]
    assert check_reply(e, e.answer) == {"exact": True}
    assert check_reply(e, f"  {e.answer}\n") == {"exact": True}
    assert check_reply(e, e.answer + " Yes.") == {"exact": False}
    assert check_reply(e, e.answer.lower() + "x") == {"exact": False}


def test_record_round_trip(splits: tuple[list[Example], list[Example]]) -> None:
    for e in splits[0][:50] + splits[1][:20]:
        record = json.loads(json.dumps(to_record(e)))
        assert set(record) == {"id", "family", "messages", "answer"}
        assert from_record(record) == e


def test_example_rejects_inconsistent_answer() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(ValueError, match="answer differs"):
        Example(id="x", family="f", messages=turns, answer="bye")
    with pytest.raises(ValueError, match="last turn"):
        Example(id="x", family="f", messages=turns[:1], answer="hi")
