"""Rule-based verifiers: the rewards of the RLVR stage and the grader of pass@k evaluation.

Why rules and not a reward model: the problems have one verifiable answer, so a reply can be
scored exactly and cheaply, and the score cannot be gamed the way a learned reward can. SFT
teaches every worked reply to end with one sentence, ``"The answer is N."`` (the prefix is
``ANSWER_PREFIX`` of ``components/common/answer_format.py``, shared with data prep so that the two can never drift apart), and
the verifiers read that sentence only, whatever reasoning precedes it.

Three verifiers, all with the signature TRL's ``GRPOTrainer`` calls reward functions with,
``fn(prompts, completions, **columns) -> list[float | None]``:

* ``correct`` (``correctness_reward``): 1.0 when the final answer equals the dataset's
  ``answer`` column as a number (``normalize_number``: "1,234" == "1234", "5.0" == "5"), else
  0.0. ``is_correct`` is the same test for one reply, used by evaluation (pass@k).
* ``format`` (``format_reward``): 1.0 for a reply that *ends* with its one final-answer
  sentence, 0.5 for a reply that has an unambiguous final answer but does not end with that
  sentence, 0.0 otherwise (see ``format_score``).
* ``steps`` (``steps_reward``): the share of the reference solution's worked steps
  ("3 + 2 = 5.") that the reply states, partial credit before the final answer is right;
  ``None`` (not applicable) for problems without worked steps.

Everything here is pure Python (no torch), so evaluation and tests can import it anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from components.common.answer_format import (
    ANSWER_PREFIX,
    final_answer,
    final_match,
    normalize_number,
)

FORMAT_FULL = 1.0  # the reply ends with its one final-answer sentence
FORMAT_PARTIAL = 0.5  # an unambiguous final answer, but text (or no full stop) after it
FORMAT_NONE = 0.0  # empty reply, no final answer, or answers that disagree


def is_correct(reply: str, answer: str) -> bool:
    """Whether the reply's final answer is ``answer``: as numbers when ``answer`` is numeric,
    else as exact strings (surrounding whitespace ignored). Shared by the reward and pass@k."""
    got = final_answer(reply)
    if got is None:
        return False
    expected = normalize_number(answer)
    if expected is None:
        return got.strip() == answer.strip()
    return normalize_number(got) == expected


def format_score(reply: str) -> float:
    """How well a reply follows the final-answer format (the ``FORMAT_*`` constants).

    ``FORMAT_FULL`` needs the reply to end with "The answer is X." -- the full stop included,
    nothing but whitespace after it -- and no disagreeing answer before it. A reply with an
    unambiguous answer that is followed by more text, or lacks the full stop, gets
    ``FORMAT_PARTIAL``: the answer can still be read, but the stop signal SFT taught is lost.
    The value itself need not be a number (that is ``correct``'s business).
    """
    if not reply.strip():
        return FORMAT_NONE
    m = final_match(reply)
    if m is None:
        return FORMAT_NONE
    ends_cleanly = m.group(2) == "." and not m.group(1).endswith(".") and not reply[m.end() :].strip()
    return FORMAT_FULL if ends_cleanly else FORMAT_PARTIAL


def _message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message; content may be a string or a list of typed parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part if isinstance(part, str) else str(part.get("text", ""))
        for part in content
        if isinstance(part, str) or part.get("type") == "text"
    )


def completion_text(completion: str | Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> str:
    """The reply text of one completion as TRL passes it to reward functions.

    Standard datasets give a string; conversational ones a list of messages
    (``[{"role": "assistant", "content": "..."}]``). The final answer lives in the last
    assistant message, so that is the one read (a tool-calling rollout has earlier ones).
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _message_text(completion)
    if isinstance(completion, Sequence):
        turns = [m for m in completion if m.get("role", "assistant") == "assistant"]
        return _message_text(turns[-1]) if turns else ""
    raise TypeError(f"a completion is a string or a list of messages, got {type(completion).__name__}")


def correctness_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    answer: Sequence[str | None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 per completion whose final answer is the row's ``answer`` (``is_correct``), else 0.0.

    ``answer`` is the dataset column TRL passes as a keyword, aligned with ``completions``. A
    row whose answer is ``None`` gets ``None``: TRL then ignores this reward for that row,
    which lets problems without a checkable answer share a dataset with those that have one.
    """
    if answer is None:
        raise ValueError("the 'correct' verifier needs an 'answer' column in the RLVR dataset")
    if len(answer) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    return [
        None if a is None else float(is_correct(completion_text(c), str(a)))
        for c, a in zip(completions, answer)
    ]


def format_reward(
    prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str | None] | None = None, **kwargs: Any
) -> list[float | None]:
    """``format_score`` of each completion: 1.0 / 0.5 / 0.0, independent of correctness;
    ``None`` for rows without an ``answer`` (instruction rows, whose replies have no final
    answer sentence and must not be pushed to grow one)."""
    if answer is None:
        return [format_score(completion_text(c)) for c in completions]
    return [None if a is None else format_score(completion_text(c)) for c, a in zip(completions, answer)]


def reply_reward(
    prompts: Sequence[Any], completions: Sequence[Any], reference: Sequence[str | None] | None = None, **kwargs: Any
) -> list[float | None]:
    """1.0 per completion that is exactly the row's ``reference`` reply (surrounding whitespace
    ignored), else 0.0; ``None`` for rows without one (the problems).

    The instruction rows RLVR mixes in (``rlvr.instruction_share``) have one canonical reply
    each, so following the instruction is as checkable as a final answer: the same exact
    match evaluation's instruction accuracy uses.
    """
    if reference is None:
        return [None] * len(completions)
    if len(reference) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(reference)} references")
    return [
        None if r is None else float(completion_text(c).strip() == str(r).strip())
        for c, r in zip(completions, reference)
    ]


_SENTENCE_RE = re.compile(r"(?<=\.)\s+")


def solution_steps(solution: str) -> list[str]:
    """The worked steps of a reference solution: its sentences before the final answer
    ("3 + 2 = 5. 5 - 1 = 4. The answer is 4." gives ["3 + 2 = 5.", "5 - 1 = 4."])."""
    sentences = [s.strip() for s in _SENTENCE_RE.split(solution.strip()) if s.strip()]
    return [s for s in sentences if not s.startswith(ANSWER_PREFIX)]


def steps_score(reply: str, solution: str) -> float | None:
    """Share of the reference solution's steps that the reply states word for word (each step
    counted once, in any order); ``None`` when the solution has no steps to check.

    Why: the final answer is all-or-nothing, so a model that gets the first of three steps
    right earns the same zero as one that writes nothing useful. Checking each known step
    gives partial credit for the part that is verifiably right, a denser signal for GRPO.
    """
    steps = solution_steps(solution)
    if not steps:
        return None
    said = set(solution_steps(reply + " " + ANSWER_PREFIX))
    return sum(step in said for step in steps) / len(steps)


def steps_reward(
    prompts: Sequence[Any], completions: Sequence[Any], solution: Sequence[str | None] | None = None, **kwargs: Any
) -> list[float | None]:
    """``steps_score`` per completion against the row's ``solution``; ``None`` (ignored by
    TRL) for rows without a worked solution or with a solution that has no steps."""
    if solution is None:
        return [None] * len(completions)
    return [
        None if s is None else steps_score(completion_text(c), str(s))
        for c, s in zip(completions, solution)
    ]


# TRL names each reward's logged metrics after the function's __name__ ("rewards/correct/mean").
correctness_reward.__name__ = "correct"
format_reward.__name__ = "format"
steps_reward.__name__ = "steps"
reply_reward.__name__ = "reply"

RewardFn = Callable[..., list[float | None]]
VERIFIERS: dict[str, RewardFn] = {
    "correct": correctness_reward,
    "format": format_reward,
    "steps": steps_reward,
    "reply": reply_reward,
}


def get_verifiers(names: Sequence[str]) -> list[RewardFn]:
    """The reward functions for ``rlvr.rewards``, in order; an unknown or empty list is a
    config error, raised here so that it surfaces before a trainer is built."""
    if not names:
        raise ValueError(f"no verifiers named; known: {', '.join(sorted(VERIFIERS))}")
    unknown = [n for n in names if n not in VERIFIERS]
    if unknown:
        raise ValueError(f"unknown verifier {unknown[0]!r}; known: {', '.join(sorted(VERIFIERS))}")
    return [VERIFIERS[n] for n in names]
