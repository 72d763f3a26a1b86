"""data_prep: corpora in, tokenizer and packed shards out.

Reads the user's corpora (or generates the embedded world), trains the byte-level BPE
tokenizer, packs train and held-out splits into shards, and logs each dataset to MLflow as an
input of this stage with its digest. Everything lands in ``<run>/data`` and is marked complete
last, so a re-run of a finished data_prep skips the work and an interrupted one starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
import time
from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.errors import DataError
from components.common.stage import StageContext, stage_context
from components.common.tracking import DatasetRef
from components.data_prep.chat_loaders import load_instruction_sources
from components.data_prep.corpus import generate_corpus
from components.data_prep.instructions import Example, generate_instructions, to_record
from components.data_prep.loaders import load_corpus
from components.data_prep.preferences import PreferencePair, generate_preferences
from components.data_prep.preferences import to_record as pair_record
from components.data_prep.world import World, build_world
from components.data_prep.shards import pack_documents, write_shards
from components.data_prep.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def data_uri(run_uri: str) -> str:
    return storage.join(run_uri, "data")


def _text_digest(docs: list[str]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _corpus(cfg: Config) -> tuple[list[str], list[str], dict[str, Any] | None, str]:
    """(train docs, held-out docs, world as dict or None, a description of the source)."""
    if cfg.data.sources:
        train, heldout = load_corpus(cfg.data.sources, cfg.data.heldout_fraction, cfg.seed)
        described = ", ".join(s.uri or f"hf:{s.hf_dataset}" for s in cfg.data.sources)
        return train, heldout, None, described
    gen = cfg.data.generated
    world, train, heldout = generate_corpus(
        seed=cfg.seed,
        num_people=gen.num_people,
        num_train_docs=gen.num_train_docs,
        num_heldout_docs=gen.num_heldout_docs,
    )
    return train, heldout, world.to_dict(), f"generated world (seed {cfg.seed})"


def _write_jsonl(uri: str, records: list[dict[str, Any]]) -> str:
    """Write JSONL and return the SHA-256 of exactly the bytes written."""
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with storage.open_uri(uri, "wb") as fh:
        fh.write(payload)
    return hashlib.sha256(payload).hexdigest()


def _task_world(cfg: Config, world: dict[str, Any] | None) -> World:
    """The world generated tasks are about: the corpus' own, or (when the pre-training corpus
    came from the user) the one the seed would have generated."""
    return World.from_dict(world) if world else build_world(cfg.seed, cfg.data.generated.num_people)


def _instructions(cfg: Config, world: World) -> tuple[list[Example], list[Example], str]:
    """(train, held-out, source description) instruction examples."""
    icfg = cfg.data.instructions
    if icfg.sources:
        examples = load_instruction_sources(icfg.sources)
        train, heldout = _split_user_records(examples, icfg.heldout_fraction, cfg.seed, "instruction data", icfg.sources)
        return train, heldout, ", ".join(icfg.sources)
    train, heldout = generate_instructions(world, cfg.seed, icfg.num_train, icfg.num_heldout)
    return train, heldout, f"generated tasks (seed {cfg.seed})"


def _split_user_records(records: list, fraction: float, seed: int, what: str, sources: list[str]) -> tuple[list, list]:
    """A seeded train/held-out split of user records; both splits must be non-empty."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(records) * fraction))
    if len(records) - n_held < 1:
        raise DataError(
            f"{what} {', '.join(sources)} has {len(records)} records: "
            "too few for a train split and a held-out split"
        )
    return [records[i] for i in order[n_held:]], [records[i] for i in order[:n_held]]


def _preferences(
    cfg: Config, world: World, sft_train: list[Example], sft_heldout: list[Example]
) -> tuple[list[PreferencePair], list[PreferencePair], str]:
    pcfg = cfg.data.preferences
    if pcfg.sources:
        from components.data_prep.preference_loaders import load_preference_sources

        pairs = load_preference_sources(pcfg.sources)
        train, heldout = _split_user_records(pairs, pcfg.heldout_fraction, cfg.seed, "preference data", pcfg.sources)
        return train, heldout, ", ".join(pcfg.sources)
    prompts_train = [e for e in sft_train if e.family != "user"]
    prompts_held = [e for e in sft_heldout if e.family != "user"]
    if not prompts_train or not prompts_held:  # user instructions: pair up the generated tasks
        icfg = cfg.data.instructions
        prompts_train, prompts_held = generate_instructions(world, cfg.seed, icfg.num_train, icfg.num_heldout)
    train, heldout = generate_preferences(world, prompts_train, prompts_held, cfg.seed, pcfg.num_train, pcfg.num_heldout)
    return train, heldout, f"generated pairs judged by the oracle (seed {cfg.seed})"


def _chat_text(example: Example) -> str:
    return "\n".join(m["content"] for m in example.messages)


def prepare(ctx: StageContext) -> dict[str, Any]:
    """Do the work of data_prep into ``<run>/data``; returns the manifest."""
    cfg = ctx.cfg
    out = data_uri(ctx.run_uri)
    started = time.perf_counter()
    train_docs, heldout_docs, world, source = _corpus(cfg)
    if not train_docs:
        raise DataError(f"the training split is empty ({source})")
    if not heldout_docs:
        raise DataError(f"the held-out split is empty ({source})")
    log.info("corpus: %d train / %d held-out documents from %s", len(train_docs), len(heldout_docs), source)

    task_world = _task_world(cfg, world)
    sft_train, sft_heldout, sft_source = _instructions(cfg, task_world)
    if not sft_train or not sft_heldout:
        raise DataError(f"instruction data has an empty {'train' if not sft_train else 'held-out'} split ({sft_source})")
    log.info("instructions: %d train / %d held-out from %s", len(sft_train), len(sft_heldout), sft_source)
    pref_train, pref_heldout, pref_source = _preferences(cfg, task_world, sft_train, sft_heldout)
    log.info("preference pairs: %d train / %d held-out from %s", len(pref_train), len(pref_heldout), pref_source)

    storage.remove(out)  # a folder without the marker is a crashed attempt: start clean
    tokenizer = train_tokenizer(
        train_docs + [_chat_text(e) for e in sft_train], cfg.data.vocab_size, cfg.data.tokenizer_min_frequency
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        storage.upload_dir(tmp, storage.join(out, "tokenizer"))
    log.info("tokenizer: %d tokens", len(tokenizer))

    seq_len = cfg.model.max_seq_len
    shard_dir = storage.join(out, "pretrain")
    splits = {}
    for split, docs in (("train", train_docs), ("heldout", heldout_docs)):
        blocks = pack_documents(docs, tokenizer, seq_len)
        if blocks.shape[0] == 0:
            raise DataError(
                f"the {split} split of {source} is shorter than one block of {seq_len} tokens"
            )
        splits[split] = write_shards(blocks, shard_dir, split, cfg.data.shard_blocks)
        log.info("%s: %d blocks of %d tokens", split, blocks.shape[0], seq_len)

    _write_jsonl(storage.join(out, "corpus", "train.jsonl"), [{"text": d} for d in train_docs])
    _write_jsonl(storage.join(out, "corpus", "heldout.jsonl"), [{"text": d} for d in heldout_docs])
    sft = {}
    for split, examples in (("train", sft_train), ("heldout", sft_heldout)):
        uri = storage.join(out, "sft", f"{split}.jsonl")
        digest = _write_jsonl(uri, [to_record(e) for e in examples])
        sft[split] = {"uri": uri, "digest": digest, "num_examples": len(examples)}
    preference = {}
    for split, pairs in (("train", pref_train), ("heldout", pref_heldout)):
        uri = storage.join(out, "preference", f"{split}.jsonl")
        digest = _write_jsonl(uri, [pair_record(p) for p in pairs])
        preference[split] = {"uri": uri, "digest": digest, "num_examples": len(pairs)}
    if world is not None:
        storage.write_json(storage.join(out, "world.json"), world)

    manifest = {
        "data_uri": out,
        "source": source,
        "tokenizer_uri": storage.join(out, "tokenizer"),
        "vocab_size": len(tokenizer),
        "seq_len": seq_len,
        "pretrain": {
            split: {
                "uri": shard_dir,
                "files": s.files,
                "num_blocks": s.num_blocks,
                "num_tokens": s.num_tokens,
                "digest": s.digest,
                "text_digest": _text_digest(train_docs if split == "train" else heldout_docs),
            }
            for split, s in splits.items()
        },
        "sft": {"source": sft_source, **sft},
        "preference": {"source": pref_source, **preference},
        "seconds": round(time.perf_counter() - started, 2),
    }
    storage.write_json(storage.join(out, MANIFEST), manifest)
    storage.mark_complete(out, {"stage": "data_prep"})
    return manifest


def dataset_refs(
    manifest: dict[str, Any], kinds: tuple[str, ...] = ("pretrain", "sft", "preference")
) -> list[DatasetRef]:
    """The datasets a manifest describes (``pretrain-train``, ``sft-heldout``, ...), as lineage
    records."""
    refs = []
    for kind in kinds:
        for split in ("train", "heldout"):
            info = manifest[kind][split]
            refs.append(
                DatasetRef(
                    name=f"{kind}-{split}",
                    uri=info["uri"],
                    digest=info["digest"],
                    context="training" if split == "train" else "evaluation",
                )
            )
    return refs


def load_manifest(data: str) -> dict[str, Any]:
    storage.require_complete(data, "data_prep output")
    return storage.read_json(storage.join(data, MANIFEST))


def run_data_prep(cfg: Config, run_id: str) -> dict[str, Any]:
    """Entry point (CLI, KFP component, tests). Skips work already finished for this run."""
    with stage_context(cfg, run_id, "data_prep") as ctx:
        out = data_uri(ctx.run_uri)
        if storage.is_complete(out):
            log.info("data_prep already complete at %s; reusing it", out)
            manifest = load_manifest(out)
        else:
            manifest = prepare(ctx)
            ctx.tracker.log_datasets(ctx.mlflow_run_id, dataset_refs(manifest))
            ctx.tracker.log_metrics(
                ctx.mlflow_run_id,
                {
                    "train_tokens": manifest["pretrain"]["train"]["num_tokens"],
                    "heldout_tokens": manifest["pretrain"]["heldout"]["num_tokens"],
                    "vocab_size": manifest["vocab_size"],
                    "sft_train_examples": manifest["sft"]["train"]["num_examples"],
                },
            )
            ctx.tracker.log_params(ctx.mlflow_run_id, {"data_source": manifest["source"]})
        manifest["mlflow_parent_run_id"] = ctx.parent_run_id
        return manifest
