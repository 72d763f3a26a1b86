"""RLVR verifiers: number normalisation, final-answer parsing, the two rewards and the registry."""

from __future__ import annotations

import pytest

from components.common.answer_format import ANSWER_PREFIX, MAX_DIGITS, final_answer, normalize_number
from components.data_prep.instructions import ANSWER_PREFIX as WRITTEN_PREFIX
from components.rlvr.verifiers import (
    VERIFIERS,
    completion_text,
    correctness_reward,
    format_reward,
    get_verifiers,
    is_correct,
    reply_reward,
    solution_steps,
    steps_reward,
    steps_score,
)

HUGE = "123456789" * 11  # 99 digits: past float precision and int64, still under MAX_DIGITS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", "5"),
        ("  42 \n", "42"),
        ("7.", "7"),
        ("+3", "3"),
        ("-12", "-12"),
        ("1,234", "1234"),
        ("1,234,567", "1234567"),
        ("-1,000.50", "-1000.5"),
        ("\u0663", "3"),  # Arabic-Indic three
        ("\u0661\u0662", "12"),
        ("\uff13", "3"),  # fullwidth three
        ("\uff11\uff0c\uff12\uff13\uff14", "1234"),  # fullwidth digits and comma
        ("\u22125", "-5"),  # unicode minus
        ("-0", "0"),
        ("-0.00", "0"),
        ("2.50", "2.5"),
        ("4.0", "4"),
        ("007", "7"),
        (".5", "0.5"),
        ("100", "100"),
        ("1200.000", "1200"),
        ("3/4", "3/4"),
        ("6/8", "3/4"),
        ("-6/8", "-3/4"),
        ("4/2", "2"),
        ("0/5", "0"),
        (HUGE, HUGE),
        ("-" + "9" * 80 + ".10", "-" + "9" * 80 + ".1"),
        ("1" + "0" * (MAX_DIGITS - 1), "1" + "0" * (MAX_DIGITS - 1)),
    ],
)
def test_normalize_number(text: str, expected: str) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "seven",
        "1,23",
        "12,34,567",
        ",123",
        "1,2345",
        "1 234",
        "1e3",
        "inf",
        "nan",
        "5..",
        "--5",
        "+-5",
        "3/0",
        "3/-4",
        "1.5/2",
        "\u00b2",  # superscript two: a digit, but not a decimal digit
        "5 apples",
        "1" * (MAX_DIGITS + 1),
        "x" * 10_000,
    ],
)
def test_normalize_number_rejects(text: str) -> None:
    assert normalize_number(text) is None


def test_huge_integers_are_exact_not_float() -> None:
    # Through float both would print the same; exact normalisation keeps them apart.
    a, b = "9" * 40, "9" * 39 + "8"
    assert normalize_number(a) == a and normalize_number(b) == b
    assert normalize_number(a) != normalize_number(b)


def test_final_answer_of_a_worked_reply() -> None:
    reply = f"3 + 4 = 7. 7 - 2 = 5. {ANSWER_PREFIX}5."
    assert final_answer(reply) == "5"
    assert final_answer("So. The answer is 2.5.") == "2.5"
    assert final_answer("The answer is -1,234.") == "-1,234"
    assert final_answer("The answer is 5.0") == "5.0"


def test_the_data_prep_writer_uses_the_shared_prefix() -> None:
    assert WRITTEN_PREFIX is ANSWER_PREFIX


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "3 + 4 = 7.",
        "the answer is 5.",  # the prefix is case-sensitive
        "THE ANSWER IS 5.",
        "The answer is",
        "The answer is 4. No wait, The answer is 5.",  # a hedge
        "The answer is 4. The answer is 5. The answer is 4.",
    ],
)
def test_final_answer_none(reply: str) -> None:
    assert final_answer(reply) is None


def test_repeated_same_answer_is_fine() -> None:
    assert final_answer("The answer is 5. Indeed, The answer is 5.") == "5"
    # Equal after normalising counts as the same answer; the last one is returned as written.
    assert final_answer("The answer is 5. The answer is 5.0") == "5.0"
    assert normalize_number(final_answer("The answer is 5.")) == normalize_number(
        final_answer("The answer is 5.0")
    )


def test_answer_mid_reply_followed_by_text() -> None:
    reply = "The answer is 12. I hope this helps!"
    assert final_answer(reply) == "12"
    assert is_correct(reply, "12")


@pytest.mark.parametrize(
    ("reply", "answer", "correct"),
    [
        ("2 + 3 = 5. The answer is 5.", "5", True),
        ("The answer is 5.", "5.0", True),
        ("The answer is 5.0", "5", True),
        ("The answer is 1,234.", "1234", True),
        ("The answer is \u22123.", "-3", True),
        ("The answer is 6/8.", "3/4", True),
        ("The answer is 6.", "5", False),
        ("The answer is 0.5.", "1/2", False),  # documented: fractions stay fractions
        ("the answer is 5.", "5", False),
        ("5", "5", False),  # a bare number is not a final answer
        ("The answer is 4. The answer is 5.", "5", False),  # hedging
        ("The answer is Ashford.", "Ashford", True),  # non-numeric: exact string
        ("The answer is ashford.", "Ashford", False),
        ("The answer is five.", "5", False),
    ],
)
def test_is_correct(reply: str, answer: str, correct: bool) -> None:
    assert is_correct(reply, answer) is correct


def test_correctness_reward_on_strings() -> None:
    completions = ["1 + 1 = 2. The answer is 2.", "The answer is 3.", "no idea", "The answer is 2.0"]
    answers = ["2", "2", "2", "2"]
    assert correctness_reward(["p"] * 4, completions, answer=answers) == [1.0, 0.0, 0.0, 1.0]


def test_rewards_on_conversational_completions() -> None:
    def msg(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    completions = [
        msg("3 + 4 = 7. The answer is 7."),
        msg("The answer is 7. Bye."),
        msg("The answer is 8."),
        msg("Seven."),
    ]
    prompts = [[{"role": "user", "content": "What is 3 + 4?"}]] * 4
    # Extra columns TRL passes (other dataset columns, trainer state) must be accepted.
    extra = {"family": ["arith"] * 4, "trainer_state": None}
    assert correctness_reward(prompts, completions, answer=["7"] * 4, **extra) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward(prompts, completions, answer=["7"] * 4, **extra) == [1.0, 0.5, 1.0, 0.0]


def test_correctness_reward_none_answer_and_missing_column() -> None:
    assert correctness_reward(["p", "q"], ["The answer is 1.", "The answer is 1."], answer=["1", None]) == [
        1.0,
        None,
    ]
    with pytest.raises(ValueError, match="answer"):
        correctness_reward(["p"], ["The answer is 1."])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        correctness_reward(["p", "q"], ["a", "b"], answer=["1"])


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("3 + 4 = 7. The answer is 7.", 1.0),
        ("The answer is 7.\n\n", 1.0),
        ("The answer is 7. The answer is 7.", 1.0),
        ("The answer is 7. Hope that helps.", 0.5),
        ("The answer is 7", 0.5),  # no full stop
        ("The answer is 7..", 0.5),
        ("", 0.0),
        ("   ", 0.0),
        ("7", 0.0),
        ("the answer is 7.", 0.0),
        ("The answer is 7. The answer is 8.", 0.0),
    ],
)
def test_format_reward(reply: str, score: float) -> None:
    assert format_reward(["p"], [reply]) == [score]


def test_completion_text_forms() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    # A tool-calling rollout: the final answer is in the last assistant turn.
    rollout = [
        {"role": "assistant", "content": "calling"},
        {"role": "tool", "content": "7"},
        {"role": "assistant", "content": "The answer is 7."},
    ]
    assert completion_text(rollout) == "The answer is 7."
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]) == "a"
    assert completion_text([]) == ""
    with pytest.raises(TypeError):
        completion_text(42)  # type: ignore[arg-type]


def test_registry() -> None:
    assert set(VERIFIERS) == {"correct", "format", "steps", "reply"}
    fns = get_verifiers(["format", "correct"])
    assert fns == [format_reward, correctness_reward]
    # TRL names the logged reward metrics after __name__.
    assert [f.__name__ for f in fns] == ["format", "correct"]
    with pytest.raises(ValueError, match=r"unknown verifier 'length'.*correct, format, reply, steps"):
        get_verifiers(["correct", "length"])
    with pytest.raises(ValueError, match="no verifiers"):
        get_verifiers([])


def test_solution_steps_are_the_sentences_before_the_answer() -> None:
    assert solution_steps("3 + 2 = 5. 5 - 1 = 4. The answer is 4.") == ["3 + 2 = 5.", "5 - 1 = 4."]
    assert solution_steps("The answer is 4.") == []


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("3 + 2 = 5. 5 - 1 = 4. The answer is 4.", 1.0),
        ("3 + 2 = 5. 5 - 2 = 3. The answer is 3.", 0.5),  # first step right, second wrong
        ("5 - 1 = 4. 3 + 2 = 5. The answer is 4.", 1.0),  # order is not checked
        ("3 + 2 = 5. 3 + 2 = 5. The answer is 5.", 0.5),  # a step repeated counts once
        ("3 + 2 = 6. The answer is 4.", 0.0),
        ("3+2=5. The answer is 4.", 0.0),  # word for word: the taught spelling
        ("", 0.0),
    ],
)
def test_steps_score(reply: str, score: float) -> None:
    assert steps_score(reply, "3 + 2 = 5. 5 - 1 = 4. The answer is 4.") == score


def test_steps_reward_skips_rows_without_steps() -> None:
    completions = [[{"role": "assistant", "content": "The largest is 9. The answer is 9."}]] * 3
    solutions = ["The largest is 9. The answer is 9.", "The answer is 9.", None]
    assert steps_reward(["p"] * 3, completions, solution=solutions) == [1.0, None, None]
    assert steps_reward(["p"], completions[:1]) == [None]


def test_reply_reward_scores_instruction_rows_only() -> None:
    completions = ["Mira lives in Ashford.", " Mira lives in Ashford.\n", "Mira lives in Oakdale.", "The answer is 4."]
    reference = ["Mira lives in Ashford.", "Mira lives in Ashford.", "Mira lives in Ashford.", None]
    assert reply_reward([None] * 4, completions, reference=reference) == [1.0, 1.0, 0.0, None]
    # a padded reply is not the ideal one
    assert reply_reward([None], ["Mira lives in Ashford. I hope that this helps."], reference=["Mira lives in Ashford."]) == [0.0]
    assert reply_reward([None, None], ["a", "b"]) == [None, None]  # no reference column: problems only
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        reply_reward([None, None], ["a", "b"], reference=["a"])


def test_format_reward_skips_rows_without_an_answer() -> None:
    replies = ["3 + 1 = 4. The answer is 4.", "Mira lives in Ashford."]
    assert format_reward([None, None], replies, answer=["4", None]) == [1.0, None]
    assert format_reward([None, None], replies) == [1.0, 0.0]
