"""Loading users' problems (files, folders, globs, any fsspec URI) as RLVR ``Problem``s.

Two layouts are recognised per record, so one folder (or even one file) may mix them:

1. ``{"prompt": "..." | [messages], "answer": 42 | "42"}``: the answer is a number or a
   numeric string; an optional ``solution`` string is kept as the worked reply.
2. ``{"question": "...", "answer": "...worked text...\\n#### 42"}``: the grade-school-math
   layout. The value after the last ``####`` is the answer; the text before it becomes the
   ``solution``, rewritten to end with "The answer is 42." (the sentence SFT teaches and the
   verifiers read). Calculator annotations such as ``<<48/2=24>>`` are dropped: they are
   markup of that data set, not reasoning a model should imitate. An answer without ``####``
   is read as a bare number, as in layout 1.

Optional fields: ``id`` (else ``file:line``), ``difficulty`` (an integer >= 1, default 1) and
``family`` (default "user"). Answers are canonicalised with the RLVR verifiers'
``normalize_number``, so the stored answer is exactly what the reward compares against, and a
record whose answer is not a number is refused here, not discovered as a reward of 0 forever.

File discovery and reading are shared with the other loaders (JSON Lines, or one JSON array),
and every problem in the data is a ``DataError`` starting with ``file:line:``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from components.common.errors import DataError, at
from components.data_prep.chat_loaders import chat_turns
from components.data_prep.json_records import iter_records
from components.data_prep.loaders import (
    display_name,
    field_of,
    iter_lines,
    resolve_record_files,
    load_each_source,
)
from components.data_prep.preference_loaders import optional_str
from components.data_prep.problems import Problem, final_sentence
from components.common.answer_format import normalize_number
from components.data_prep.records import Skip, SkipReport, collect

DEFAULT_FAMILY = "user"
ACCEPTED_FORMATS = (
    '{"prompt": "..." or [messages], "answer": <number or numeric string>}',
    '{"question": "...", "answer": "...worked solution...\\n#### <number>"}',
)
MARKER = "####"
_CALCULATOR = re.compile(r"<<[^<>]*>>")

Error = Callable[[str], DataError]


def _prompt(record: dict[str, Any], error: Error) -> list[dict[str, str]]:
    """The prompt as chat turns ending with the user's question (``prompt`` before
    ``question``, as the chat loader prefers its richest field)."""
    if "prompt" in record:
        value = record["prompt"]
        if isinstance(value, list):
            turns = chat_turns(value, "prompt", error)
            if turns[-1]["role"] != "user":
                raise error(
                    f"field 'prompt': the last turn is the {turns[-1]['role']}'s; "
                    "it must be the user's question"
                )
            return turns
        if not isinstance(value, str):
            raise error(f"field 'prompt' must be a string or a list of messages, got {type(value).__name__}")
        return [{"role": "user", "content": field_of(record, "prompt", error).strip()}]
    if "question" in record:
        return [{"role": "user", "content": field_of(record, "question", error).strip()}]
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise error(
        f"missing field 'prompt' (or 'question') (fields present: {keys}); expected one of: "
        + "; ".join(ACCEPTED_FORMATS)
    )


def _number(text: str, field: str, error: Error) -> str:
    """The canonical number of ``text``, or the error naming the field and what was there."""
    value = normalize_number(text)
    if value is None:
        shown = text.strip()
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise error(f"field '{field}': no parsable numeric answer in {shown!r}")
    return value


def _with_final_sentence(text: str, answer: str) -> str:
    """``text`` ending with "The answer is <answer>." (appended unless already there)."""
    body = _CALCULATOR.sub("", text).strip()
    final = final_sentence(answer)
    if not body or body.endswith(final):
        return body or final
    if body[-1] not in ".!?":
        body += "."
    # A multi-line worked solution (one step a line, as in GSM8K) keeps its layout.
    sep = "\n" if "\n" in body else " "
    return f"{body}{sep}{final}"


def _answer(record: dict[str, Any], error: Error) -> tuple[str, str | None]:
    """(canonical answer, worked solution or None) from ``answer`` (and ``solution``)."""
    if "answer" not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise error(f"missing field 'answer' (fields present: {keys})")
    value = record["answer"]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise error(f"field 'answer' must be a number or a string, got {type(value).__name__}")
    solution = optional_str(record, "solution", error)
    if isinstance(value, str) and MARKER in value:
        worked, _, final = value.rpartition(MARKER)
        answer = _number(final, "answer", error)
        if solution is None and worked.strip():
            solution = worked
    else:
        answer = _number(str(value), "answer", error)
    return answer, None if solution is None else _with_final_sentence(solution, answer)


def _difficulty(record: dict[str, Any], error: Error) -> int:
    value = record.get("difficulty")
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"field 'difficulty' must be an integer >= 1, got {value!r}")
    return value


def _to_problem(record: Any, default_id: str, error: Error) -> Problem:
    if not isinstance(record, dict):
        raise error(f"expected a JSON object, got {type(record).__name__}")
    prompt = _prompt(record, error)
    answer, solution = _answer(record, error)
    return Problem(
        id=optional_str(record, "id", error) or default_id,
        family=optional_str(record, "family", error) or DEFAULT_FAMILY,
        difficulty=_difficulty(record, error),
        prompt=prompt,
        answer=answer,
        solution=solution,
    )


def _iter_file_records(uri: str) -> Iterator[tuple[Any, str, str, Error]]:
    """(record, default id, "file:line", error for that line) of every record under ``uri``.

    Files are read in sorted order, so ids and order are reproducible. A file without records
    is an error: an empty split would otherwise surface later as a trainer with nothing to do.
    """
    fs, files = resolve_record_files(uri)
    for path in files:
        name = display_name(fs, path)
        count = 0
        for lineno, default_id, record in iter_records(iter_lines(fs, path, name), name):
            count += 1
            yield record, default_id, f"{name}:{lineno}", partial(at, name, lineno)
        if not count:
            raise at(name, None, "has no records (expected JSON Lines of problem records)")


def load_problem_file(uri: str, seen: dict[str, str] | None = None) -> list[Problem]:
    """Every problem of a file, a folder (its ``*.jsonl``/``*.json``/``*.txt``) or a glob.

    ``seen`` maps ids to where they were first read (``file:line``); passing one dict to
    several calls makes ids unique across all of them. A repeated id is an error naming both
    places, because RLVR and evaluation key results by id.
    """
    seen = {} if seen is None else seen
    problems: list[Problem] = []
    for record, default_id, where, error in _iter_file_records(uri):
        problem = _to_problem(record, default_id, error)
        if problem.id in seen:
            raise error(f"duplicate id '{problem.id}' (first used at {seen[problem.id]})")
        seen[problem.id] = where
        problems.append(problem)
    return problems


def load_problem_sources(uris: list[str]) -> list[Problem]:
    """All problems of ``uris`` in the order given, ids unique across all of them."""
    seen: dict[str, str] = {}
    return load_each_source(uris, lambda uri: load_problem_file(uri, seen), "problem data")


NOT_NUMERIC_RULE = "answer is not a number the verifier can check"
_LEVEL = re.compile(r"Level\s*(\d+)")
_FRAC = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}")


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of a MATH solution,
    braces balanced, or None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for pos in range(brace, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : pos]
    return None


def _latex_number(text: str) -> str | None:
    """A boxed answer as a number the verifiers compare, or None: ``\\frac{3}{4}`` -> 3/4,
    ``-\\dfrac{1}{2}`` -> -1/2, ``1{,}000`` -> 1000, ``5^\\circ`` / ``\\$5`` / ``5\\%`` -> 5."""
    s = text.strip().replace("{,}", ",").replace("\\!", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\{?\\circ\}?|\\%|%|\\text\{[^}]*\}|\\mbox\{[^}]*\}", "", s).strip()
    s = _FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", s)
    s = s.replace(" ", "") if re.fullmatch(r"[-+]?\s*[\d./,]+", s) else s
    return normalize_number(s)


def _boxed_record(value: Any, error: Error) -> dict[str, Any]:
    """A MATH record (``problem``/``solution``/``level``/``type``, the problem mapped to
    ``question``) as a layout-1 record: the answer from the solution's last ``\\boxed{}``,
    the difficulty from its level. A boxed answer that is not a number (an expression, an
    interval) is left out by rule: the RLVR verifiers compare numbers."""
    if not isinstance(value, dict):
        raise error(f"expected a JSON object, got {type(value).__name__}")
    solution = field_of(value, "solution", error)
    boxed = last_boxed(solution)
    if boxed is None:
        raise error("field 'solution' has no \\boxed{...} answer")
    answer = _latex_number(boxed)
    if answer is None:
        raise Skip(NOT_NUMERIC_RULE, f"boxed answer {boxed.strip()[:40]!r}")
    record = {k: v for k, v in value.items() if k not in ("level", "type")}
    record["answer"] = answer
    level = value.get("level")
    match = _LEVEL.search(level) if isinstance(level, str) else None
    if match:
        record["difficulty"] = max(1, int(match.group(1)))
    return record


def read_problem_sources(
    sources: list[Any], on_malformed: str = "error", max_skip_share: float = 0.0, hint: str | None = None
) -> tuple[list[Problem], SkipReport]:
    """All problems of ``sources`` (URIs or ``DatasetRecipe``s: GSM8K's question/answer with
    ``#### n``, MATH's problem/solution with ``answer_format: boxed``, or mirrors of them) under
    the malformed-record policy; ids unique across all of them."""
    seen: dict[str, str] = {}

    def convert(record: Any, source: Any) -> Problem:
        value = record.value
        if getattr(source, "answer_format", "auto") == "boxed":
            value = _boxed_record(value, record.error)
        problem = _to_problem(value, record.default_id, record.error)
        family = getattr(source, "family", None)
        if family:
            problem = dataclasses.replace(problem, family=family)
        if problem.id in seen:
            raise record.error(f"duplicate id '{problem.id}' (first used at {seen[problem.id]})")
        seen[problem.id] = record.where
        return problem

    return collect(sources, convert, "problem data", on_malformed, max_skip_share, hint)
