"""The configuration a run started with, and what a resume may change.

``fromscratch run`` writes ``<run>/config.json`` before anything starts: the resolved
configuration (every setting, defaults included) and its SHA-256 digest. A resume
(``--run-id``) compares its own resolved configuration with that record, key by dotted key:

- a key in :data:`MAY_DIFFER` changes where or how a run works, never what a stage produces:
  it may differ freely;
- any other key changes what some stage produces (:func:`first_stage` says which; the stages
  after it consume that stage's output, so they change too). If one of those stages has
  already written something (finished output, or Ray checkpoints a resume would continue
  from), the resume is refused with the keys listed; with ``--rerun-changed`` the outputs of
  those stages are removed and the stages run again. Stages that have not started yet simply
  run with the new values.

An accepted change is recorded (the new configuration replaces the old one, whose digest goes
to ``history``), so the record always describes what the stages on disk were made with.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from components.common import storage
from components.common.config import Config

RECORD = "config.json"

STAGES = ("data_prep", "pretrain", "sft", "preference", "rlvr", "evaluate")

# What each stage writes under <run>/ (finished folders and the Ray checkpoints a resume
# continues from); KFP's own copies under <run>/kfp are pointers and are rewritten each run.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "data_prep": ("data",),
    "pretrain": ("checkpoints/init", "checkpoints/pretrain", "ray/pretrain"),
    "sft": ("checkpoints/sft", "ray/sft"),
    "preference": (
        "checkpoints/reward", "checkpoints/ppo", "checkpoints/dpo", "ray/reward", "ray/ppo", "ray/dpo",
    ),
    "rlvr": ("checkpoints/rlvr", "ray/rlvr"),
    "evaluate": ("eval",),
}

# The MLflow stage runs each stage opens (pretrain also opens the random init's run).
MLFLOW_STAGES: dict[str, tuple[str, ...]] = {
    "data_prep": ("data_prep",), "pretrain": ("init", "pretrain"), "sft": ("sft",),
    "preference": ("preference",), "rlvr": ("rlvr",), "evaluate": ("evaluate",),
}

# Settings that may differ on resume, each with the reason it cannot change what a finished
# stage produced. Patterns are fnmatch-style over dotted keys.
MAY_DIFFER: dict[str, str] = {
    "preset": "only the preset's name; the values it resolved to are compared key by key",
    "storage.root": "where the run folder is found (a run moved to another disk or bucket)",
    "storage.s3_endpoint_url": "how the same storage is reached",
    "tracking.*": "where lineage and metrics are recorded (and whether checkpoint files are also "
    "copied into MLflow), not what is trained",
    "ray.address": "which Ray runs the workers, not what they compute",
    "ray.cpus_per_worker": "CPUs reserved per worker: scheduling only",
    "ray.gpus_per_worker": "GPUs reserved per worker: scheduling only (use_gpu is compared)",
    "ray.torch_threads_per_worker": "intra-op threads: speed only",
    "ray.max_failures": "how often a failed worker group is restarted",
    "ray.placement_strategy": "which nodes the workers land on",
    "*.log_every": "how often metrics are logged and printed",
    "*.checkpoint_every": "where a killed stage resumes from, not what a finished stage produced",
    "pipeline.*": "the KFP image and pipeline name: packaging, not settings",
    "kubernetes.*": "pod placement, resources, secrets and how Ray is reached on a cluster",
}

# The earliest stage whose output a setting changes; later stages consume that output. Checked
# in order: the first matching pattern wins; anything unlisted counts from data_prep (a new
# setting is assumed to matter until it is classified here).
_FIRST_STAGE: tuple[tuple[str, str], ...] = (
    ("seed", "data_prep"),
    ("data.*", "data_prep"),
    ("model.max_seq_len", "data_prep"),  # the packed block length
    ("pretrain.init_from", "data_prep"),  # data_prep resolves the start and its tokenizer
    ("model.*", "pretrain"),
    ("deepspeed.*", "pretrain"),
    ("ray.*", "pretrain"),  # num_workers (global batch), use_gpu (device, precision), elastic workers
    ("pretrain.*", "pretrain"),
    ("sft.*", "sft"),
    ("preference.*", "preference"),
    ("rlvr.*", "rlvr"),
    ("evaluate.*", "evaluate"),
    ("promotion.*", "evaluate"),
)


class ResumeError(RuntimeError):
    """A resume would reuse stages made with other settings; the message lists the keys."""

    def __init__(self, message: str, changed: dict[str, tuple[Any, Any]], stages: list[str]):
        self.changed = changed
        self.stages = stages
        super().__init__(message)


def record_uri(run_dir: str) -> str:
    return storage.join(run_dir, RECORD)


def _plain(cfg: Config | dict[str, Any]) -> dict[str, Any]:
    return json.loads(cfg.to_json()) if isinstance(cfg, Config) else cfg


def digest(cfg: Config | dict[str, Any]) -> str:
    """SHA-256 of the configuration as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(_plain(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values; lists are leaves (compared whole)."""
    if isinstance(data, dict):
        if not data and prefix:
            return {prefix: {}}
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def may_differ(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in MAY_DIFFER)


def first_stage(key: str) -> str:
    for pattern, stage in _FIRST_STAGE:
        if fnmatch.fnmatchcase(key, pattern):
            return stage
    return STAGES[0]


_ABSENT = "<not set>"


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs: ``{key: (recorded, current)}``."""
    old, new = flatten(recorded), flatten(current)
    return {
        key: (old.get(key, _ABSENT), new.get(key, _ABSENT))
        for key in sorted(set(old) | set(new))
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    }


def _upgraded(recorded: dict[str, Any]) -> dict[str, Any]:
    """A record written by an older version, with the settings added since at their defaults
    (so a new setting left at its default is no difference); as recorded if it no longer
    validates (a removed setting then shows up as a difference)."""
    try:
        return json.loads(Config.model_validate(recorded).to_json())
    except Exception:  # noqa: BLE001 - any validation problem: compare the raw record
        return recorded


def started_stages(run_dir: str) -> list[str]:
    """Stages with anything on disk: finished outputs or Ray checkpoints to resume from."""
    return [s for s in STAGES if any(storage.exists(storage.join(run_dir, p)) for p in STAGE_OUTPUTS[s])]


@dataclass
class ResumePlan:
    """What a resume found: the result-changing keys, the stages they reach, those to redo."""

    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    ignored: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    affected: list[str] = field(default_factory=list)
    rerun: list[str] = field(default_factory=list)
    recorded: bool = True


def plan_resume(cfg: Config, run_dir: str) -> ResumePlan:
    """Compare ``cfg`` with the run's record; nothing is changed on storage."""
    uri = record_uri(run_dir)
    if not storage.exists(uri):
        return ResumePlan(recorded=False)
    record = storage.read_json(uri)
    diffs = differences(_upgraded(record.get("config", {})), _plain(cfg))
    plan = ResumePlan()
    for key, pair in diffs.items():
        (plan.ignored if may_differ(key) else plan.changed)[key] = pair
    if plan.changed:
        start = min(STAGES.index(first_stage(k)) for k in plan.changed)
        plan.affected = list(STAGES[start:])
        started = set(started_stages(run_dir))
        plan.rerun = [s for s in plan.affected if s in started]
    return plan


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def refusal(run_id: str, plan: ResumePlan) -> str:
    by_stage = {k: first_stage(k) for k in plan.changed}
    lines = [
        f"run {run_id} was started with another configuration, and its stages "
        f"{', '.join(plan.rerun)} already hold results of the old one. Settings that differ:",
    ]
    for key, (old, new) in plan.changed.items():
        lines.append(f"  {key}: {_show(old)} -> {_show(new)}   (changes {by_stage[key]} and later)")
    lines.append(
        "Resume with the recorded settings, start a new run (--new-run-id ID, or no id), or pass "
        f"--rerun-changed to remove the outputs of {', '.join(plan.rerun)} and run them again."
    )
    return "\n".join(lines)


def check_resume(cfg: Config, run_dir: str, run_id: str, rerun_changed: bool = False) -> ResumePlan:
    """Refuse (``ResumeError``) a resume whose configuration changes finished work; with
    ``rerun_changed``, remove the outputs of the stages it changes instead. Records the
    configuration the resume goes on with."""
    plan = plan_resume(cfg, run_dir)
    if plan.rerun and not rerun_changed:
        raise ResumeError(refusal(run_id, plan), plan.changed, plan.rerun)
    for stage in plan.rerun:
        for part in STAGE_OUTPUTS[stage]:
            storage.remove(storage.join(run_dir, part), inside=run_dir)
    if not plan.recorded or plan.changed or plan.ignored:
        write_record(cfg, run_dir, run_id, changed=sorted({**plan.changed, **plan.ignored}), rerun=plan.rerun)
    return plan


def write_record(
    cfg: Config, run_dir: str, run_id: str, changed: list[str] | None = None, rerun: list[str] | None = None
) -> dict[str, Any]:
    """Write ``<run>/config.json``: the configuration, its digest, and the digests before it."""
    uri = record_uri(run_dir)
    history: list[dict[str, Any]] = []
    if storage.exists(uri):
        old = storage.read_json(uri)
        history = [*old.get("history", []), {"digest": old.get("digest"), "recorded_at": old.get("recorded_at")}]
    record = {
        "run_id": run_id,
        "digest": digest(cfg),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": _plain(cfg),
        "changed_on_resume": changed or [],
        "rerun_on_resume": rerun or [],
        "history": history,
    }
    storage.write_json(uri, record)
    return record
