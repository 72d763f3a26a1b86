"""The records of a stage's dataset, wherever it lives, and what to do with the bad ones.

A source (``data.<instructions|preferences|problems>.sources``) is either a URI string (file,
folder or glob; local or any fsspec URI) or a ``DatasetRecipe``: a public dataset by name
(Hugging Face id + config + split, read with ``datasets.load_dataset``, streamed by default)
or a mirror of it (``uri``), with ``fields`` naming its columns where they differ from what the
stage's loader reads. Files may be JSON Lines (or one JSON array), gzip/zstd/bz2/xz compressed
as downloaded (``.jsonl.gz``), or Parquet as the hub stores most datasets.

Every record comes with ``where`` it was read (``file:line``, ``file.parquet row 7``, or
``hf dataset 'openai/gsm8k' config 'main' split 'train' row 7``), and every error about a
record starts with it, so a user can find record 70,312 without bisecting anything.

``collect`` turns records into a stage's items under the malformed-record policy:
``error`` stops at the first bad record; ``skip`` drops bad records up to ``max_skip_share``
of all records, counting them and naming the first few (in the log and, through the manifest,
on the report card); beyond the share it is an error again, because then the file is not
"a little noisy" but probably not the layout the user thinks it is. Records skipped by a
stated *rule* (a preference pair whose two transcripts answer different conversations, a MATH
answer the number verifier cannot check) are counted on their own and never against the share.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar


from components.common.config.data import DatasetRecipe
from components.common.errors import DataError
from components.data_prep.json_records import iter_records
from components.data_prep.loaders import display_name, hf_label, iter_hf_rows, resolve_files_where

log = logging.getLogger(__name__)

T = TypeVar("T")
COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
RECORD_EXTENSIONS = (".jsonl", ".json", ".txt", ".parquet")
FIRST_NAMED = 5  # skipped records named one by one in the log and the report


class Skip(Exception):
    """Raised by a converter for a record that a stated rule leaves out (not a malformed one)."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


@dataclass
class Record:
    where: str  # where it was read, the prefix of every message about it
    default_id: str  # its id when the record has none
    value: Any = None
    problem: str | None = None  # set when the record could not even be parsed (bad JSON)

    def error(self, msg: str) -> DataError:
        return DataError(f"{self.where}: {msg}")


def describe(source: str | DatasetRecipe) -> str:
    """A source as the user would recognise it in a message."""
    if isinstance(source, str):
        return source
    if source.uri:
        return source.uri + (f" (mirror of {source.hf_dataset})" if source.hf_dataset else "")
    return _hf_label(source)


def _hf_label(recipe: DatasetRecipe) -> str:
    return hf_label(recipe.hf_dataset or "", recipe.hf_config, recipe.split)


# -- files ----------------------------------------------------------------------------------
def _base_name(path: str) -> str:
    """The name without its compression suffix: ``a.jsonl.gz`` -> ``a.jsonl``."""
    lower = path.lower()
    for ext in COMPRESSIONS:
        if lower.endswith(ext):
            return lower[: -len(ext)]
    return lower


def _is_record_file(path: str) -> bool:
    return _base_name(path).endswith(RECORD_EXTENSIONS)


def resolve_files(uri: str) -> tuple[Any, list[str]]:
    """The sorted files a URI stands for: a file, a folder's record files (compressed ones
    included, hidden ones never), or a glob. Storage failures name the URI."""
    return resolve_files_where(
        uri, _is_record_file, "JSON Lines, JSON, Parquet or text files (compressed or not)"
    )


def _iter_lines(fs: Any, path: str, name: str) -> Iterator[tuple[int, str]]:
    """(1-based line, text) of a file, decompressed by its extension (``.gz`` as downloaded)."""
    compression = "infer" if path.lower().endswith(COMPRESSIONS) else None
    try:
        with fs.open(path, "rb", compression=compression) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"{name}:{lineno}: not valid UTF-8 text (bad byte at column {err.start + 1})"
                        + ("" if compression else "; a compressed file needs its .gz/.zst/.bz2/.xz extension")
                    ) from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                yield lineno, line.rstrip("\r\n")
    except (OSError, EOFError) as err:
        raise DataError(f"{name}: cannot read ({type(err).__name__}: {err})") from err


def _iter_json_file(fs: Any, path: str, name: str) -> Iterator[Record]:
    lines = _iter_lines(fs, path, name)
    head: list[tuple[int, str]] = []
    for lineno, line in lines:
        head.append((lineno, line))
        if line.strip():
            break
    if head and head[-1][1].lstrip().startswith("["):
        for lineno, default_id, value in iter_records(_chain(head, lines), name):
            yield Record(f"{name}:{lineno}", default_id, value)
        return
    for lineno, line in _chain(head, lines):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            yield Record(where, where, json.loads(line))
        except json.JSONDecodeError as err:
            yield Record(where, where, None, f"not valid JSON ({err.msg} at column {err.colno}); expected JSON Lines")


def _chain(head: list[tuple[int, str]], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield from head
    yield from rest


def _iter_parquet(fs: Any, path: str, name: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as fh:
            index = 0
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    where = f"{name} row {index}"
                    yield Record(where, f"{name}:{index}", row)
                    index += 1
    except DataError:
        raise
    except Exception as err:  # not Parquet, truncated, unreadable
        raise DataError(f"{name}: cannot read as Parquet ({type(err).__name__}: {err})") from err


def iter_file_records(uri: str) -> Iterator[Record]:
    """Every record under ``uri``; a file without records is an error naming it."""
    fs, files = resolve_files(uri)
    for path in files:
        name = display_name(fs, path)
        reader = _iter_parquet if _base_name(path).endswith(".parquet") else _iter_json_file
        count = 0
        for record in reader(fs, path, name):
            count += 1
            yield record
        if not count:
            raise DataError(f"{name}: has no records")


# -- the hub ----------------------------------------------------------------------------------
def iter_hf_records(recipe: DatasetRecipe) -> Iterator[Record]:
    """The rows of a Hugging Face dataset (a hub id, or a local folder in the hub's layout)."""
    label = _hf_label(recipe)
    count = 0
    for index, row in iter_hf_rows(recipe.hf_dataset or "", recipe.hf_config, recipe.split, recipe.streaming):
        count += 1
        yield Record(f"{label} row {index}", f"{recipe.hf_dataset}:{recipe.split}:{index}", row)
    if not count:
        raise DataError(f"{label}: has no records")


# -- any source -------------------------------------------------------------------------------
def _mapped(record: Record, fields: dict[str, str]) -> Record:
    """The record with the dataset's columns renamed to the loader's field names."""
    value = record.value
    if not fields or record.problem is not None or not isinstance(value, dict):
        return record
    renamed = dict(value)
    for target, column in fields.items():
        if column not in value:
            columns = ", ".join(sorted(map(str, value))) or "none"
            return Record(record.where, record.default_id, None,
                          f"missing column '{column}' (read as '{target}'; columns present: {columns})")
        renamed.pop(column, None)
    for target, column in fields.items():
        renamed[target] = value[column]
    return Record(record.where, record.default_id, renamed)


def iter_source_records(source: str | DatasetRecipe) -> Iterator[Record]:
    """The records of one source, columns renamed by its ``fields``, at most ``max_records``."""
    if isinstance(source, str):
        yield from iter_file_records(source)
        return
    records = iter_file_records(source.uri) if source.uri else iter_hf_records(source)
    for n, record in enumerate(records):
        if source.max_records is not None and n >= source.max_records:
            break
        yield _mapped(record, source.fields)


@dataclass
class SkipReport:
    """What ``collect`` left out of one stage's data, for the log, the manifest and the card."""

    what: str
    total: int = 0
    malformed: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    first: list[str] = field(default_factory=list)  # "where: why" of the first few left out
    first_malformed: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.malformed + sum(self.by_rule.values())

    def note(self, message: str) -> None:
        if len(self.first) < FIRST_NAMED:
            self.first.append(message)
            log.warning("%s: skipped %s", self.what, message)

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "records": self.total, "malformed": self.malformed,
                "by_rule": dict(self.by_rule), "first": list(self.first)}

    def summary(self) -> str:
        parts = [f"{self.malformed} malformed"] + [f"{n} {rule}" for rule, n in sorted(self.by_rule.items())]
        return f"{self.what}: skipped {self.skipped} of {self.total} records ({', '.join(parts)})"


def collect(
    sources: Iterable[str | DatasetRecipe],
    convert: Callable[[Record, str | DatasetRecipe], T],
    what: str,
    on_malformed: str = "error",
    max_skip_share: float = 0.0,
    hint: str | None = None,
) -> tuple[list[T], SkipReport]:
    """``convert(record, source)`` of every record of ``sources`` under the malformed-record policy.

    ``convert`` raises ``DataError`` for a malformed record and ``Skip`` for one a rule leaves
    out. Errors about the storage or a whole file (cannot access, no records, not Parquet) are
    never skipped: they are not noise in the data. ``hint`` (e.g. "data.preferences") names
    the setting that would skip a malformed record, in the error that stops at one.
    """
    sources = list(sources)
    if not sources:
        raise DataError(f"no {what} sources given, so there are no records")
    report = SkipReport(what)
    items: list[T] = []
    for source in sources:
        for record in iter_source_records(source):
            report.total += 1
            try:
                if record.problem is not None:
                    raise record.error(record.problem)
                items.append(convert(record, source))
            except Skip as skip:
                report.by_rule[skip.rule] = report.by_rule.get(skip.rule, 0) + 1
                report.note(f"{record.where}: {skip} ({skip.rule})")
            except DataError as err:
                if on_malformed != "skip":
                    if hint:
                        raise DataError(
                            f"{err} (to skip such records, up to a share, set {hint}.on_malformed=skip "
                            f"and {hint}.max_skip_share)"
                        ) from err
                    raise
                report.malformed += 1
                report.note(str(err))
                if len(report.first_malformed) < FIRST_NAMED:
                    report.first_malformed.append(str(err))
    if report.malformed and report.malformed > max_skip_share * report.total:
        raise DataError(
            f"{what}: {report.malformed} of {report.total} records are malformed "
            f"({report.malformed / report.total:.1%}), more than max_skip_share={max_skip_share:.1%} allows; "
            f"the first: {'; '.join(report.first_malformed)}"
        )
    if report.skipped:
        log.warning("%s", report.summary())
    return items, report
