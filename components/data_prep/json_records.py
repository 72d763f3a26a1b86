"""JSON records of one file, JSON Lines or a JSON array, each with the line it starts on.

Shared by the instruction, problem and recipe readers: a bad record is reported by its own
line, whether the file is JSON Lines or one big array.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Iterable, Iterator

from components.common.errors import at
from components.data_prep.loaders import iter_json_lines

_WHITESPACE = re.compile(r"\s*")


def _iter_jsonl(lines: Iterable[tuple[int, str]], name: str) -> Iterator[tuple[int, str, Any]]:
    """(line, id, parsed value) for each non-blank line."""
    expected = "one JSON object per line (JSON Lines) or one JSON array"
    for lineno, record in iter_json_lines(lines, name, expected):
        yield lineno, f"{name}:{lineno}", record


def _iter_array(text: str, name: str) -> Iterator[tuple[int, str, Any]]:
    """(line, id, value) for each element of a JSON array, each with the line it starts on.

    Decoding element by element (rather than ``json.loads`` of the whole file) is what lets a
    bad record be reported by its own line instead of "somewhere in this file".
    """
    decoder = json.JSONDecoder()
    counted_to, counted_lines = 0, 1

    def line_of(pos: int) -> int:
        nonlocal counted_to, counted_lines
        counted_lines += text.count("\n", counted_to, pos)
        counted_to = pos
        return counted_lines

    def skip(pos: int) -> int:
        return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]

    pos = skip(text.index("[") + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        for index in itertools.count():
            try:
                record, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise at(
                    name, line_of(err.pos), f"not valid JSON ({err.msg} at column {err.colno})"
                ) from None
            yield line_of(pos), f"{name}[{index}]", record
            pos = skip(end)
            if text.startswith(",", pos):
                pos = skip(pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            elif pos >= len(text):
                raise at(name, line_of(pos), "not valid JSON (the array is not closed with ']')")
            else:
                raise at(
                    name,
                    line_of(pos),
                    "not valid JSON (expected ',' or ']' after an array element)",
                )
    if text[pos:].strip():
        raise at(name, line_of(skip(pos)), "not valid JSON (extra data after the array)")


def iter_records(lines: Iterator[tuple[int, str]], name: str) -> Iterator[tuple[int, str, Any]]:
    """Records of one file, JSON Lines or a JSON array, chosen by its first non-blank line."""
    head: list[tuple[int, str]] = []
    for lineno, line in lines:
        head.append((lineno, line))
        if line.strip():
            break
    rest = itertools.chain(head, lines)
    if head and head[-1][1].lstrip().startswith("["):
        # _iter_lines yields every line, blank ones included, so line k of the joined text
        # is line k of the file.
        yield from _iter_array("\n".join(line for _, line in rest), name)
    else:
        yield from _iter_jsonl(rest, name)
