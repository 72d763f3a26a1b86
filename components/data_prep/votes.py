"""People's votes as a versioned dataset: a snapshot taken when a run's data prep starts.

Where the votes come from (``data.preferences.votes.source``):

- the labelling page's database (``sqlite:///...``, ``postgresql://...``, or ``env:NAME`` for a
  URL kept in an environment variable, i.e. a Kubernetes Secret on a cluster). Read only: data
  prep never creates or changes the label tables.
- a folder or ``s3://`` prefix of ``fromscratch label export`` files (``*.jsonl``), e.g. where a
  cron job drops exports. Every file present when the run starts is read; a record id seen in
  several exports counts once (the newest file's copy wins).

**The watermark.** A database snapshot is "every vote with id <= W", W read in the same
transaction as the votes. Vote ids are handed out in commit order (SQLite serialises writers;
on PostgreSQL the snapshot takes ``LOCK TABLE ... IN SHARE MODE``, which waits for inserts in
flight and holds new ones back until it has read), so a vote cast while data prep reads is
either below W, in this snapshot, or above it, in the next one: never lost, never twice. The
next run's *new* votes are those above the watermark of the run it continues from (the
champion's, with ``--from-champion``).

**No leak.** A vote whose prompt is one of the held-out prompts of any evaluation suite (SFT,
preference, RLVR) is dropped and counted, never trained on: ``prompt_key`` is the comparison.

**Pairs.** Votes become chosen/rejected pairs by majority per shown pair (ties, both-bad and
level pairs say nothing and are left out). The newest ``heldout_fraction`` of them (by their
newest vote) is held out: the reward model is measured on votes it did not train on
(``kind='votes'``, so the report shows ``accuracy.votes``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from components.common import storage
from components.common.errors import DataError
from components.common.tracking import VOTES_DATASET, VOTES_SESSIONS_FILE
from components.data_prep.preferences import PreferencePair

log = logging.getLogger(__name__)

# The labelling page's tables (components/label/db.py names its ORM classes after these).
VOTES_TABLE = "label_votes"
PAIRS_TABLE = "label_pairs"
DATASET_NAME = VOTES_DATASET
SNAPSHOT_FILE = "votes.jsonl"
SESSIONS_FILE = VOTES_SESSIONS_FILE
VOTE_KIND = "votes"  # PreferencePair.kind of a voted pair: evaluation reports accuracy.votes
DB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")


# -- held-out prompts ------------------------------------------------------------------------
_SPACE = re.compile(r"\s+")


def prompt_key(messages: list[dict[str, str]] | str) -> str:
    """What makes two prompts the same for the leak check: the user turns' text, joined,
    whitespace collapsed and case folded (a system turn or a re-spacing does not hide a
    held-out prompt)."""
    if isinstance(messages, str):
        text = messages
    else:
        text = "\n".join(m.get("content", "") for m in messages if m.get("role", "user") == "user")
    return _SPACE.sub(" ", text).strip().casefold()


def heldout_prompt_keys(*prompt_lists: Iterable[list[dict[str, str]]]) -> set[str]:
    return {prompt_key(p) for prompts in prompt_lists for p in prompts}


def manifest_heldout_keys(manifest: dict[str, Any]) -> set[str]:
    """The held-out prompts of every evaluation suite a data_prep manifest lists."""
    keys: set[str] = set()
    for kind in ("sft", "preference", "rlvr"):
        info = manifest.get(kind, {}).get("heldout")
        if not info:
            continue
        for record in storage.read_jsonl(info["uri"]):
            if kind == "sft":
                messages = record["messages"]
                keys.add(prompt_key(messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages))
            else:
                prompt = record["prompt"]
                keys.add(prompt_key(prompt))
    return keys


def label_prompt_pool(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Prompts for the labelling page, disjoint from every evaluation suite: the run's SFT
    *training* prompts (generated or the user's) minus any prompt that is also held out
    anywhere, each once, in file order: ``{"id", "prompt": [messages]}`` records."""
    held = manifest_heldout_keys(manifest)
    seen: set[str] = set()
    pool = []
    for record in storage.read_jsonl(manifest["sft"]["train"]["uri"]):
        messages = record["messages"]
        prompt = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
        if not prompt or prompt[-1]["role"] != "user":
            continue
        key = prompt_key(prompt)
        if key in held or key in seen:
            continue
        seen.add(key)
        pool.append({"id": record.get("id") or f"sft-train-{len(pool)}", "prompt": prompt})
    return pool


# -- one vote -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CastVote:
    """A vote with the pair it was cast on (what the snapshot file stores, one per line)."""

    id: int  # the database's vote id (exports: the one in the record id, else a running number)
    pair_id: int
    labeler: str
    choice: str  # a / b / tie / both_bad
    created_at: str  # ISO time
    prompt: list[dict[str, str]]
    reply_a: str
    reply_b: str
    session: str  # the pair batch (one `label serve --model` sampling = one labelling session)
    model_a: str = ""
    model_b: str = ""


@dataclass
class Snapshot:
    source: str  # the URL without password, or the prefix
    watermark: int  # highest vote id in the snapshot (0 = none)
    votes: list[CastVote]

    def payload(self) -> bytes:
        return "".join(json.dumps(asdict(v), ensure_ascii=False, sort_keys=True) + "\n" for v in self.votes).encode("utf-8")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.payload()).hexdigest()


def resolve_source(source: str) -> str:
    """``env:NAME`` → the variable's value (an error naming the variable when unset)."""
    if source.startswith("env:"):
        name = source[4:]
        value = os.environ.get(name, "")
        if not value:
            raise DataError(f"data.preferences.votes.source={source}: environment variable {name} is not set")
        return value
    return source


def is_database(url: str) -> bool:
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    return "://" in url and scheme in DB_SCHEMES


def redact(url: str) -> str:
    """A database URL without its password (what may be logged)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# -- snapshot from the database --------------------------------------------------------------
_SELECT = (
    f"SELECT v.id, v.pair_id, v.labeler, v.choice, v.created_at, p.prompt, p.reply_a, p.reply_b, "
    f"p.batch, p.model_a, p.model_b FROM {VOTES_TABLE} v JOIN {PAIRS_TABLE} p ON v.pair_id = p.id "
    f"WHERE v.id > :after AND v.id <= :watermark ORDER BY v.id"
)


def snapshot_database(url: str, after: int = 0, _between: Callable[[], None] | None = None) -> Snapshot:
    """Every vote with ``after`` < id <= W, W = the highest committed vote id when the snapshot
    starts (read in the same transaction). ``_between`` (tests) runs after W is read and before
    the votes are: a vote cast there must land in the next snapshot."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        if not {VOTES_TABLE, PAIRS_TABLE} <= set(inspect(engine).get_table_names()):
            raise DataError(f"votes: {redact(url)} has no label tables (is it the labelling page's database?)")
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # wait for inserts in flight, hold new ones until this transaction ends
                conn.execute(text(f"LOCK TABLE {VOTES_TABLE} IN SHARE MODE"))
            watermark = conn.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {VOTES_TABLE}")).scalar_one()
            if _between is not None:
                _between()
            rows = conn.execute(text(_SELECT), {"after": after, "watermark": watermark}).all()
    finally:
        engine.dispose()
    votes = [
        CastVote(
            id=int(r[0]), pair_id=int(r[1]), labeler=r[2], choice=r[3], created_at=_iso(r[4]),
            prompt=json.loads(r[5]), reply_a=r[6], reply_b=r[7], session=r[8], model_a=r[9], model_b=r[10],
        )
        for r in rows
    ]
    return Snapshot(redact(url), int(watermark), votes)


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


# -- snapshot from export files ---------------------------------------------------------------
_VOTE_IN_ID = re.compile(r"^label-(\d+)(?:-v(\d+))?$")


def snapshot_exports(prefix: str, after: int = 0) -> Snapshot:
    """The votes of every ``*.jsonl`` export under ``prefix`` when called (files sorted by
    name; a record id in several files counts once, the last file's copy). An export record
    is a pair with its tally, so it becomes that many A/B votes (ids ``pair * 1000 + n`` when
    the export does not carry vote ids)."""
    fs, root = storage.filesystem(prefix)
    files = sorted(p for p in fs.find(root) if p.endswith(".jsonl"))
    records: dict[str, dict[str, Any]] = {}
    for path in files:
        with fs.open(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    records[str(record["id"])] = record
                except (ValueError, KeyError, TypeError) as err:
                    raise DataError(f"{path}:{lineno}: not a label export record ({err})") from err
    votes: list[CastVote] = []
    for rid, record in records.items():
        match = _VOTE_IN_ID.match(rid)
        pair_id = int(record.get("pair_id") or (match.group(1) if match else 0))
        chosen, rejected = _text(record["chosen"]), _text(record["rejected"])
        tally = record.get("votes") or {"a": 1}
        n = 0
        for choice in ("a", "b"):  # reply_a is the chosen one: 'a' votes agree with the export
            for _ in range(int(tally.get(choice, 0))):
                n += 1
                vote_id = int(match.group(2)) if match and match.group(2) else pair_id * 1000 + n
                votes.append(CastVote(
                    id=vote_id, pair_id=pair_id, labeler="export", choice=choice,
                    created_at=str(record.get("labelled_at", "")), prompt=_prompt(record["prompt"]),
                    reply_a=chosen, reply_b=rejected, session=str(record.get("session", prefix)),
                    model_a=str(record.get("model_chosen", "")), model_b=str(record.get("model_rejected", "")),
                ))
    votes = sorted((v for v in votes if v.id > after), key=lambda v: v.id)
    return Snapshot(prefix, max((v.id for v in votes), default=after), votes)


def _text(value: Any) -> str:
    return value[-1]["content"] if isinstance(value, list) else str(value)


def _prompt(value: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


def take_snapshot(source: str, after: int = 0) -> Snapshot:
    url = resolve_source(source)
    return snapshot_database(url, after) if is_database(url) else snapshot_exports(url, after)


# -- votes → pairs ----------------------------------------------------------------------------
@dataclass
class VotePairs:
    train: list[PreferencePair]
    heldout: list[PreferencePair]
    counts: dict[str, int] = field(default_factory=dict)
    dropped_prompts: list[str] = field(default_factory=list)  # held-out prompts that were voted on


def vote_pairs(votes: list[CastVote], heldout_keys: set[str], heldout_fraction: float) -> VotePairs:
    """Majority pairs from ``votes`` after the leak check; the newest ``heldout_fraction`` held out."""
    by_pair: dict[int, list[CastVote]] = defaultdict(list)
    leaked: list[CastVote] = []
    for vote in votes:
        (leaked if prompt_key(vote.prompt) in heldout_keys else by_pair[vote.pair_id]).append(vote)
    pairs: list[tuple[int, PreferencePair]] = []
    level = 0
    for pair_id in sorted(by_pair):
        group = by_pair[pair_id]
        tally = Counter(v.choice for v in group)
        if tally["a"] == tally["b"]:
            level += 1
            continue
        first = group[0]
        a_wins = tally["a"] > tally["b"]
        pairs.append((max(v.id for v in group), PreferencePair(
            id=f"vote-pair-{pair_id}", family="label", prompt=first.prompt,
            chosen=first.reply_a if a_wins else first.reply_b,
            rejected=first.reply_b if a_wins else first.reply_a,
            reference=None, kind=VOTE_KIND,
        )))
    pairs.sort(key=lambda item: item[0])  # oldest first: the newest are held out
    n_held = round(len(pairs) * heldout_fraction)
    if heldout_fraction and len(pairs) >= 2:
        n_held = max(1, n_held)
    n_held = min(n_held, max(0, len(pairs) - 1))
    train = [p for _, p in pairs[: len(pairs) - n_held]]
    heldout = [p for _, p in pairs[len(pairs) - n_held:]]
    counts = {
        "votes": len(votes), "leaked_votes_dropped": len(leaked), "pairs": len(pairs),
        "level_or_undecided_pairs": level, "train_pairs": len(train), "heldout_pairs": len(heldout),
        "labelers": len({v.labeler for v in votes}),
    }
    if leaked:
        log.warning("votes: %d votes on held-out prompts dropped (never trained on)", len(leaked))
    return VotePairs(train, heldout, counts, sorted({prompt_key(v.prompt) for v in leaked}))


def sessions(votes: list[CastVote]) -> list[dict[str, Any]]:
    """The labelling sessions (pair batches) the votes came from, with their models and counts."""
    out: dict[str, dict[str, Any]] = {}
    for v in votes:
        s = out.setdefault(v.session, {"session": v.session, "models": sorted({v.model_a, v.model_b} - {""}),
                                       "votes": 0, "first_vote": v.created_at, "last_vote": v.created_at})
        s["votes"] += 1
        s["first_vote"] = min(s["first_vote"], v.created_at)
        s["last_vote"] = max(s["last_vote"], v.created_at)
    return sorted(out.values(), key=lambda s: s["first_vote"])


def combine(
    mode: str, weight: int, other_train: list[PreferencePair], other_heldout: list[PreferencePair], votes: VotePairs
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The preference splits with the votes in: ``alone`` (votes only), ``mixed`` (votes after
    the other pairs), ``weighted`` (each voted training pair ``weight`` times). The voted
    held-out pairs come first, so an evaluation that reads only the first N pairs sees them."""
    copies = weight if mode == "weighted" else 1
    voted_train = [p for p in votes.train for _ in range(copies)]
    if mode == "alone":
        return voted_train, list(votes.heldout)
    return other_train + voted_train, votes.heldout + other_heldout


# -- the run's previous watermark -------------------------------------------------------------
def previous_watermark(start: Any, client: Any, storage_root: str) -> int:
    """The votes watermark of the run whose model this run starts from (``start``: a
    ``StartPoint``), so its votes count as old; 0 when it had none or cannot be found."""
    if start is None or not getattr(start, "model_id", None):
        return 0
    try:
        model = client.get_logged_model(start.model_id)
        run = client.get_run(model.source_run_id)
        run_id = run.data.tags.get("fromscratch.run_id")
        manifest_uri = storage.join(storage.normalize(storage_root), run_id, "data", "manifest.json")
        manifest = storage.read_json(manifest_uri)
    except Exception as err:  # noqa: BLE001 - no earlier snapshot is a normal case
        log.info("votes: no earlier votes snapshot found for %s (%s)", start.model_id, err)
        return 0
    return int(manifest.get("preference", {}).get("votes", {}).get("watermark", 0))


# -- what data prep calls -------------------------------------------------------------------
@dataclass
class CollectedVotes:
    snapshot: Snapshot
    pairs: VotePairs
    previous_watermark: int

    @property
    def new_votes(self) -> int:
        return sum(v.id > self.previous_watermark for v in self.snapshot.votes)


def collect_votes(cfg: Any, start: Any, client: Any, heldout_keys: set[str]) -> CollectedVotes | None:
    """Take the run's votes snapshot (None when ``data.preferences.votes.source`` is empty)."""
    vcfg = cfg.data.preferences.votes
    if not vcfg.source:
        return None
    snapshot = take_snapshot(vcfg.source)
    pairs = vote_pairs(snapshot.votes, heldout_keys, vcfg.heldout_fraction)
    if pairs.counts["pairs"] < vcfg.min_pairs:
        raise DataError(
            f"votes: {snapshot.source} gave {pairs.counts['pairs']} usable voted pairs "
            f"(from {len(snapshot.votes)} votes), fewer than data.preferences.votes.min_pairs={vcfg.min_pairs}"
        )
    if vcfg.mode == "alone" and (not pairs.train or not pairs.heldout):
        raise DataError(
            f"votes: data.preferences.votes.mode=alone needs voted pairs to train on and to hold out; "
            f"{snapshot.source} gave {pairs.counts['train_pairs']} and {pairs.counts['heldout_pairs']}"
        )
    collected = CollectedVotes(snapshot, pairs, previous_watermark(start, client, cfg.storage.root))
    log.info(
        "votes: snapshot of %s up to vote %d: %d votes (%d new since vote %d), digest %s; %d pairs "
        "(%d train, %d held out), %d votes on held-out prompts dropped",
        snapshot.source, snapshot.watermark, len(snapshot.votes), collected.new_votes, collected.previous_watermark,
        snapshot.digest[:16], pairs.counts["pairs"], pairs.counts["train_pairs"], pairs.counts["heldout_pairs"],
        pairs.counts["leaked_votes_dropped"],
    )
    return collected


def write_votes(folder: str, collected: CollectedVotes) -> dict[str, Any]:
    """Write the snapshot (one vote a line) and its sessions; returns the manifest entry."""
    snapshot = collected.snapshot
    uri = storage.join(folder, SNAPSHOT_FILE)
    with storage.open_uri(uri, "wb") as fh:
        fh.write(snapshot.payload())
    storage.write_json(storage.join(folder, SESSIONS_FILE), sessions(snapshot.votes))
    return {
        "uri": uri, "digest": snapshot.digest, "source": snapshot.source, "watermark": snapshot.watermark,
        "num_votes": len(snapshot.votes), "new_votes": collected.new_votes,
        "previous_watermark": collected.previous_watermark, "sessions_uri": storage.join(folder, SESSIONS_FILE),
        **{k: v for k, v in collected.pairs.counts.items() if k != "votes"},
    }
