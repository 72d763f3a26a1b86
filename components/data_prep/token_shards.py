"""Tokenize and pack a corpus of any size into flat token shards, spread over Ray Data.

The work is a Ray Data ``map`` over *units* (a file, or a range of a Parquet file's row groups;
see ``sources.py``), in three passes:

1. **scan** (per unit, in parallel): stream the documents, hash each one (64-bit BLAKE2b of
   its text) into ``work/scan/unit-N.npy`` and write the unit's share of the tokenizer sample
   (``unit-N.sample.jsonl``, which the driver folds into one bounded heap line by line):
   the ``k`` training documents whose seeded hash is smallest ("bottom-k"), so the sample is
   the same whatever the number of workers or the order units finish in, and bounded by ``k``.
2. **dedup** (driver): a document whose hash was seen earlier in corpus order (unit, then line)
   is an exact duplicate. The hash files are memory-mapped and processed one hash bucket at a
   time (buckets sized so one holds at most ``DEDUP_BUCKET_DOCS`` hashes), so the driver's
   memory is bounded by a bucket plus the list of duplicates found, not by the corpus.
3. **pack** (per unit, in parallel): stream the unit again, drop its duplicates, send each
   document to train or held-out by its hash (or the unit's fixed split), tokenize in batches
   with the fast tokenizer, join documents with EOS and write whole ``seq_len`` blocks as flat
   ``<split>-UUUUU-PPP.bin`` files (the unit's tail shorter than a block is dropped).

Each unit writes only its own files, so the shards are identical with 1 or N workers by
construction and no global ordering is needed. A unit's outputs are recorded by a marker
(``work/<pass>/unit-N.json``) written after its files, carrying a fingerprint of its inputs: a
re-run skips units whose marker matches and redoes the rest. The manifest and the stage's
``_COMPLETE`` marker come after every unit is done.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import logging
import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from components.common import storage
from components.common.errors import DataError
from components.data_prep.manifest import Shard, TokenSplit
from components.data_prep.sources import Unit, iter_unit

log = logging.getLogger(__name__)

DEDUP_BUCKET_DOCS = 4_000_000  # hashes the driver holds at once while finding duplicates (~160 MB)
SAMPLE_DOC_CHARS = 20_000  # a sampled document longer than this is cut (bounds the sample's memory)
TOKENIZE_BATCH = 256  # documents per fast-tokenizer call
_MASK64 = (1 << 64) - 1


def doc_hash(text: str) -> int:
    """64-bit content hash of a document: the duplicate key and the train/held-out key."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def is_heldout(h: int, fraction: float) -> bool:
    """Held-out iff the hash's low 32 bits fall below ``fraction``: stable when the corpus grows."""
    return (h & 0xFFFFFFFF) < int(fraction * 2**32)


def sample_key(h: int, seed: int) -> int:
    """A seeded bijective remix of the content hash (SplitMix64's finaliser): the sample order."""
    z = (h ^ ((seed * 0x9E3779B97F4A7C15) & _MASK64)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def _writing(uri: str) -> Iterator[Any]:
    """Open ``uri`` for writing; locally through a temporary name renamed at the end, so a
    killed writer never leaves a file under the final name (S3 objects appear only on close)."""
    if storage.is_remote(uri):
        with storage.open_uri(uri, "wb") as fh:
            yield fh
        return
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    tmp = f"{uri}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            yield fh
        os.replace(tmp, uri)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _marker(work: str, stage: str, index: int) -> str:
    return storage.join(work, stage, f"unit-{index:05d}.json")


def _done(work: str, stage: str, index: int, fingerprint: str) -> dict[str, Any] | None:
    uri = _marker(work, stage, index)
    if not storage.exists(uri):
        return None
    try:
        record = storage.read_json(uri)
    except (ValueError, OSError):
        return None
    return record["result"] if record.get("fingerprint") == fingerprint else None


def _finish(work: str, stage: str, index: int, fingerprint: str, result: dict[str, Any]) -> None:
    with _writing(_marker(work, stage, index)) as fh:
        fh.write(json.dumps({"fingerprint": fingerprint, "result": result}).encode())


def _version(unit: Unit) -> str:
    """What changes when the unit's file changes (size and mtime locally, the ETag on S3)."""
    if not unit.uri:
        return ""
    try:
        fs, path = storage.filesystem(unit.uri)
        return str(fs.ukey(path))
    except Exception:  # a store without ukey: the unit is redone only when its marker is missing
        return ""


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ---- pass 1: scan ---------------------------------------------------------------------------


def scan_unit(task: dict[str, Any]) -> dict[str, Any]:
    unit, index, work = Unit.from_json(task["unit"]), task["index"], task["work"]
    fp = _fingerprint("scan-v2", task["unit"], _version(unit), task["seed"], task["sample_docs"], task["heldout_fraction"])
    cached = _done(work, "scan", index, fp)
    if cached is not None:
        return cached
    hashes: list[int] = []
    heap: list[tuple[int, int, str]] = []  # (-key, doc index, text): the k smallest keys
    k, seed, fraction = task["sample_docs"], task["seed"], task["heldout_fraction"]
    chars = 0
    for i, text in enumerate(iter_unit(unit)):
        h = doc_hash(text)
        hashes.append(h)
        chars += len(text)
        train = unit.split == "train" if unit.split else not is_heldout(h, fraction)
        if train and k:
            key = sample_key(h, seed)
            if len(heap) < k:
                heapq.heappush(heap, (-key, i, text[:SAMPLE_DOC_CHARS]))
            elif -heap[0][0] > key:
                heapq.heapreplace(heap, (-key, i, text[:SAMPLE_DOC_CHARS]))
    with _writing(storage.join(work, "scan", f"unit-{index:05d}.npy")) as fh:
        np.save(fh, np.asarray(hashes, dtype=np.uint64), allow_pickle=False)
    # The unit's share of the sample goes to a file, not back through Ray: the driver folds the
    # files into one bounded heap one line at a time.
    with _writing(_sample_uri(work, index)) as fh:
        for nk, i, t in sorted(heap, reverse=True):
            fh.write((json.dumps([str(-nk), i, t]) + "\n").encode("utf-8"))
    result = {"docs": len(hashes), "chars": chars, "peak_rss_mb": peak_rss_mb()}
    _finish(work, "scan", index, fp, result)
    return result


def _sample_uri(work: str, index: int) -> str:
    return storage.join(work, "scan", f"unit-{index:05d}.sample.jsonl")


# ---- pass 2: dedup --------------------------------------------------------------------------


def _load_hashes(work: str, index: int) -> np.ndarray:
    with storage.open_uri(storage.join(work, "scan", f"unit-{index:05d}.npy"), "rb") as fh:
        return np.load(fh, allow_pickle=False)


def find_duplicates(work: str, doc_counts: list[int]) -> dict[int, np.ndarray]:
    """{unit: sorted doc indices that repeat an earlier document}, bucket by bucket.

    A document is named by its corpus position (the documents of the units before it, plus its
    index), so a bucket holds two 8-byte arrays per document; a stable sort by hash keeps the
    first copy of each hash first, and every later copy is a duplicate. Peak memory is about
    40 bytes per document of one bucket."""
    total = sum(doc_counts)
    buckets = max(1, -(-total // DEDUP_BUCKET_DOCS))
    offsets = np.concatenate([[0], np.cumsum(doc_counts)]).astype(np.int64)
    found: list[np.ndarray] = []
    for bucket in range(buckets):
        parts_h, parts_p = [], []
        for unit, count in enumerate(doc_counts):
            if not count:
                continue
            h = _load_hashes(work, unit)
            idx = np.nonzero(h % np.uint64(buckets) == bucket)[0] if buckets > 1 else np.arange(len(h))
            parts_h.append(h[idx])
            parts_p.append(idx.astype(np.int64) + offsets[unit])
            del h, idx
        if not parts_h:
            continue
        h, pos = np.concatenate(parts_h), np.concatenate(parts_p)
        del parts_h, parts_p
        order = np.argsort(h, kind="stable")  # equal hashes stay in corpus order
        sorted_h = h[order]
        del h
        repeats = order[1:][sorted_h[1:] == sorted_h[:-1]]
        found.append(pos[repeats])
        del order, sorted_h, pos
    if not found:
        return {}
    positions = np.sort(np.concatenate(found))
    units = np.searchsorted(offsets, positions, side="right") - 1
    return {int(u): positions[units == u] - offsets[u] for u in np.unique(units)}


# ---- pass 3: tokenize and pack --------------------------------------------------------------


class _SplitWriter:
    """Whole blocks of one split of one unit into ``<split>-UUUUU-PPP.bin`` files."""

    def __init__(self, out: str, split: str, index: int, seq_len: int, dtype: np.dtype, shard_blocks: int):
        self.out, self.split, self.index = out, split, index
        self.seq_len, self.dtype, self.shard_blocks = seq_len, dtype, shard_blocks
        self.pending: list[np.ndarray] = []
        self.pending_len = 0
        self.shards: list[dict[str, Any]] = []
        self.docs = 0
        self.text_hash = hashlib.sha256()
        self._file: Any = None
        self._ctx: Any = None
        self._blocks = 0
        self._sha: Any = None

    def add(self, ids: np.ndarray, h: int) -> None:
        self.docs += 1
        self.text_hash.update(h.to_bytes(8, "little"))
        self.pending.append(ids)
        self.pending_len += len(ids)
        if self.pending_len >= self.seq_len * 256:
            self._flush()

    def _flush(self) -> None:
        flat = np.concatenate(self.pending) if self.pending else np.zeros(0, self.dtype)
        whole = (len(flat) // self.seq_len) * self.seq_len
        rest = flat[whole:]
        self.pending, self.pending_len = ([rest] if len(rest) else []), len(rest)
        blocks = flat[:whole].reshape(-1, self.seq_len)
        while len(blocks):
            if self._file is None:
                self._open()
            take = min(len(blocks), self.shard_blocks - self._blocks)
            data = np.ascontiguousarray(blocks[:take], dtype=self.dtype).tobytes()
            self._file.write(data)
            self._sha.update(data)
            self._blocks += take
            blocks = blocks[take:]
            if self._blocks == self.shard_blocks:
                self._close()

    def _open(self) -> None:
        name = f"{self.split}-{self.index:05d}-{len(self.shards):03d}.bin"
        self._ctx = _writing(storage.join(self.out, name))
        self._file = self._ctx.__enter__()
        self._name, self._blocks, self._sha = name, 0, hashlib.sha256()

    def _close(self) -> None:
        self._ctx.__exit__(None, None, None)
        self.shards.append({"file": self._name, "num_blocks": self._blocks, "sha256": self._sha.hexdigest()})
        self._file = self._ctx = None

    def finish(self) -> dict[str, Any]:
        self._flush()  # the tail shorter than one block stays behind
        if self._file is not None:
            self._close()
        return {"shards": self.shards, "docs": self.docs, "text_hash": self.text_hash.hexdigest(),
                "dropped_tail_tokens": self.pending_len}

    def abort(self) -> None:
        if self._ctx is not None:
            try:
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass


@functools.lru_cache(maxsize=1)
def _fast_tokenizer(digest: str, tokenizer_json: str) -> Any:
    """One fast tokenizer per data worker process, reused by every unit it packs. Building a new
    one per unit leaked about 2 MB of native memory per unit (measured, tokenizers 0.23): the
    worker's memory grew with the corpus."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def pack_unit(task: dict[str, Any]) -> dict[str, Any]:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per data worker: the pool scales
    unit, index, work = Unit.from_json(task["unit"]), task["index"], task["work"]
    drops = set(task["drops"])
    fp = _fingerprint("pack", task["unit"], _version(unit), task["tokenizer_digest"], sorted(drops), task["seq_len"],
                      task["shard_blocks"], task["heldout_fraction"], task["dtype"])
    cached = _done(work, "pack", index, fp)
    if cached is not None:
        return cached
    tokenizer = _fast_tokenizer(task["tokenizer_digest"], task["tokenizer"])
    eos, dtype, fraction = task["eos"], np.dtype(task["dtype"]), task["heldout_fraction"]
    writers = {s: _SplitWriter(task["out"], s, index, task["seq_len"], dtype, task["shard_blocks"])
               for s in ("train", "heldout")}
    batch: list[tuple[str, int]] = []

    def encode() -> None:
        encodings = tokenizer.encode_batch([t for t, _ in batch], add_special_tokens=False)
        for (text, h), enc in zip(batch, encodings):
            split = unit.split or ("heldout" if is_heldout(h, fraction) else "train")
            ids = np.empty(len(enc.ids) + 1, dtype=dtype)
            ids[:-1] = enc.ids
            ids[-1] = eos
            writers[split].add(ids, h)
        batch.clear()

    tokens_in = 0
    try:
        for i, text in enumerate(iter_unit(unit)):
            if i in drops:
                continue
            batch.append((text, doc_hash(text)))
            if len(batch) == TOKENIZE_BATCH:
                encode()
        if batch:
            encode()
        result = {split: w.finish() for split, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    tokens_in = sum(s["num_blocks"] for r in result.values() for s in r["shards"]) * task["seq_len"]
    result["tokens"] = tokens_in
    result["peak_rss_mb"] = peak_rss_mb()
    _finish(work, "pack", index, fp, result)
    return result


# ---- running the passes ---------------------------------------------------------------------


def _guarded(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A unit's ``DataError`` comes back as a row (the driver raises it naming the file), so
    the message reaches the user as written, not wrapped in Ray's task error."""

    def run(row: dict[str, Any]) -> dict[str, Any]:
        task = json.loads(row["task"])
        try:
            return {"index": task["index"], "result": json.dumps(fn(task)), "error": ""}
        except DataError as err:
            return {"index": task["index"], "result": "", "error": str(err)}

    return run


def run_units(fn: Callable[[dict[str, Any]], dict[str, Any]], tasks: list[dict[str, Any]], workers: int,
              use_ray: bool, consume: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None
              ) -> list[dict[str, Any]]:
    """``fn`` over every task, on Ray Data with ``workers`` concurrent one-CPU tasks (or in this
    process); results in task order. Results are taken as they stream in (``iter_rows``) and
    each goes through ``consume`` first, which may fold a big part of it (the sample) into a
    bounded accumulator and return the rest: the driver never holds every unit's full result.
    The first failing unit (in order) raises its DataError."""
    rows = [{"task": json.dumps(t)} for t in tasks]
    if use_ray and len(rows) > 1:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_stats_logs = False
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        stream = ds.map(_guarded(fn), num_cpus=1, concurrency=max(1, min(workers, len(rows)))).iter_rows()
    else:
        stream = (_guarded(fn)(r) for r in rows)
    results: dict[int, dict[str, Any]] = {}
    errors: dict[int, str] = {}
    for row in stream:
        index = int(row["index"])
        if row["error"]:
            errors[index] = row["error"]
            continue
        result = json.loads(row["result"])
        results[index] = consume(index, result) if consume else result
    if errors:
        raise DataError(errors[min(errors)])
    return [results[i] for i in range(len(tasks))]


@dataclass
class PackedCorpus:
    train: TokenSplit
    heldout: TokenSplit
    stats: dict[str, Any]


def scan(units: list[Unit], work: str, seed: int, sample_docs: int, fraction: float, workers: int,
         use_ray: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Pass 1 for every unit: (per-unit results, the tokenizer sample in corpus order)."""
    tasks = [{"unit": u.to_json(), "index": i, "work": work, "seed": seed, "sample_docs": sample_docs,
              "heldout_fraction": fraction} for i, u in enumerate(units)]
    heap: list[tuple[int, int, int, str]] = []  # (-key, unit, doc, text): the k smallest keys so far

    results = run_units(scan_unit, tasks, workers, use_ray)
    for unit in range(len(units)):
        with storage.open_uri(_sample_uri(work, unit), "rb") as fh:
            for line in fh:
                key, i, text = json.loads(line)
                entry = (-int(key), unit, i, text)
                if len(heap) < sample_docs:
                    heapq.heappush(heap, entry)
                elif entry > heap[0]:
                    heapq.heapreplace(heap, entry)
                else:
                    break  # the file is in increasing key order: the rest are larger still
    merged = sorted(heap, key=lambda e: (e[1], e[2]))  # corpus order: the tokenizer sees text as written
    return results, [text for _, _, _, text in merged]


def pack(units: list[Unit], work: str, out: str, scans: list[dict[str, Any]], tokenizer_json: str, eos: int,
         vocab: int, seq_len: int, shard_blocks: int, fraction: float, workers: int, use_ray: bool) -> PackedCorpus:
    """Passes 2 and 3: drop duplicates, tokenize and pack every unit; the splits' listings."""
    counts = [r["docs"] for r in scans]
    if not sum(counts):
        raise DataError(f"the corpus has no documents: {', '.join(u.name for u in units) or 'no files'}")
    drops = find_duplicates(work, counts)
    dtype = "uint16" if vocab <= 2**16 else "uint32"
    digest = hashlib.sha256(tokenizer_json.encode()).hexdigest()
    tasks = [{"unit": u.to_json(), "index": i, "work": work, "out": out, "tokenizer": tokenizer_json,
              "tokenizer_digest": digest, "eos": eos, "dtype": dtype, "seq_len": seq_len,
              "shard_blocks": shard_blocks, "heldout_fraction": fraction,
              "drops": drops.get(i, np.zeros(0, np.int64)).tolist()} for i, u in enumerate(units)]
    started = time.perf_counter()
    results = run_units(pack_unit, tasks, workers, use_ray)
    seconds = time.perf_counter() - started
    splits = {}
    for split in ("train", "heldout"):
        shards = tuple(Shard(s["file"], s["num_blocks"], s["sha256"]) for r in results for s in r[split]["shards"])
        listing = hashlib.sha256()
        for s in shards:
            listing.update(f"{s.file}:{s.num_blocks}:{s.sha256}\n".encode())
        blocks = sum(s.num_blocks for s in shards)
        splits[split] = TokenSplit(out, seq_len, dtype, shards, blocks, blocks * seq_len, listing.hexdigest())
    text_digest = {}
    for split in ("train", "heldout"):
        h = hashlib.sha256()
        for r in results:
            h.update(r[split]["text_hash"].encode())
        text_digest[split] = h.hexdigest()
    stats = {
        "units": len(units),
        "documents": sum(counts),
        "duplicates_dropped": int(sum(len(d) for d in drops.values())),
        "train_documents": sum(r["train"]["docs"] for r in results),
        "heldout_documents": sum(r["heldout"]["docs"] for r in results),
        "text_digest": text_digest,
        "pack_seconds": round(seconds, 3),
        "tokens_per_s": round(sum(r["tokens"] for r in results) / seconds, 1) if seconds else 0.0,
        "worker_peak_rss_mb": round(max([r["peak_rss_mb"] for r in results] + [r["peak_rss_mb"] for r in scans]), 1),
    }
    return PackedCorpus(splits["train"], splits["heldout"], stats)
