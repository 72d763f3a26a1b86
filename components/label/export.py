"""Votes out: ``prompt``/``chosen``/``rejected`` JSONL for the preference stage, agreement
between labelers, and the file logged to MLflow as a dataset with its digest.

Which pairs become records:

- ``majority`` (default): one record per pair, the side with more A-or-B votes is ``chosen``.
  Ties, both-bad votes and pairs whose A and B votes are level are left out: they say nothing
  about which reply is better, and a pair exported both ways would cancel itself.
- ``each``: one record per A-or-B vote (a pair two people agreed on counts twice).

The records are the preference loader's format 1/2 (``prompt`` as chat messages, replies as
strings) plus provenance fields the loader ignores (votes, labelers, models, sampling), so
``data.preferences.sources=[<export>]`` trains on them as they are.

Agreement is computed over pairs that two or more people labelled: the share of labeler pairs
that made the same choice (all four choices count), the same among decisive (A/B) votes only,
and Cohen's kappa for every two labelers who share pairs (chance-corrected; ``None`` where
undefined, e.g. both always chose the same option).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

from components.common import storage
from components.label.db import Pair, Vote
from components.label.repository import Repository

log = logging.getLogger(__name__)

Mode = Literal["majority", "each"]
DATASET_NAME = "label-preferences"
STAGE_TAG = "label-export"


@dataclass
class ExportResult:
    uri: str
    records: list[dict[str, Any]]
    digest: str  # sha256 of the file's bytes
    agreement: dict[str, Any]
    counts: dict[str, int]
    mlflow_run_id: str | None = None


def _record(pair: Pair, chosen_side: str, votes: list[Vote], per_vote: bool = False) -> dict[str, Any]:
    a_wins = chosen_side == "a"
    tally = Counter(v.choice for v in votes)
    return {
        "id": f"label-{pair.id}-v{votes[0].id}" if per_vote else f"label-{pair.id}",
        "family": "label",
        "prompt": json.loads(pair.prompt),
        "chosen": pair.reply_a if a_wins else pair.reply_b,
        "rejected": pair.reply_b if a_wins else pair.reply_a,
        "pair_id": pair.id,
        "votes": {c: tally.get(c, 0) for c in ("a", "b", "tie", "both_bad")},
        "labelers": sorted({v.labeler for v in votes}),
        "comments": [v.comment for v in votes if v.comment],
        "model_chosen": pair.model_a if a_wins else pair.model_b,
        "model_rejected": pair.model_b if a_wins else pair.model_a,
        "sampling": json.loads(pair.sampling),
        "labelled_at": max(v.created_at for v in votes).isoformat(),
    }


def build_records(rows: list[tuple[Vote, Pair]], mode: Mode = "majority") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records and counts (votes, decisive, left out as tie/both bad/level)."""
    by_pair: dict[int, list[Vote]] = defaultdict(list)
    pairs: dict[int, Pair] = {}
    for vote, pair in rows:
        by_pair[pair.id].append(vote)
        pairs[pair.id] = pair
    records: list[dict[str, Any]] = []
    level = 0
    for pair_id in sorted(by_pair):
        votes = by_pair[pair_id]
        decisive = [v for v in votes if v.choice in ("a", "b")]
        if mode == "each":
            records.extend(_record(pairs[pair_id], v.choice, [v], per_vote=True) for v in decisive)
            continue
        n_a = sum(v.choice == "a" for v in decisive)
        n_b = len(decisive) - n_a
        if n_a == n_b:
            level += bool(decisive)
            continue
        records.append(_record(pairs[pair_id], "a" if n_a > n_b else "b", votes))
    choices = Counter(v.choice for v, _ in rows)
    counts = {
        "votes": len(rows), "pairs_voted": len(by_pair), "records": len(records),
        "tie_votes": choices.get("tie", 0), "both_bad_votes": choices.get("both_bad", 0),
        "level_pairs": level, "labelers": len({v.labeler for v, _ in rows}),
    }
    return records, counts


def _kappa(a: list[str], b: list[str]) -> float | None:
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def agreement(rows: list[tuple[Vote, Pair]]) -> dict[str, Any]:
    """Inter-labeler agreement over pairs labelled by two or more people."""
    choice: dict[int, dict[str, str]] = defaultdict(dict)
    for vote, pair in rows:
        choice[pair.id][vote.labeler] = vote.choice
    shared = {pid: who for pid, who in choice.items() if len(who) >= 2}
    comparisons = agreeing = decisive = decisive_agreeing = 0
    per_duo: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for who in shared.values():
        for u, v in combinations(sorted(who), 2):
            cu, cv = who[u], who[v]
            comparisons += 1
            agreeing += cu == cv
            if cu in ("a", "b") and cv in ("a", "b"):
                decisive += 1
                decisive_agreeing += cu == cv
            per_duo[(u, v)][0].append(cu)
            per_duo[(u, v)][1].append(cv)
    duos = [
        {
            "labelers": list(duo), "shared_pairs": len(xs),
            "agreement": sum(x == y for x, y in zip(xs, ys)) / len(xs), "cohen_kappa": _kappa(xs, ys),
        }
        for duo, (xs, ys) in sorted(per_duo.items())
    ]
    return {
        "pairs_with_several_labelers": len(shared),
        "comparisons": comparisons,
        "agreement": agreeing / comparisons if comparisons else None,
        "decisive_comparisons": decisive,
        "decisive_agreement": decisive_agreeing / decisive if decisive else None,
        "by_labeler_pair": duos,
    }


def agreement_lines(report: dict[str, Any]) -> list[str]:
    if not report["comparisons"]:
        return ["agreement: no pair was labelled by two people"]
    lines = [
        (f"agreement: {report['agreement']:.1%} over {report['comparisons']} comparisons "
         f"on {report['pairs_with_several_labelers']} pairs labelled by two or more people")
    ]
    if report["decisive_comparisons"]:
        lines.append(f"  A/B votes only: {report['decisive_agreement']:.1%} over {report['decisive_comparisons']}")
    for duo in report["by_labeler_pair"]:
        kappa = "n/a" if duo["cohen_kappa"] is None else f"{duo['cohen_kappa']:.2f}"
        lines.append(f"  {duo['labelers'][0]} × {duo['labelers'][1]}: {duo['agreement']:.1%} on {duo['shared_pairs']} pairs, kappa {kappa}")
    return lines


def write_export(repo: Repository, out_uri: str, mode: Mode = "majority") -> ExportResult:
    """Write the JSONL (and ``<name>.agreement.json`` beside it); nothing is logged here."""
    rows = repo.votes()
    records, counts = build_records(rows, mode)
    report = agreement(rows)
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")
    with storage.open_uri(out_uri, "wb") as fh:
        fh.write(data)
    storage.write_json(_agreement_uri(out_uri), {"counts": counts, **report})
    return ExportResult(out_uri, records, hashlib.sha256(data).hexdigest(), report, counts)


def _agreement_uri(out_uri: str) -> str:
    base = out_uri.removesuffix(".jsonl")
    return f"{base}.agreement.json"


def log_export(result: ExportResult, cfg: Any) -> str:
    """Log the export to MLflow: a run (stage ``label-export``) with the file as a dataset
    input (digest = the first 32 hex digits of its SHA-256, as data_prep's datasets), the
    counts and agreement as metrics, and both files as artifacts. Returns the MLflow run id."""
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    from components.common.tracking import TAG_STAGE, Tracker

    tracker = Tracker(cfg)
    run = tracker.client.create_run(tracker.experiment_id, run_name=STAGE_TAG, tags={TAG_STAGE: STAGE_TAG})
    run_id = run.info.run_id
    frame = pd.DataFrame(
        [{"id": r["id"], "prompt": json.dumps(r["prompt"], ensure_ascii=False), "chosen": r["chosen"], "rejected": r["rejected"]}
         for r in result.records],
        columns=["id", "prompt", "chosen", "rejected"],
    )
    source = result.uri if storage.is_remote(result.uri) else storage.normalize(result.uri)
    with warnings.catch_warnings():  # "can be interpreted in multiple ways" for local paths
        warnings.simplefilter("ignore")
        dataset = mlflow.data.from_pandas(frame, source=source, name=DATASET_NAME, digest=result.digest[:32])
    tracker.client.log_inputs(
        run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])]
    )
    tracker.log_params(run_id, {"export_uri": result.uri, "digest": result.digest})
    metrics = {k: float(v) for k, v in result.counts.items()}
    for key in ("agreement", "decisive_agreement"):
        if result.agreement[key] is not None:
            metrics[key] = result.agreement[key]
    metrics["pairs_with_several_labelers"] = result.agreement["pairs_with_several_labelers"]
    tracker.log_metrics(run_id, metrics)
    tracker.client.log_text(run_id, json.dumps({"counts": result.counts, **result.agreement}, indent=2), "agreement.json")
    if not storage.is_remote(result.uri):
        tracker.client.log_artifact(run_id, storage.normalize(result.uri))
    tracker.end_run(run_id, ok=True)
    result.mlflow_run_id = run_id
    return run_id
