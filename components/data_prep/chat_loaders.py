"""Loading users' instruction data (files, folders, globs, any fsspec URI) as chat ``Example``s.

People bring SFT data in a few shapes; each record is recognised on its own, so one folder
(or even one file) may mix them:

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
* prompt/completion: ``{"prompt": "...", "completion": "..."}``
* Alpaca: ``{"instruction": "...", "input": "..." (optional), "output": "..."}``

Files are JSON Lines; a file whose first non-blank character is ``[`` is read as one JSON
array of records instead, because that is how the Alpaca data is commonly shipped. Whatever
the shape, a record becomes a conversation that ends with the assistant turn SFT learns from.

File discovery and line reading are shared with ``loaders`` (same URIs, same UTF-8 and
storage errors), and every problem in the data is a ``DataError`` that names the file and
the 1-based line, so a user can fix record 70,312 without bisecting the file.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from typing import Any, Callable, Iterable, Iterator

from components.common.errors import DataError, at
from components.data_prep.instructions import ROLES, Example
from components.data_prep.json_records import iter_records
from components.data_prep.records import SkipReport, collect
from components.data_prep.loaders import (
    display_name,
    field_of,
    iter_lines,
    resolve_record_files,
    iter_json_lines,
    load_each_source,
)

DEFAULT_FAMILY = "user"
ACCEPTED_FORMATS = (
    '{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}',
    '{"prompt": "...", "completion": "..."}',
    '{"instruction": "...", "input": "..." (optional), "output": "..."}',
)

Error = Callable[[str], DataError]


def chat_turns(value: Any, field: str, error: Error) -> list[dict[str, str]]:
    """Validated ``{"role", "content"}`` turns of ``field``; other keys of a turn (e.g. "name")
    are dropped. Shared with the preference loader, which reads the same message lists."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else type(value).__name__
        raise error(
            f"field '{field}' must be a non-empty list of "
            f'{{"role": ..., "content": ...}} objects, got {got}'
        )
    turns: list[dict[str, str]] = []
    for k, message in enumerate(value, start=1):

        def turn_error(msg: str, k: int = k) -> DataError:
            return error(f"field '{field}': message {k}: {msg}")

        if not isinstance(message, dict):
            raise turn_error(
                f"expected a JSON object with 'role' and 'content', got {type(message).__name__}"
            )
        role = field_of(message, "role", turn_error)
        if role not in ROLES:
            raise turn_error(f"unknown role '{role}' (expected {', '.join(ROLES)})")
        turns.append({"role": role, "content": field_of(message, "content", turn_error)})
    return turns


def _chat_messages(messages: Any, error: Error) -> list[dict[str, str]]:
    """A conversation to learn from: valid turns, a user turn, ending with the assistant's."""
    turns = chat_turns(messages, "messages", error)
    if not any(t["role"] == "assistant" for t in turns):
        raise error("the conversation has no assistant turn to learn from")
    if turns[-1]["role"] != "assistant":
        raise error(
            f"the last turn is the {turns[-1]['role']}'s; it must be the assistant's reply"
        )
    if not any(t["role"] == "user" for t in turns):
        raise error("the conversation has no user turn")
    return turns


def _to_messages(record: Any, error: Error) -> list[dict[str, str]]:
    """The record as chat turns, by whichever accepted format its fields name.

    Checked in the order chat, prompt/completion, Alpaca, so a chat export that also carries a
    "prompt" summary field (as some public sets do) is read as the full conversation.
    """
    if not isinstance(record, dict):
        raise error(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _chat_messages(record["messages"], error)
    if "prompt" in record or "completion" in record:
        # Completions are often stored with a leading space for plain concatenation; in a chat
        # turn that space would only be noise the model has to learn, so both sides are stripped.
        prompt = field_of(record, "prompt", error).strip()
        completion = field_of(record, "completion", error).strip()
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if "instruction" in record or "output" in record:
        instruction = field_of(record, "instruction", error)
        extra = record.get("input")
        if extra is not None and not isinstance(extra, str):
            raise error(f"field 'input' must be a string, got {type(extra).__name__}")
        output = field_of(record, "output", error)
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise error(
        f"record matches none of the accepted formats (fields present: {keys}); expected one "
        "of: " + "; ".join(ACCEPTED_FORMATS)
    )


def _to_example(record: Any, example_id: str, error: Error) -> Example:
    messages = _to_messages(record, error)
    family = field_of(record, "family", error) if "family" in record else DEFAULT_FAMILY
    return Example(
        id=example_id, family=family, messages=messages, answer=messages[-1]["content"]
    )


def load_instruction_file(uri: str) -> list[Example]:
    """Every record of a file, a folder (its ``*.jsonl``/``*.json``/``*.txt``) or a glob.

    Files are read in sorted order, so ids and order are reproducible. An id is
    ``file:line`` (``file[index]`` in a JSON array), which also says where to look. A file
    without records is an error: an empty split would otherwise surface much later as a
    trainer that has nothing to do.
    """
    fs, files = resolve_record_files(uri)
    examples: list[Example] = []
    for path in files:
        name = display_name(fs, path)
        before = len(examples)
        for lineno, example_id, record in iter_records(iter_lines(fs, path, name), name):

            def error(msg: str, n: int = lineno) -> DataError:
                return at(name, n, msg)

            examples.append(_to_example(record, example_id, error))
        if len(examples) == before:
            raise at(name, None, "has no records (expected JSON Lines of instruction records)")
    return examples


def load_instruction_sources(uris: list[str]) -> list[Example]:
    """All records of ``uris`` in the order given; each URI as in ``load_instruction_file``."""
    return load_each_source(uris, load_instruction_file, "instruction data")


def read_instruction_sources(
    sources: list[Any], on_malformed: str = "error", max_skip_share: float = 0.0, hint: str | None = None
) -> tuple[list[Example], SkipReport]:
    """All examples of ``sources`` (URIs or ``DatasetRecipe``s: hub datasets in ``messages``
    form such as SmolTalk or UltraChat, or mirrors of them; compressed files and Parquet too)
    under the malformed-record policy (``records.collect``)."""

    def convert(record: Any, source: Any) -> Example:
        example = _to_example(record.value, record.default_id, record.error)
        family = getattr(source, "family", None)
        return dataclasses.replace(example, family=family) if family else example

    return collect(sources, convert, "instruction data", on_malformed, max_skip_share, hint)
