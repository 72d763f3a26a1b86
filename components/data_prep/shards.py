"""Reading flat token shards block by block, and the seeded order blocks are trained in.

A split is a list of ``.bin`` files of raw token ids (``dtype`` from the manifest), each a whole
number of ``seq_len`` blocks (``token_shards.py`` writes them). ``BlockReader`` fetches any
block by its global id without loading a shard: local files are read with ``pread`` at the
block's offset (not memory-mapped, so a long run's resident memory does not grow with the pages
it has touched), remote ones (``s3://``) are range-read, with the next batch fetched in the background while the current
one trains. ``BlockOrder`` is a seeded permutation of the block ids per epoch computed on the
fly (a Feistel network with cycle-walking), so no worker holds an array the size of the corpus.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from components.common import storage
from components.data_prep.manifest import TokenSplit

_MASK64 = np.uint64((1 << 64) - 1)


class BlockReader:
    """Random access to the blocks of one split; reads only the blocks asked for."""

    def __init__(self, split: TokenSplit):
        self.split = split
        self.seq_len = split.seq_len
        self.dtype = np.dtype(split.dtype)
        self.ends = np.cumsum([s.num_blocks for s in split.shards], dtype=np.int64)
        self.remote = storage.is_remote(split.uri)
        self._fds: dict[int, int] = {}
        self.block_bytes = self.seq_len * self.dtype.itemsize
        self._fs: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[tuple[int, ...], Future] | None = None

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"block id out of range 0..{len(self) - 1}")
        shard = np.searchsorted(self.ends, ids, side="right")
        starts = np.concatenate([[0], self.ends[:-1]])
        return shard, ids - starts[shard]

    def _local(self, shard: int, offset: int) -> np.ndarray:
        if shard not in self._fds:
            self._fds[shard] = os.open(storage.join(self.split.uri, self.split.shards[shard].file), os.O_RDONLY)
        data = os.pread(self._fds[shard], self.block_bytes, offset * self.block_bytes)
        if len(data) != self.block_bytes:
            raise OSError(f"{self.split.shards[shard].file}: block {offset} is cut short (file truncated?)")
        return np.frombuffer(data, dtype=self.dtype)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _remote(self, shard: int, offset: int) -> np.ndarray:
        if self._fs is None:
            self._fs, _ = storage.filesystem(self.split.uri)
        _, path = storage.filesystem(storage.join(self.split.uri, self.split.shards[shard].file))
        size = self.block_bytes
        data = self._fs.cat_file(path, start=offset * size, end=(offset + 1) * size)
        return np.frombuffer(data, dtype=self.dtype)

    def _read(self, ids: Sequence[int]) -> np.ndarray:
        arr = np.asarray(ids, dtype=np.int64)
        shard, offset = self._locate(arr)
        out = np.empty((len(arr), self.seq_len), dtype=self.dtype)
        for row, (s, o) in enumerate(zip(shard.tolist(), offset.tolist())):
            out[row] = self._remote(s, o) if self.remote else self._local(s, o)
        return out

    def read(self, ids: Sequence[int], next_ids: Sequence[int] | None = None) -> np.ndarray:
        """The blocks ``ids`` as ``[len(ids), seq_len]``; ``next_ids`` (remote storage only)
        starts fetching the following batch in the background."""
        key = tuple(int(i) for i in ids)
        if self._ahead is not None and self._ahead[0] == key:
            blocks = self._ahead[1].result()
        else:
            blocks = self._read(key)
        self._ahead = None
        if self.remote and next_ids is not None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="block-read-ahead")
            nxt = tuple(int(i) for i in next_ids)
            self._ahead = (nxt, self._pool.submit(self._read, nxt))
        return blocks

    def head(self, count: int) -> np.ndarray:
        """The first ``count`` blocks of the split (evaluation's held-out set)."""
        return self._read(range(min(count, len(self))))


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (x ^ key) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
        return z ^ (z >> np.uint64(32))


def _key(seed: int, epoch: int, round_: int) -> np.uint64:
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + round_ * 0x94D049BB133111EB + 1) % (1 << 64)
    return _mix(np.array([z], dtype=np.uint64), np.uint64(0x5851F42D4C957F2D))[0]


class BlockOrder:
    """A seeded permutation of ``0..num_blocks-1`` for each epoch, computed per position."""

    ROUNDS = 4

    def __init__(self, num_blocks: int, seed: int):
        if num_blocks < 1:
            raise ValueError("no blocks to order")
        self.num_blocks, self.seed = num_blocks, seed
        bits = max(2, (num_blocks - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)

    def _feistel(self, x: np.ndarray, keys: list[np.uint64]) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in keys:
            left, right = right, left ^ (_mix(right, key) & self.mask)
        return (left << self.half) | right

    def permute(self, epoch: int, offsets: np.ndarray) -> np.ndarray:
        keys = [_key(self.seed, epoch, r) for r in range(self.ROUNDS)]
        x = np.asarray(offsets, dtype=np.uint64)
        out = self._feistel(x, keys)
        outside = out >= np.uint64(self.num_blocks)
        while outside.any():  # cycle-walking: a bijection of the power-of-4 domain restricted to N
            out[outside] = self._feistel(out[outside], keys)
            outside = out >= np.uint64(self.num_blocks)
        return out.astype(np.int64)

    def blocks(self, positions: np.ndarray) -> np.ndarray:
        """Block ids at global sample positions (position p is epoch p // N, offset p % N)."""
        pos = np.asarray(positions, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.num_blocks)
        out = np.empty(len(pos), dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            sel = epochs == epoch
            out[sel] = self.permute(int(epoch), offsets[sel])
        return out


def read_split(manifest: dict[str, Any], split: str) -> np.ndarray:
    """Every block of a split in one array: for tests and small corpora only."""
    reader = BlockReader(TokenSplit.from_manifest(manifest, split))
    return reader.head(len(reader))
