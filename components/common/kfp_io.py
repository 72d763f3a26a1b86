"""The glue between KFP artifacts and the stages' plain entry points.

Large things (shards, checkpoints) stay at their storage URI; a KFP artifact carries only a
small JSON file and metadata naming that URI (and the MLflow model id), so KFP never copies
gigabytes between tasks and a Ray worker on any node reads the same URI.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from components.common.config import Config, ConfigError, resolve_stage_config
from components.common.errors import DataError
from components.common.logs import setup_logging
from components.common.storage import StorageError


def stage_config(config_json: str, overrides: str) -> Config:
    setup_logging()
    return resolve_stage_config(config_json, overrides)


def write_pointer(artifact: Any, uri: str, **metadata: Any) -> None:
    """Make ``artifact`` point at ``uri``: file content and metadata both name it."""
    payload = {"uri": uri, **metadata}
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(payload, indent=2))
    artifact.metadata.update({k: v for k, v in payload.items() if isinstance(v, (str, int, float, bool))})


def read_pointer(artifact: Any) -> dict[str, Any]:
    """What ``write_pointer`` wrote (metadata first: it survives artifact stores that drop files)."""
    meta = dict(getattr(artifact, "metadata", {}) or {})
    if "uri" in meta:
        return meta
    path = artifact.path
    if os.path.isfile(path):
        return json.loads(Path(path).read_text())
    raise ValueError(f"artifact {artifact.uri} does not name a storage URI")


@contextmanager
def user_errors(stage: str) -> Iterator[None]:
    """Bad input ends the task with one clear line, not a traceback through our code."""
    try:
        yield
    except (ConfigError, DataError, StorageError) as err:
        print(f"fromscratch {stage}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
