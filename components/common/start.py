"""Where pre-training starts: random init, the registry's champion, or a given checkpoint.

Scheduled retraining (``fromscratch schedule --from-champion``, or a preset with
``pretrain.init_from: champion``) continues from the best model so far instead of from random
weights. The champion is resolved once per pipeline run, by data_prep, and written to the
manifest: every later stage then agrees on the same starting point even if the alias moves
while the run is going. data_prep also takes the starting checkpoint's tokenizer (a new one
would renumber the vocabulary under the old weights), and refuses a preset whose model shape
differs from the checkpoint's before anything trains.

The first scheduled run on a fresh cluster has no champion yet: it starts from random init and
says so (``reason``), so a schedule can be created before the first run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from components.common import storage
from components.common.config import Config, ConfigError
from components.common.registry import champion_version
from components.common.tracking import TAG_CHECKPOINT, version_model_id

log = logging.getLogger(__name__)

# preset field (model.*) → Hugging Face config key: the shape a checkpoint must share with the preset
SHAPE_FIELDS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "max_seq_len": "max_position_embeddings",
    "tie_embeddings": "tie_word_embeddings",
}


@dataclass(frozen=True)
class StartPoint:
    """The checkpoint pre-training starts from (``kind='random'``: none, build random init)."""

    kind: str  # random | champion | checkpoint
    uri: str | None = None
    model_id: str | None = None
    version: str | None = None
    reason: str = ""

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> StartPoint:
        return cls(**data) if data else cls("random", reason="random init")


def _champion(cfg: Config, client: Any) -> StartPoint:
    name, alias = cfg.promotion.model_name, cfg.promotion.alias
    version = champion_version(client, name, alias)
    if version is None:
        reason = f"pretrain.init_from=champion, but {name}@{alias} does not exist yet: starting from random init"
        log.warning(reason)
        return StartPoint("random", reason=reason)
    model_id = version_model_id(version)
    model = client.get_logged_model(model_id)
    uri = model.tags.get(TAG_CHECKPOINT)
    if not uri:
        raise ConfigError(
            f"pretrain.init_from=champion: {name}@{alias} (version {version.version}, model {model_id}) "
            f"has no '{TAG_CHECKPOINT}' tag, so its checkpoint cannot be found"
        )
    return StartPoint(
        "champion", uri=storage.normalize(uri), model_id=model_id, version=str(version.version),
        reason=f"the champion {name}@{alias} (version {version.version}, model {model_id})",
    )


def resolve_start(cfg: Config, client: Any) -> StartPoint:
    """Turn ``pretrain.init_from`` into a checkpoint (checked to exist and to fit the preset)."""
    init_from = cfg.pretrain.init_from.strip()
    if init_from in ("", "random"):
        return StartPoint("random", reason="random init")
    if init_from == "champion":
        start = _champion(cfg, client)
    else:
        start = StartPoint("checkpoint", uri=storage.normalize(init_from), reason=f"the checkpoint {init_from}")
    if start.is_random:
        return start
    assert start.uri is not None
    if not storage.is_complete(start.uri):
        raise ConfigError(
            f"pretrain.init_from={init_from}: {start.uri} is not a finished checkpoint (no "
            f"{storage.COMPLETE_MARKER} marker); {start.reason}"
        )
    check_shape(cfg, start)
    log.info("pre-training starts from %s at %s", start.reason, start.uri)
    return start


def check_shape(cfg: Config, start: StartPoint) -> None:
    """The preset's model shape must be the checkpoint's: name every field that differs."""
    assert start.uri is not None
    from transformers import LlamaConfig

    with storage.open_uri(storage.join(start.uri, "config.json"), "r") as fh:
        hf = LlamaConfig.from_dict(json.load(fh))  # fills the defaults a saved config leaves out
    wanted = cfg.model.model_dump()
    diffs = [
        f"model.{field}={wanted[field]} but the checkpoint has {key}={getattr(hf, key, None)}"
        for field, key in SHAPE_FIELDS.items()
        if getattr(hf, key, None) != wanted[field]
    ]
    if diffs:
        raise ConfigError(
            f"pretrain.init_from={cfg.pretrain.init_from}: the preset's model does not fit {start.reason} "
            f"({start.uri}): " + "; ".join(diffs)
        )
