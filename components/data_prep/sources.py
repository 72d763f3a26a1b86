"""Corpus sources as work units that stream their documents.

A source (``data.sources``) is a file, folder, glob or ``s3://`` prefix of plain text, JSONL or
Parquet files, each optionally ``.gz``/``.zst`` compressed, or a Hugging Face dataset read in
streaming mode. ``plan_units`` turns the sources into ``Unit``s (one per file; one per Parquet
row-group range; one per byte range of an uncompressed JSONL file larger than ``unit_bytes``;
one per HF dataset), the granule data prep hands to a Ray Data worker. Units of about equal
size are what lets N workers finish together: a corpus of a few big files would otherwise keep
most workers idle while one reads the largest file.
``iter_unit`` streams a unit's documents: text and JSONL line by line, Parquet one record batch
of the named column at a time, so no file is ever held in memory whole.

Bad data is a ``DataError`` naming the file and, where there is one, the line (text/JSONL) or
row (Parquet): a truncated gzip, a ``.zst`` that is not zstd, bytes that are not UTF-8, a
Parquet file without the column.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from fsspec.core import url_to_fs

from components.common.errors import DataError, at
from components.common.storage import storage_options
from components.data_prep.loaders import display_name, iter_hf_dataset, iter_json_lines, iter_text, resolve_files_where

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
KINDS = {".txt": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
# Parquet row groups per unit: big files split into several units so both small and huge
# files spread over the data workers.
PARQUET_GROUPS_PER_UNIT = 4


@dataclass(frozen=True)
class Unit:
    """One piece of work: a file (or a row-group range of a Parquet file), or an HF dataset.

    ``split`` fixes the split of every document in it ("train"/"heldout"); None splits each
    document by the hash of its text."""

    uri: str  # fsspec URI of the file ("" for an HF dataset)
    kind: str  # text | jsonl | parquet | hf
    compression: str | None
    field: str
    name: str  # how messages name it
    row_groups: tuple[int, int] | None = None
    hf: tuple[str, str | None, str] | None = None  # (dataset, config, split)
    split: str | None = None
    # [start, end) bytes of an uncompressed JSONL file: the unit holds the lines that *start*
    # in the range (a line crossing ``end`` is read whole; the next unit skips it)
    byte_range: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Unit":
        data = dict(data)
        for key in ("row_groups", "hf", "byte_range"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def describe_file(path: str, fmt: str = "auto") -> tuple[str, str | None]:
    """(kind, compression) of a corpus file from its name (``fmt`` forces the kind)."""
    lower = path.lower()
    compression = None
    for ext, codec in COMPRESSIONS.items():
        if lower.endswith(ext):
            compression, lower = codec, lower[: -len(ext)]
            break
    if fmt != "auto":
        return fmt, compression
    for ext, kind in KINDS.items():
        if lower.endswith(ext):
            return kind, compression
    return "text", compression


def _is_corpus_file(path: str) -> bool:
    lower = path.lower()
    for ext in COMPRESSIONS:
        if lower.endswith(ext):
            lower = lower[: -len(ext)]
    return lower.endswith(tuple(KINDS))


def resolve_files(uri: str) -> tuple[Any, list[str]]:
    """The sorted files a URI stands for (a file, a folder's corpus files, or a glob);
    storage failures are a ``DataError`` naming the URI."""
    return resolve_files_where(
        uri, _is_corpus_file, "corpus files (*.txt, *.jsonl, *.json, *.parquet, optionally .gz/.zst)"
    )


def _parquet_units(fs: Any, path: str, base: dict[str, Any]) -> list[Unit]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
            groups, schema = meta.num_row_groups, meta.schema.to_arrow_schema()
    except Exception as err:
        raise DataError(f"{base['name']}: not a readable Parquet file ({type(err).__name__}: {err})") from err
    if base["field"] not in schema.names:
        raise DataError(
            f"{base['name']}: no column '{base['field']}' (columns: {', '.join(schema.names) or 'none'}); "
            "set the source's 'field' to the column that holds the text"
        )
    step = PARQUET_GROUPS_PER_UNIT
    return [Unit(**base, row_groups=(g, min(g + step, groups))) for g in range(0, max(groups, 1), step)]


def _byte_range_units(fs: Any, path: str, base: dict[str, Any], unit_bytes: int) -> list[Unit]:
    """An uncompressed JSONL file cut into ranges of about ``unit_bytes`` (one document per line,
    so any byte is a safe cut: the reader moves it to the next line start). Plain text is never
    cut: its documents may span lines. Compressed streams cannot be entered mid-way."""
    size = int(fs.size(path) or 0)
    if unit_bytes <= 0 or size <= unit_bytes:
        return [Unit(**base)]
    parts = -(-size // unit_bytes)
    cuts = [size * i // parts for i in range(parts + 1)]
    return [Unit(**base, byte_range=(cuts[i], cuts[i + 1])) for i in range(parts)]


def plan_units(sources: list[Any], unit_bytes: int = 0) -> list[Unit]:
    """Every unit of ``sources``, in a fixed order (sources as given, files sorted); uncompressed
    JSONL files above ``unit_bytes`` (0: never) become several byte-range units."""
    units: list[Unit] = []
    for source in sources:
        if getattr(source, "hf_dataset", None):
            label = f"hf:{source.hf_dataset}" + (f"/{source.hf_config}" if source.hf_config else "")
            units.append(Unit("", "hf", None, source.field, f"{label}[{source.hf_split}]",
                              hf=(source.hf_dataset, source.hf_config, source.hf_split)))
            continue
        fs, files = resolve_files(source.uri)
        for path in files:
            kind, compression = describe_file(path, source.format)
            uri = fs.unstrip_protocol(path) if not display_name(fs, path) == path else path
            base = {"uri": uri, "kind": kind, "compression": compression, "field": source.field,
                    "name": display_name(fs, path)}
            if kind == "parquet":
                if compression:
                    raise DataError(f"{base['name']}: Parquet compresses its own pages; do not wrap it in {compression}")
                units.extend(_parquet_units(fs, path, base))
            elif kind == "jsonl" and not compression:
                units.extend(_byte_range_units(fs, path, base, unit_bytes))
            else:
                units.append(Unit(**base))
    return units


# ---- streaming one unit ---------------------------------------------------------------------


def _decompressed(raw: Any, compression: str | None) -> Any:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


def _decode_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a declared dependency
        pass
    return tuple(errors)


def _lines(unit: Unit) -> Iterator[tuple[int, str]]:
    """(1-based line, text without newline) of a text/JSONL unit, decompressed on the fly.

    A byte-range unit counts its lines from the start of its range (``iter_unit`` turns them
    into the file's own line numbers if an error has to name one)."""
    fs, path = url_to_fs(unit.uri, **storage_options(unit.uri))
    lineno = 0
    try:
        with fs.open(path, "rb") as raw, _decompressed(raw, unit.compression) as fh:
            start, end = unit.byte_range or (0, -1)
            if start:
                fh.seek(start - 1)
                fh.readline()  # the rest of the line that started before the range: the last unit's
            position = fh.tell() if unit.byte_range else 0
            for lineno, data in enumerate(fh, start=1):
                if unit.byte_range:
                    if position >= end:
                        break
                    position += len(data)
                try:
                    line = data.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise at(unit.name, lineno, f"not valid UTF-8 text (bad byte at column {err.start + 1})") from None
                if lineno == 1 and not start and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line.rstrip("\r\n")
    except _decode_errors() as err:
        what = {"gzip": "gzip data", "zstd": "zstd data"}.get(unit.compression or "", "the file")
        detail = f"{type(err).__name__}: {err}"
        if unit.compression == "zstd" and "unknown frame descriptor" in str(err).lower():
            detail = "not zstd-compressed (bad magic number)"
        raise at(unit.name, lineno + 1, f"cannot read {what} after {lineno} complete lines ({detail})") from None


def _lines_before(unit: Unit) -> int:
    """Lines of the file before a byte-range unit's first line (read only when an error must
    name a line: the common path never pays for it)."""
    fs, path = url_to_fs(unit.uri, **storage_options(unit.uri))
    start = (unit.byte_range or (0, 0))[0]
    if not start:
        return 0
    count, done = 0, 0
    with fs.open(path, "rb") as fh:
        while done < start - 1:
            chunk = fh.read(min(1 << 24, start - 1 - done))
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
        count += fh.readline().endswith(b"\n")  # the straddling line the range skipped
    return count


@contextlib.contextmanager
def _file_line_numbers(unit: Unit) -> Iterator[None]:
    """Inside, a ``DataError`` naming ``<unit>:<line in range>`` is re-raised naming the line of
    the whole file, so a split file reports errors exactly as the unsplit one would."""
    try:
        yield
    except DataError as err:
        if not unit.byte_range or err.source != unit.name or err.line is None or err.detail is None:
            raise
        raise at(unit.name, _lines_before(unit) + err.line, err.detail) from None


def _parquet_docs(unit: Unit) -> Iterator[str]:
    import pyarrow.parquet as pq

    fs, path = url_to_fs(unit.uri, **storage_options(unit.uri))
    first, last = unit.row_groups or (0, 0)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        if unit.field not in pf.schema_arrow.names:
            raise DataError(f"{unit.name}: no column '{unit.field}' (columns: {', '.join(pf.schema_arrow.names)})")
        row = sum(pf.metadata.row_group(g).num_rows for g in range(first))
        for batch in pf.iter_batches(batch_size=2048, row_groups=list(range(first, last)), columns=[unit.field]):
            for value in batch.column(0).to_pylist():
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{unit.name}: row {row}: column '{unit.field}' must hold strings, got {type(value).__name__}")
                row += 1
                if value and value.strip():  # empty rows are paragraph breaks in common corpora
                    yield value


def iter_unit(unit: Unit) -> Iterator[str]:
    """The documents of one unit, streamed."""
    if unit.kind == "hf":
        name, config, split = unit.hf or ("", None, "train")
        yield from iter_hf_dataset(name, config, split, unit.field)
    elif unit.kind == "parquet":
        yield from _parquet_docs(unit)
    elif unit.kind == "jsonl":
        with _file_line_numbers(unit):
            yield from _jsonl_docs(unit)
    else:
        yield from iter_text(_lines(unit))


def _jsonl_docs(unit: Unit) -> Iterator[str]:
    for lineno, record in iter_json_lines(_lines(unit), unit.name):
        if not isinstance(record, dict):
            raise at(unit.name, lineno, f"expected a JSON object, got {type(record).__name__}")
        value = record.get(unit.field)
        if not isinstance(value, str):
            keys = ", ".join(sorted(map(str, record))) or "none"
            raise at(unit.name, lineno, f"missing string field '{unit.field}' (fields present: {keys})")
        if value.strip():
            yield value


def check_sources(sources: list[Any]) -> None:
    """Fail fast, before any stage starts, if a configured corpus file/folder/glob is not there
    (corpus folders may hold Parquet and compressed files: ``sources.resolve_files``)."""
    for source in sources:
        if getattr(source, "uri", None):
            resolve_files(source.uri)
