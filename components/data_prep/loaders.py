"""Reading users' record files (files, folders and globs, local or any fsspec URI) and HF datasets:
the line and record readers the instruction, preference and problem loaders share (corpora
stream through ``sources.py`` on Ray Data).

Every problem with the *data* becomes a ``DataError`` whose message starts with the file and,
where it makes sense, the 1-based line (``corpus.jsonl:17: not valid JSON``), because a user
with a million-line corpus needs to know exactly which record to fix. Problems in our own code
are left as ordinary exceptions.

Files are read line by line in binary and decoded per line, so a big JSONL file is streamed
rather than loaded whole, and a bad UTF-8 byte can be reported with its line number.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator, TypeVar

import fsspec
from fsspec.core import url_to_fs

from components.common.errors import DataError, at
from components.common.storage import storage_options

TEXT_EXTENSIONS = (".txt",)
JSONL_EXTENSIONS = (".jsonl", ".json")
FOLDER_EXTENSIONS = TEXT_EXTENSIONS + JSONL_EXTENSIONS
FORMATS = ("auto", "text", "jsonl")
T = TypeVar("T")


def has_glob_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def display_name(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """How a file is named in messages: a plain path locally, the full URI elsewhere."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return path
    return fs.unstrip_protocol(path)


def is_hidden(path: str, root: str) -> bool:
    rel = path[len(root) :].strip("/")
    return any(part.startswith(".") for part in rel.split("/") if part)


def resolve_files_where(
    uri: str, wanted: Callable[[str], bool], folder_holds: str
) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The sorted files a URI stands for: the file itself, the matches of a glob, or the files of
    a folder (at any depth) that ``wanted`` accepts; hidden files and folders (.git, .DS_Store,
    editor swap files) never. An empty folder is an error saying it has no ``folder_holds``.

    Failures of the storage itself (unknown protocol, missing s3fs, no credentials, an
    unreachable endpoint) are reported as ``DataError`` naming the URI, because they are
    fixed by the user's configuration, and the raw botocore/aiohttp traceback would not
    say which of several sources was at fault. Every reader of users' files resolves through
    this one function; they differ only in which files a folder may hold.
    """
    try:
        fs, path = url_to_fs(uri, **storage_options(uri))
        if has_glob_magic(path) and not fs.exists(path):
            files = sorted(p for p in fs.glob(path) if fs.isfile(p))
            if not files:
                raise DataError(f"{uri}: no files match this pattern")
            return fs, files
        if fs.isdir(path):
            root = path.rstrip("/")
            files = sorted(p for p in fs.find(root) if wanted(p) and not is_hidden(p, root))
            if not files:
                raise DataError(f"{uri}: folder has no {folder_holds}")
            return fs, files
        if fs.isfile(path):
            return fs, [path]
        raise DataError(f"{uri}: no such file or folder")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{uri}: cannot access ({type(err).__name__}: {err})") from err


def resolve_record_files(uri: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The sorted files a URI stands for (a file, a folder's record files, or a glob)."""
    return resolve_files_where(
        uri, lambda p: p.lower().endswith(FOLDER_EXTENSIONS),
        f"{', '.join('*' + e for e in FOLDER_EXTENSIONS)} files",
    )


def iter_lines(fs: fsspec.AbstractFileSystem, path: str, name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its newline); bad UTF-8 names the line."""
    try:
        with fs.open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise at(
                        name, lineno, f"not valid UTF-8 text (bad byte at column {err.start + 1})"
                    ) from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]  # a UTF-8 byte-order mark is not part of the text
                yield lineno, line.rstrip("\r\n")
    except OSError as err:
        raise DataError(f"{name}: cannot read ({err})") from err


def iter_text(lines: Iterable[tuple[int, str]]) -> Iterator[str]:
    """Documents of a plain-text file.

    Blocks of non-blank lines separated by blank lines are documents. A file with a single
    block (no separating blank line) is read as one document per line, the common "one
    sentence/record per line" layout. Only the first block is buffered until we know which.
    """
    first: list[str] = []  # the first block, held until a second block proves the layout
    block: list[str] = []
    blocks = 0

    def finish(done: list[str]) -> Iterator[str]:
        nonlocal blocks, first
        blocks += 1
        if blocks == 1:
            first = done
            return
        if blocks == 2:
            yield "\n".join(first)
        yield "\n".join(done)

    for _, line in lines:
        if line.strip():
            block.append(line.strip())
        elif block:
            yield from finish(block)
            block = []
    if block:
        yield from finish(block)
    if blocks == 1:
        yield from first


def iter_json_lines(
    lines: Iterable[tuple[int, str]], name: str, expected: str = "one JSON object per line (JSON Lines)"
) -> Iterator[tuple[int, Any]]:
    """(line, parsed value) for each non-blank line; bad JSON is an error naming file:line.

    Shared by every JSONL reader (corpora, instructions, preference pairs) so they all report
    a broken record the same way.
    """
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise at(name, lineno, f"not valid JSON ({err.msg} at column {err.colno}); expected {expected}") from None


def _iter_jsonl(lines: Iterable[tuple[int, str]], name: str, field: str) -> Iterator[str]:
    """The ``field`` string of each JSON object, one object per non-blank line."""
    for lineno, record in iter_json_lines(lines, name):
        yield field_of(record, field, lambda msg, n=lineno: at(name, n, msg))


def field_of(record: Any, field: str, error: Any) -> str:
    if not isinstance(record, dict):
        raise error(f"expected a JSON object, got {type(record).__name__}")
    if field not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise error(f"missing field '{field}' (fields present: {keys})")
    value = record[field]
    if not isinstance(value, str):
        raise error(f"field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise error(f"field '{field}' is empty")
    return value


def iter_text_records(uri: str, fmt: str = "auto", field: str = "text") -> Iterator[str]:
    """Documents from a file, a folder (its ``*.txt``/``*.jsonl``/``*.json`` files) or a glob.

    ``fmt="auto"`` decides per file by extension (``.jsonl``/``.json`` are JSON Lines, all
    else plain text), so one folder may mix both. Files are visited in sorted order so the
    corpus, and therefore the train/held-out split, is reproducible.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    fs, files = resolve_record_files(uri)
    for path in files:
        name = display_name(fs, path)
        file_fmt = fmt
        if fmt == "auto":
            file_fmt = "jsonl" if path.lower().endswith(JSONL_EXTENSIONS) else "text"
        lines = iter_lines(fs, path, name)
        if file_fmt == "jsonl":
            yield from _iter_jsonl(lines, name, field)
        else:
            yield from iter_text(lines)


def hf_label(name: str, config: str | None, split: str) -> str:
    """How messages name a Hugging Face dataset split."""
    return f"hf dataset '{name}'" + (f" config '{config}'" if config else "") + f" split '{split}'"


def _hf_split_names(name: str, config: str | None) -> list[str]:
    try:
        from datasets import get_dataset_split_names

        return list(get_dataset_split_names(name, config))
    except Exception:  # noqa: BLE001 - only a hint for the message
        return []


def iter_hf_rows(name: str, config: str | None, split: str, streaming: bool = True) -> Iterator[tuple[int, Any]]:
    """(index, row) of a Hugging Face dataset split (a hub id, or a local folder in the hub's
    layout), streamed by default. Failures are a ``DataError`` naming dataset, split and row; an
    unknown split also names the splits the dataset has. Shared by the corpus reader and the
    recipe reader."""
    label = hf_label(name, config, split)
    try:
        from datasets import load_dataset
    except ImportError as err:  # pragma: no cover - datasets is a declared dependency
        raise DataError(f"{label}: the 'datasets' package is not installed") from err
    try:
        rows = iter(load_dataset(name, config, split=split, streaming=streaming))
    except Exception as err:  # the hub, the cache and the builders raise many types
        text = str(err)
        if "split" in text.lower() and split in text:
            known = _hf_split_names(name, config)
            raise DataError(
                f"{label}: unknown split '{split}'" + (f" (the dataset has: {', '.join(known)})" if known else f" ({text})")
            ) from err
        raise DataError(f"{label}: cannot load ({type(err).__name__}: {text})") from err
    index = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:  # a column whose type changes between shards, a bad file
            raise DataError(f"{label} row {index}: cannot read ({type(err).__name__}: {err})") from err
        yield index, row
        index += 1


def iter_hf_dataset(name: str, config: str | None, split: str, field: str) -> Iterator[str]:
    """The ``field`` strings of a Hugging Face dataset, streamed (nothing is downloaded whole).

    Records whose text is empty are skipped rather than rejected: common corpora such as
    wikitext use empty rows as paragraph breaks, and refusing them would make those corpora
    unusable. A missing or non-string field is a ``DataError`` naming the record index.
    """
    label = hf_label(name, config, split)
    for index, record in iter_hf_rows(name, config, split):

        def error(msg: str, i: int = index) -> DataError:
            return DataError(f"{label}: record {i}: {msg}")

        value = record.get(field) if isinstance(record, dict) else None
        if isinstance(value, str) and not value.strip():
            continue
        yield field_of(record, field, error)


def load_each_source(uris: list[str], load_file: Callable[[str], list[T]], what: str) -> list[T]:
    """All records of ``uris`` in the order given, each URI loaded by ``load_file``."""
    if not uris:
        raise DataError(f"no {what} sources given, so there are no records")
    records: list[T] = []
    for uri in uris:
        records.extend(load_file(uri))
    return records
