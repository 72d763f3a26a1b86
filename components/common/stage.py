"""What every stage does around its own work: find its run folder, open its MLflow child run
under the pipeline's parent run, and close that run as FINISHED or FAILED.

A failed stage still leaves its MLflow run (marked FAILED, with whatever it logged) and never
touches what earlier stages wrote; a re-run reopens the same MLflow run.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from components.common import storage
from components.common.run_id import check_run_id
from components.common.config import Config
from components.common.progress import emit_event
from components.common.tracking import Tracker

log = logging.getLogger(__name__)


def run_uri(cfg: Config, run_id: str) -> str:
    """Everything a pipeline run writes lives under ``<storage.root>/<run_id>``."""
    check_run_id(run_id)
    return storage.join(storage.normalize(cfg.storage.root), run_id)


@dataclass
class StageContext:
    cfg: Config
    run_id: str
    stage: str
    run_uri: str
    tracker: Tracker
    parent_run_id: str
    mlflow_run_id: str


@contextmanager
def stage_context(cfg: Config, run_id: str, stage: str) -> Iterator[StageContext]:
    tracker = Tracker(cfg)
    parent = tracker.pipeline_run(run_id, params={"preset": cfg.preset, "config": cfg.to_json()})
    child = tracker.stage_run(parent, run_id, stage)
    ctx = StageContext(cfg, run_id, stage, run_uri(cfg, run_id), tracker, parent, child)
    log.info("stage %s: run %s, MLflow run %s", stage, run_id, child)
    started = time.perf_counter()
    emit_event("stage_start", stage)  # the live view of `fromscratch run` (progress.py)
    try:
        yield ctx
    except BaseException as err:
        tracker.end_run(child, ok=False)
        emit_event("stage_end", stage, ok=False, seconds=time.perf_counter() - started, error=repr(err)[:300])
        raise
    tracker.end_run(child, ok=True)
    emit_event("stage_end", stage, ok=True, seconds=time.perf_counter() - started)
