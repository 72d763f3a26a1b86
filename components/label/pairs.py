"""Two replies per prompt, written up front and stored as pairs.

Either two samples of one checkpoint (``model_b`` unset; the replies differ by sampling) or one
reply from each of two checkpoints (which side shows which model is shuffled per pair, seeded,
so labelers cannot learn "A is always the new model"). A model is a checkpoint folder/URI or a
registry reference resolved through MLflow:

- ``models:/<name>@<alias>`` (e.g. ``models:/fromscratch@champion``), ``models:/<name>/<version>``
- ``models:/<logged model id>`` (``m-...``)

Pairs are keyed by a batch digest of (models, prompts, settings): starting the server again with
the same arguments reuses the stored pairs instead of sampling new ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from components.common import storage
from components.common.errors import DataError
from components.common.modeling import load_model, load_tokenizer
from components.label.prompts import Prompt
from components.label.repository import Repository

log = logging.getLogger(__name__)

_REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?$")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 64
    seed: int = 0


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user named
    checkpoint_uri: str  # the folder that is loaded
    run_id: str | None  # the pipeline run it came from, where known (for held-out prompts)


def resolve_model(spec: str, tracking_uri: str | None = None) -> ResolvedModel:
    """A checkpoint URI for ``spec``: registry references go through MLflow (the model
    version → its LoggedModel → the checkpoint URI tag the pipeline wrote)."""
    match = _REGISTRY.match(spec)
    if not match:
        if not storage.exists(spec):
            raise DataError(f"model {spec}: no such checkpoint folder or URI")
        return ResolvedModel(spec, spec, None)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components.common.tracking import TAG_CHECKPOINT, version_model_id
    from components.evaluate.promotion import RUN_TAG

    client = MlflowClient(tracking_uri)
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        if name.startswith("m-") and not alias and not version:
            model_id, run_id = name, None
        else:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version or "1")
            model_id = version_model_id(mv)
            run_id = mv.tags.get(RUN_TAG)
        logged = client.get_logged_model(model_id)
    except MlflowException as err:
        raise DataError(f"model {spec}: not found in the MLflow registry at {tracking_uri or 'the default URI'} ({err.message})") from err
    checkpoint = logged.tags.get(TAG_CHECKPOINT)
    if not checkpoint:
        raise DataError(f"model {spec}: MLflow model {model_id} has no '{TAG_CHECKPOINT}' tag")
    return ResolvedModel(spec, checkpoint, run_id)


def batch_key(models: list[ResolvedModel], prompts: list[Prompt], sampling: Sampling) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([[m.spec, m.checkpoint_uri] for m in models]).encode())
    digest.update(json.dumps([[p.id, p.messages] for p in prompts], ensure_ascii=False).encode())
    digest.update(json.dumps(asdict(sampling), sort_keys=True).encode())
    return digest.hexdigest()[:32]


@torch.no_grad()
def _sample(model, tokenizer, prompts: list[Prompt], sampling: Sampling, seed: int) -> list[str]:
    """One reply per prompt (greedy when temperature is 0), text before EOS."""
    model.eval()
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    greedy = sampling.temperature <= 0
    out = model.generate(
        **enc, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy, use_cache=True,
        temperature=None if greedy else sampling.temperature, top_p=None if greedy else sampling.top_p,
        top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )[:, enc["input_ids"].shape[1] :]
    replies = []
    for row in out.tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return replies


def _load(resolved: ResolvedModel):
    """Tokenizer and model of a checkpoint. The pipeline's checkpoints carry a completion
    marker, checked so a half-written one is refused; a user's own Hugging Face folder (a
    ``config.json``, no marker) on local disk is loaded as it is."""
    uri = resolved.checkpoint_uri
    if not storage.is_complete(uri) and not storage.is_remote(uri) and storage.exists(storage.join(uri, "config.json")):
        return load_tokenizer(uri), load_model(uri)
    with storage.local_copy(uri, f"checkpoint of {resolved.spec}") as local:
        return load_tokenizer(local), load_model(local)


def generate_pairs(
    repo: Repository,
    prompts: list[Prompt],
    model_a: ResolvedModel,
    model_b: ResolvedModel | None,
    sampling: Sampling,
    retries: int = 2,
) -> tuple[str, int]:
    """Store one pair per prompt (unless this batch is stored already); returns (batch key,
    pairs in it). A prompt whose two replies stay identical after ``retries`` resamplings, or
    come out empty, is skipped: there is nothing to choose between."""
    models = [model_a] + ([model_b] if model_b else [])
    key = batch_key(models, prompts, sampling)
    existing = repo.batch_size(key)
    if existing:
        log.info("pairs: batch %s already stored (%d pairs); not sampling again", key[:12], existing)
        return key, existing
    tok_a, lm_a = _load(model_a)
    if model_b:
        tok_b, lm_b = _load(model_b)
    rows: list[dict[str, Any]] = []
    replies_a = _sample(lm_a, tok_a, prompts, sampling, sampling.seed)
    replies_b = _sample(lm_b, tok_b, prompts, sampling, sampling.seed) if model_b else _sample(lm_a, tok_a, prompts, sampling, sampling.seed + 1)
    rng = random.Random(sampling.seed)
    skipped = 0
    for i, prompt in enumerate(prompts):
        a, b = replies_a[i], replies_b[i]
        attempt = 0
        while (a == b or not a or not b) and attempt < retries:
            attempt += 1
            seed = sampling.seed + 1000 * attempt + i
            if model_b:
                b = _sample(lm_b, tok_b, [prompt], sampling, seed)[0]
            else:
                b = _sample(lm_a, tok_a, [prompt], sampling, seed)[0]
        if a == b or not a or not b:
            skipped += 1
            continue
        side_a, side_b = model_a, model_b or model_a
        if model_b and rng.random() < 0.5:
            a, b, side_a, side_b = b, a, side_b, side_a
        rows.append({
            "batch": key, "position": i, "prompt_id": prompt.id[:200], "prompt": prompt.messages,
            "reply_a": a, "reply_b": b, "model_a": side_a.spec, "model_b": side_b.spec,
            "checkpoint_a": side_a.checkpoint_uri, "checkpoint_b": side_b.checkpoint_uri,
            "sampling": {**asdict(sampling), "mode": "two checkpoints" if model_b else "two samples"},
        })
    if not rows:
        raise DataError(f"no usable pairs: every one of {len(prompts)} prompts got two identical or empty replies")
    repo.add_pairs(rows)
    log.info("pairs: stored %d pairs in batch %s (%d prompts skipped: identical or empty replies)", len(rows), key[:12], skipped)
    return key, len(rows)
