"""data_prep: corpora in, tokenizer and packed shards out.

Reads the user's corpora (or generates the embedded world), trains the byte-level BPE
tokenizer, packs train and held-out splits into shards, writes the instruction, preference and
RLVR problem splits (a share of the worked training problems joins the SFT set), and logs each
dataset to MLflow as an input of this stage with its digest. Everything lands in
``<run>/data`` and is marked complete last, so a re-run of a finished data_prep skips the work.

The pre-training corpus streams (``sources.py`` reads it, ``token_shards.py`` tokenizes and
packs it on Ray Data into flat token shards); an interrupted data_prep re-run redoes only the
corpus units that were not finished. The generated world is written out as JSONL first and
goes down the same path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
import time
from collections.abc import Container
from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.errors import DataError
from components.common.stage import StageContext, stage_context
from components.data_prep.chat_loaders import load_instruction_sources
from components.data_prep.corpus import stream_seed, generate_corpus
from components.data_prep.demonstrations import flaw_demonstrations
from components.data_prep.instructions import REPLY_FORMATS, Example, generate_instructions, to_record
from components.data_prep.manifest import DATASET_KINDS, MANIFEST, data_uri, dataset_refs, load_manifest  # noqa: F401
from components.data_prep.preferences import PreferencePair, generate_preferences
from components.data_prep.preferences import to_record as pair_record
from components.data_prep.problems import Problem, generate_problems, to_sft_examples
from components.data_prep.problems import to_record as problem_record
from components.data_prep.sources import Unit, plan_units
from components.data_prep.token_shards import pack, peak_rss_mb, scan
from components.data_prep.tokenizer import train_tokenizer
from components.data_prep.votes import collect_votes, combine, heldout_prompt_keys, write_votes
from components.data_prep.world import World, build_world
from components.common.start import resolve_start

log = logging.getLogger(__name__)

# Kept across attempts of one run: finished corpus units are not redone.
RESUMABLE = ("work", "pretrain")


def _corpus_units(cfg: Config, out: str) -> tuple[list[Unit], dict[str, Any] | None, str]:
    """(units to tokenize, world as dict or None, a description of the source).

    The generated world is written to ``corpus/generated-{train,heldout}.jsonl`` (two units
    with a fixed split); user sources are planned into units that split by document hash."""
    if cfg.data.sources:
        described = ", ".join(s.uri or f"hf:{s.hf_dataset}" for s in cfg.data.sources)
        return plan_units(cfg.data.sources, int(cfg.data.unit_mb * 1_000_000)), None, described
    gen = cfg.data.generated
    world, train, heldout = generate_corpus(
        seed=cfg.seed,
        num_people=gen.num_people,
        num_train_docs=gen.num_train_docs,
        num_heldout_docs=gen.num_heldout_docs,
    )
    units = []
    for split, docs in (("train", train), ("heldout", heldout)):
        uri = storage.join(out, "corpus", f"generated-{split}.jsonl")
        _write_jsonl(uri, [{"text": d} for d in docs])
        units.append(Unit(uri, "jsonl", None, "text", uri, split=split))
    return units, world.to_dict(), f"generated world (seed {cfg.seed})"


def _remove_except(folder: str, keep: Container[str], inside: str) -> None:
    """Delete the entries of ``folder`` not named in ``keep``, never anything outside the run
    folder ``inside``: what an unfinished attempt wrote (its reusable corpus work kept), or the
    shard files of an earlier attempt that this manifest does not list."""
    storage.check_deletable(folder, inside)
    if not storage.exists(folder):
        return
    fs, path = storage.filesystem(folder)
    for entry in fs.ls(path, detail=False):
        if entry.rstrip("/").rsplit("/", 1)[-1] not in keep:
            fs.rm(entry, recursive=True)


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


def _instructions(
    cfg: Config,
    world: World,
    num_problems: int = 0,
    skips: dict[str, Any] | None = None,
    user_pairs: tuple[list[PreferencePair], list[PreferencePair], str] | None = None,
    user_problems: tuple[list[Problem], str] | None = None,
) -> tuple[list[Example], list[Example], str]:
    """(train, held-out, source description) instruction examples; generated training sets
    leave ``num_problems`` of their ``num_train`` slots for worked problems (``_mix_problems``).

    Without instruction sources while the pre-training corpus is the user's, the generated
    tasks would ask about people and towns the model never read: ``instructions.fallback``
    decides (refuse; the user's chosen replies; or the generated tasks, said in the source)."""
    icfg = cfg.data.instructions
    if icfg.sources:
        from components.data_prep.chat_loaders import read_instruction_sources

        examples, report = read_instruction_sources(icfg.sources, icfg.on_malformed, icfg.max_skip_share, "data.instructions")
        _note_skips(skips, "sft", report)
        train, heldout = _split_user_records(examples, icfg.heldout_fraction, cfg.seed, "instruction data", icfg.sources)
        return train, heldout, _sources_text(icfg.sources)
    if cfg.data.sources and icfg.fallback != "generated":
        corpus = ", ".join(s.uri or f"hf:{s.hf_dataset}" for s in cfg.data.sources)
        if icfg.fallback == "refuse" or user_pairs is None:
            why = (
                "data.instructions.fallback is 'refuse'" if icfg.fallback == "refuse"
                else "the fallback 'chosen_replies' needs data.preferences.sources, and there are none"
            )
            raise DataError(
                f"no instruction data for SFT: data.instructions.sources is empty while the pre-training corpus "
                f"is your own ({corpus}), and the generated tasks ask about a world this model never read ({why}). "
                "Give data.instructions.sources (chat 'messages', prompt/completion or instruction/output JSONL, "
                "or a dataset recipe such as HuggingFaceTB/smoltalk), or set data.instructions.fallback to "
                "'chosen_replies' (with data.preferences.sources) or 'generated'"
            )
        pref_train, pref_heldout, pref_source = user_pairs
        train = [_chosen_example(p) for p in pref_train]
        heldout = [_chosen_example(p) for p in pref_heldout]
        source = f"fallback chosen_replies: prompts and chosen replies of {pref_source}"
        if user_problems is not None:
            problems, problem_source = user_problems
            worked = to_sft_examples(problems)
            share = cfg.data.problems.sft_share
            count = min(len(worked), round(len(train) * share / (1 - share)))
            if count:
                train = _mix_problems(train, worked[:count], cfg.seed)
                source += f" + {count} worked problems of {problem_source}"
        log.warning("instructions: no instruction sources for a user corpus; SFT uses the %s", source)
        return train, heldout, source
    train, heldout = generate_instructions(world, cfg.seed, icfg.num_train - num_problems, icfg.num_heldout)
    if cfg.data.sources:  # fallback 'generated', asked for by name
        source = (f"fallback generated: tasks about the generated world (seed {cfg.seed}), not about the "
                  "user's corpus (data.instructions.fallback=generated)")
        log.warning("instructions: %s", source)
        return train, heldout, source
    return train, heldout, f"generated tasks (seed {cfg.seed})"


def _chosen_example(pair: PreferencePair) -> Example:
    """A preference pair's prompt with its chosen reply: an SFT demonstration."""
    return Example(
        id=f"chosen-{pair.id}", family=pair.family,
        messages=[*pair.prompt, {"role": "assistant", "content": pair.chosen}], answer=pair.chosen,
    )


def _sources_text(sources: list[Any]) -> str:
    from components.data_prep.records import describe

    return ", ".join(describe(s) for s in sources)


def _note_skips(skips: dict[str, Any] | None, kind: str, report: Any) -> None:
    """Keep what a loader left out for the manifest (and so the report card)."""
    if skips is not None and report.skipped:
        skips[kind] = report.to_json()


def _problems(cfg: Config, world: World, skips: dict[str, Any] | None = None) -> tuple[list[Problem], list[Problem], str]:
    """(train, held-out, source description) RLVR problems: the user's, or generated."""
    pcfg = cfg.data.problems
    if pcfg.sources:
        from components.data_prep.problem_loaders import read_problem_sources

        problems, report = read_problem_sources(pcfg.sources, pcfg.on_malformed, pcfg.max_skip_share, "data.problems")
        _note_skips(skips, "rlvr", report)
        train, heldout = _split_user_records(problems, pcfg.heldout_fraction, cfg.seed, "problem data", pcfg.sources)
        return train, heldout, _sources_text(pcfg.sources)
    train, heldout = generate_problems(world, cfg.seed, pcfg.num_train, pcfg.num_heldout, pcfg.max_difficulty)
    return train, heldout, f"generated problems (seed {cfg.seed}, difficulty 1-{pcfg.max_difficulty})"


def _sft_problem_count(cfg: Config, problems_train: list[Problem]) -> int:
    """How many SFT training slots go to worked problems: ``sft_share`` of ``num_train`` when
    both the instructions and the problems are generated (user data is used as given)."""
    if cfg.data.instructions.sources or cfg.data.problems.sources:
        return 0
    num_train = cfg.data.instructions.num_train
    # at least one instruction example stays, whatever the share
    return min(round(num_train * cfg.data.problems.sft_share), len(problems_train), num_train - 1)


def _mix_problems(sft_train: list[Example], worked: list[Example], seed: int) -> list[Example]:
    """SFT training examples with the ``worked`` problems (``to_sft_examples``) shuffled in
    (seeded), so SFT teaches the "The answer is N." replies RLVR rewards without any batch
    being only problems."""
    mixed = sft_train + worked
    random.Random(stream_seed(seed, "sft-problem-mix")).shuffle(mixed)
    return mixed


def _split_user_records(records: list, fraction: float, seed: int, what: str, sources: list[Any]) -> tuple[list, list]:
    """A seeded train/held-out split of user records; both splits must be non-empty."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(records) * fraction))
    if len(records) - n_held < 1:
        raise DataError(
            f"{what} {_sources_text(sources)} has {len(records)} records: "
            "too few for a train split and a held-out split"
        )
    return [records[i] for i in order[n_held:]], [records[i] for i in order[:n_held]]


def _user_preferences(cfg: Config, skips: dict[str, Any] | None = None) -> tuple[list[PreferencePair], list[PreferencePair], str]:
    """(train, held-out, source description) of the user's preference sources."""
    from components.data_prep.preference_loaders import read_preference_sources

    pcfg = cfg.data.preferences
    pairs, report = read_preference_sources(
        pcfg.sources, pcfg.on_malformed, pcfg.max_skip_share, pcfg.divergent_pairs, "data.preferences"
    )
    _note_skips(skips, "preference", report)
    train, heldout = _split_user_records(pairs, pcfg.heldout_fraction, cfg.seed, "preference data", pcfg.sources)
    return train, heldout, _sources_text(pcfg.sources)


def _preferences(
    cfg: Config, world: World, sft_train: list[Example], sft_heldout: list[Example],
    user_pairs: tuple[list[PreferencePair], list[PreferencePair], str] | None = None,
) -> tuple[list[PreferencePair], list[PreferencePair], str]:
    pcfg = cfg.data.preferences
    if pcfg.sources:
        train, heldout, source = user_pairs if user_pairs is not None else _user_preferences(cfg)
        if not pcfg.mix_generated:
            return train, heldout, source
        # Users' pairs (e.g. exported from the labelling page) plus the generated ones, each
        # split on its own so both kinds are held out; shuffled together, seeded.
        gen_train, gen_heldout, gen_source = _generated_preferences(cfg, world, sft_train, sft_heldout)
        rng = random.Random(stream_seed(cfg.seed, "preference-mix"))
        train, heldout = train + gen_train, heldout + gen_heldout
        rng.shuffle(train)
        return train, heldout, f"{source} + {gen_source}"
    return _generated_preferences(cfg, world, sft_train, sft_heldout)


def _generated_preferences(
    cfg: Config, world: World, sft_train: list[Example], sft_heldout: list[Example]
) -> tuple[list[PreferencePair], list[PreferencePair], str]:
    pcfg = cfg.data.preferences
    prompts_train = [e for e in sft_train if e.family != "user"]
    prompts_held = [e for e in sft_heldout if e.family != "user"]
    if not prompts_train or not prompts_held:  # user instructions: pair up the generated tasks
        icfg = cfg.data.instructions
        prompts_train, prompts_held = generate_instructions(world, cfg.seed, icfg.num_train, icfg.num_heldout)
    train, heldout = generate_preferences(world, prompts_train, prompts_held, cfg.seed, pcfg.num_train, pcfg.num_heldout)
    return train, heldout, f"generated pairs judged by the oracle (seed {cfg.seed})"


def _checkpoint_tokenizer(uri: str | None) -> Any:
    from components.common.modeling import load_tokenizer

    assert uri is not None
    with storage.local_copy(uri, "checkpoint") as local:
        return load_tokenizer(local)


def instruction_row(example: Example) -> dict[str, Any]:
    """An instruction prompt and its ideal reply, for RLVR's ``reply`` verifier (exact match).

    RLVR mixes a share of these into its problems (``rlvr.instruction_share``): rewarded for
    answering instructions exactly as taught, the policy keeps its chat behaviour while the
    problems pull it elsewhere (the KL term only sees the prompts it is trained on).
    """
    return {"id": example.id, "family": example.family, "prompt": example.prompt_messages, "reference": example.answer}


def _chat_text(example: Example) -> str:
    return "\n".join(m["content"] for m in example.messages)


def _corpus_mb(units: list[Unit]) -> float:
    """The corpus' size on storage (an HF dataset counts as large: it streams from the hub)."""
    total = 0
    for uri in dict.fromkeys(u.uri for u in units):
        if not uri:
            return float("inf")
        fs, path = storage.filesystem(uri)
        total += fs.size(path) or 0
    return total / 1e6


def prepare(ctx: StageContext) -> dict[str, Any]:
    """Do the work of data_prep into ``<run>/data``; returns the manifest. A Ray this stage
    started for Ray Data is shut down again (the pipeline's own Ray is only joined)."""
    ctx_started_ray: list[bool] = []
    try:
        return _prepare(ctx, ctx_started_ray)
    finally:
        if ctx_started_ray:
            import ray

            ray.shutdown()


def _prepare(ctx: StageContext, ctx_started_ray: list[bool]) -> dict[str, Any]:
    cfg = ctx.cfg
    out = data_uri(ctx.run_uri)
    started = time.perf_counter()
    start = resolve_start(cfg, ctx.tracker.client)  # first: a bad init_from fails before any work
    _remove_except(out, RESUMABLE, ctx.run_uri)  # a folder without the marker is an unfinished attempt
    units, world, source = _corpus_units(cfg, out)
    log.info("corpus: %d units from %s", len(units), source)

    task_world = _task_world(cfg, world)
    skips: dict[str, Any] = {}  # what the user's data loaders left out, by dataset kind
    rlvr_train, rlvr_heldout, rlvr_source = _problems(cfg, task_world, skips)
    log.info("problems: %d train / %d held-out from %s", len(rlvr_train), len(rlvr_heldout), rlvr_source)
    user_pairs = _user_preferences(cfg, skips) if cfg.data.preferences.sources else None
    num_sft_problems = _sft_problem_count(cfg, rlvr_train)
    sft_train, sft_heldout, sft_source = _instructions(
        cfg, task_world, num_sft_problems, skips, user_pairs,
        (rlvr_train, rlvr_source) if cfg.data.problems.sources else None,
    )
    if not sft_train or not sft_heldout:
        raise DataError(f"instruction data has an empty {'train' if not sft_train else 'held-out'} split ({sft_source})")
    log.info("instructions: %d train / %d held-out from %s", len(sft_train), len(sft_heldout), sft_source)
    pref_train, pref_heldout, pref_source = _preferences(cfg, task_world, sft_train, sft_heldout, user_pairs)
    votes = collect_votes(cfg, start, ctx.tracker.client, heldout_prompt_keys(
        [e.prompt_messages for e in sft_heldout], [p.prompt for p in pref_heldout], [p.prompt for p in rlvr_heldout]))
    if votes is not None:  # people's votes (components/data_prep/votes.py), combined as configured
        vcfg = cfg.data.preferences.votes
        pref_train, pref_heldout = combine(vcfg.mode, vcfg.weight, pref_train, pref_heldout, votes.pairs)
        pref_source = f"votes of {votes.snapshot.source} ({vcfg.mode})" + ("" if vcfg.mode == "alone" else f" + {pref_source}")
    log.info("preference pairs: %d train / %d held-out from %s", len(pref_train), len(pref_heldout), pref_source)
    ideal_train = sft_train  # before the flaws: RLVR's instruction rows and the vocabulary use these
    worked = to_sft_examples(rlvr_train[:num_sft_problems])
    retention = [instruction_row(e) for e in ideal_train if e.family in REPLY_FORMATS]
    flaws: dict[str, int] = {}
    sft_generated = not cfg.data.instructions.sources and not sft_source.startswith("fallback chosen_replies")
    if sft_generated and cfg.data.instructions.flawed_share:
        # after the preference pairs, whose chosen replies are the ideal ones
        sft_train, counts = flaw_demonstrations(sft_train, cfg.data.instructions.flawed_share, cfg.seed)
        flaws = dict(counts)
        log.info("instructions: %d train demonstrations flawed (%s)", sum(flaws.values()),
                 ", ".join(f"{k} {n}" for k, n in sorted(flaws.items())))
    if num_sft_problems:  # after the preference pairs, which stay on the instruction prompts
        sft_train = _mix_problems(sft_train, worked, cfg.seed)
        log.info("instructions: %d of %d train examples are worked problems", num_sft_problems, len(sft_train))

    dc = cfg.data
    use_ray = dc.workers > 1 and len(units) > 1 and _corpus_mb(units) >= dc.ray_min_mb
    if use_ray:
        import ray

        from components.common.ray_launch import ensure_ray

        if not ray.is_initialized():
            ensure_ray(cfg)  # the pipeline's Ray (RAY_ADDRESS), or a local one for this stage
            ctx_started_ray.append(True)
    work = storage.join(out, "work")
    scans, sample = scan(units, work, cfg.seed, dc.tokenizer_sample_docs, dc.heldout_fraction, dc.workers, use_ray)
    if not sum(r["docs"] for r in scans):
        raise DataError(f"the corpus has no documents ({source})")
    if start.is_random:
        # The vocabulary comes from a bounded seeded sample of the corpus and the ideal replies:
        # a thousand copies of "I hope that this helps." would otherwise buy their own merges.
        ideal_sft = ideal_train + worked
        tokenizer = train_tokenizer(sample + [_chat_text(e) for e in ideal_sft], dc.vocab_size,
                                    dc.tokenizer_min_frequency)
    else:  # the starting weights' own vocabulary: a new tokenizer would renumber it
        tokenizer = _checkpoint_tokenizer(start.uri)
        log.info("tokenizer: taken from %s", start.reason)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        storage.upload_dir(tmp, storage.join(out, "tokenizer"))
    log.info("tokenizer: %d tokens (trained on a sample of %d documents)", len(tokenizer), len(sample))
    # The sample stands in for the corpus where a stage wants text (evaluation's copy check).
    _write_jsonl(storage.join(out, "corpus", "sample.jsonl"), [{"text": d} for d in sample])

    seq_len = cfg.model.max_seq_len
    shard_dir = storage.join(out, "pretrain")
    packed = pack(units, work, shard_dir, scans, tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id,
                  len(tokenizer), seq_len, dc.shard_blocks, dc.heldout_fraction, dc.workers, use_ray)
    for split, tokens in (("train", packed.train), ("heldout", packed.heldout)):
        if tokens.num_blocks == 0:
            raise DataError(f"the {split} split of {source} is shorter than one block of {seq_len} tokens")
        log.info("%s: %d blocks of %d tokens in %d shards", split, tokens.num_blocks, seq_len, len(tokens.shards))
    log.info("corpus: %d documents, %d exact duplicates dropped; packing ran at %.0f tokens/s",
             packed.stats["documents"], packed.stats["duplicates_dropped"], packed.stats["tokens_per_s"])

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
    if votes is not None:
        preference["votes"] = write_votes(storage.join(out, "preference"), votes)
    rlvr = {}
    for split, problems in (("train", rlvr_train), ("heldout", rlvr_heldout)):
        uri = storage.join(out, "rlvr", f"{split}.jsonl")
        digest = _write_jsonl(uri, [problem_record(p) for p in problems])
        rlvr[split] = {"uri": uri, "digest": digest, "num_examples": len(problems)}
    uri = storage.join(out, "rlvr", "instructions.jsonl")
    rlvr["instructions"] = {"uri": uri, "digest": _write_jsonl(uri, retention), "num_examples": len(retention)}
    if world is not None:
        storage.write_json(storage.join(out, "world.json"), world)

    manifest = {
        "data_uri": out,
        "source": source,
        "tokenizer_uri": storage.join(out, "tokenizer"),
        "vocab_size": len(tokenizer),
        "seq_len": seq_len,
        "pretrain": {
            split: {**tokens.to_json(), "text_digest": packed.stats["text_digest"][split],
                    "num_documents": packed.stats[f"{split}_documents"]}
            for split, tokens in (("train", packed.train), ("heldout", packed.heldout))
        },
        "corpus": {
            **{k: v for k, v in packed.stats.items() if k != "text_digest"},
            "sample_uri": storage.join(out, "corpus", "sample.jsonl"),
            "sample_documents": len(sample),
            "data_workers": dc.workers,
            "ray_data": use_ray,
            "driver_peak_rss_mb": round(peak_rss_mb(), 1),
        },
        "sft": {"source": sft_source, "num_problem_examples": num_sft_problems, "flawed_demonstrations": flaws, **sft},
        "preference": {"source": pref_source, **preference},
        "rlvr": {"source": rlvr_source, **rlvr},
        "start": start.to_json(),
        # records the loaders left out (on_malformed=skip, or by a rule), per dataset kind
        "skipped": skips,
        "seconds": round(time.perf_counter() - started, 2),
    }
    _remove_except(shard_dir, {s.file for t in (packed.train, packed.heldout) for s in t.shards}, ctx.run_uri)
    storage.remove(work, inside=ctx.run_uri)
    storage.write_json(storage.join(out, MANIFEST), manifest)
    storage.mark_complete(out, {"stage": "data_prep"})
    return manifest


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
                    "corpus_documents": manifest["corpus"]["documents"],
                    "duplicates_dropped": manifest["corpus"]["duplicates_dropped"],
                    "tokenize_tokens_per_s": manifest["corpus"]["tokens_per_s"],
                    "sft_train_examples": manifest["sft"]["train"]["num_examples"],
                    "rlvr_train_problems": manifest["rlvr"]["train"]["num_examples"],
                    **{f"votes.{k}": v for k, v in manifest["preference"].get("votes", {}).items()
                       if isinstance(v, int) and not isinstance(v, bool)},
                },
            )
            ctx.tracker.log_params(ctx.mlflow_run_id, {"data_source": manifest["source"]})
        manifest["mlflow_parent_run_id"] = ctx.parent_run_id
        return manifest
