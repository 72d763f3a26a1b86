"""Tokenize documents and pack them into fixed-length blocks stored as ``.npy`` shards.

Packing (documents joined by EOS, cut into ``seq_len`` blocks) wastes no compute on padding,
which matters on a 2-core machine as much as on a GPU. Shards are small numpy files that any
worker reads through fsspec, whatever node it runs on.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerFast

from components.common import storage


@dataclass(frozen=True)
class ShardSet:
    """One split's packed blocks, as written to storage."""

    split: str
    files: list[str]
    num_blocks: int
    num_tokens: int
    digest: str


def pack_documents(docs: list[str], tokenizer: PreTrainedTokenizerFast, seq_len: int) -> np.ndarray:
    """All documents, EOS-separated, as a [num_blocks, seq_len] array (the tail is dropped)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for start in range(0, len(docs), 1024):
        batch = tokenizer(docs[start : start + 1024], add_special_tokens=False)["input_ids"]
        for seq in batch:
            ids.extend(seq)
            ids.append(eos)
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.uint32
    flat = np.asarray(ids, dtype=dtype)
    num_blocks = len(flat) // seq_len
    return flat[: num_blocks * seq_len].reshape(num_blocks, seq_len)


def write_shards(blocks: np.ndarray, out_uri: str, split: str, shard_blocks: int) -> ShardSet:
    """Write ``blocks`` as ``<split>-NNNNN.npy`` files; the digest covers every byte written."""
    digest = hashlib.sha256()
    files: list[str] = []
    for index, start in enumerate(range(0, len(blocks), shard_blocks)):
        buf = io.BytesIO()
        np.save(buf, blocks[start : start + shard_blocks], allow_pickle=False)
        data = buf.getvalue()
        digest.update(data)
        name = f"{split}-{index:05d}.npy"
        with storage.open_uri(storage.join(out_uri, name), "wb") as fh:
            fh.write(data)
        files.append(name)
    return ShardSet(split, files, int(blocks.shape[0]), int(blocks.size), digest.hexdigest())


def read_shards(base_uri: str, files: list[str]) -> np.ndarray:
    """Load a split's blocks back into one array."""
    parts = []
    for name in files:
        with storage.open_uri(storage.join(base_uri, name), "rb") as fh:
            parts.append(np.load(io.BytesIO(fh.read()), allow_pickle=False))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.uint16)
