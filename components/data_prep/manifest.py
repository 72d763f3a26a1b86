"""The data_prep manifest: where it lives, what it lists, and how later stages read it.

Every stage after data_prep reads the manifest; this module is all they import for it (no
corpus generator, no tokenizer trainer, no Ray). The pre-training corpus is listed as flat
token shards: ``<split>-NNNNN.bin`` files of ``dtype`` token ids, a whole number of
``seq_len`` blocks each, with their block count, token count and SHA-256, so a reader can
range-read any block without loading a shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.common import storage
from components.common.tracking import VOTES_DATASET, DatasetRef

MANIFEST = "manifest.json"
# The datasets a manifest lists, each with a train and a held-out split.
DATASET_KINDS = ("pretrain", "sft", "preference", "rlvr")
SHARD_FORMAT = "flat-tokens-v1"


def data_uri(run_uri: str) -> str:
    return storage.join(run_uri, "data")


@dataclass(frozen=True)
class Shard:
    """One flat token file: ``num_blocks`` blocks of ``seq_len`` ids, nothing else in it."""

    file: str
    num_blocks: int
    sha256: str


@dataclass(frozen=True)
class TokenSplit:
    """One split of the packed corpus as the manifest lists it."""

    uri: str
    seq_len: int
    dtype: str
    shards: tuple[Shard, ...]
    num_blocks: int
    num_tokens: int
    digest: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], split: str) -> "TokenSplit":
        info = manifest["pretrain"][split]
        if info.get("format") != SHARD_FORMAT:
            raise ValueError(
                f"{manifest.get('data_uri', '?')}: the {split} split is in format "
                f"{info.get('format', '.npy shards')!r}, not {SHARD_FORMAT!r}; re-run data_prep"
            )
        shards = tuple(Shard(s["file"], int(s["num_blocks"]), s["sha256"]) for s in info["shards"])
        return cls(
            uri=info["uri"], seq_len=int(info["seq_len"]), dtype=info["dtype"], shards=shards,
            num_blocks=int(info["num_blocks"]), num_tokens=int(info["num_tokens"]), digest=info["digest"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SHARD_FORMAT, "uri": self.uri, "seq_len": self.seq_len, "dtype": self.dtype,
            "shards": [{"file": s.file, "num_blocks": s.num_blocks, "sha256": s.sha256} for s in self.shards],
            "num_blocks": self.num_blocks, "num_tokens": self.num_tokens, "digest": self.digest,
        }


def load_manifest(data: str) -> dict[str, Any]:
    storage.require_complete(data, "data_prep output")
    return storage.read_json(storage.join(data, MANIFEST))


def dataset_refs(manifest: dict[str, Any], kinds: tuple[str, ...] | None = None) -> list[DatasetRef]:
    """The datasets a manifest describes (``pretrain-train``, ``sft-heldout``, ``rlvr-train``,
    ...), as lineage records: train splits in the "training" context, held-out ones in
    "evaluation".

    ``kinds=None`` means every kind of ``DATASET_KINDS`` the manifest has (one written before
    RLVR existed has no "rlvr"); a kind asked for by name must be there.
    """
    if kinds is None:
        kinds = tuple(kind for kind in DATASET_KINDS if kind in manifest)
    refs = []
    for kind in kinds:
        for split in ("train", "heldout", "instructions"):
            if split == "instructions" and split not in manifest[kind]:
                continue  # only rlvr has them (and manifests written before they existed do not)
            info = manifest[kind][split]
            refs.append(
                DatasetRef(
                    name=f"{kind}-{split}",
                    uri=info["uri"],
                    digest=info["digest"],
                    context="evaluation" if split == "heldout" else "training",
                )
            )
        if kind == "preference" and "votes" in manifest[kind]:  # the votes snapshot the pairs came from
            info = manifest[kind]["votes"]
            refs.append(DatasetRef(name=VOTES_DATASET, uri=info["uri"], digest=info["digest"], context="training"))
    return refs
