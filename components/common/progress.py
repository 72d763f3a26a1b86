"""Progress lines for training logs: ``<stage> step 40/200 loss 3.21 ETA 1m05s``.

Every training loop (the hand-written pre-training and PPO loops, and the TRL trainers through
``MlflowLogCallback``) logs the same shape of line, so a person watching ``fromscratch run``
can tell which stage is running, how far it is and when it will be done. The ETA extrapolates
the mean time per step *of this attempt* (a resumed run does not count the steps it skipped).

The same facts also travel as **progress events**: one JSON object per line appended to the
file named by ``FROMSCRATCH_EVENTS``, when it is set. ``fromscratch run`` sets it to a file in
the run's folder before it starts Ray and the KFP tasks (both inherit the environment), tails
it, and draws the live view from it, while every process's own output goes to the run's log
file. Each event is one ``write`` on a file opened for appending, so lines from the KFP task
processes and the Ray workers never interleave. Where the variable is not set (a stage in a
cluster pod) nothing is written and the progress lines in the pod's log are the view.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

EVENTS_ENV = "FROMSCRATCH_EVENTS"


def emit_event(kind: str, stage: str, **fields: Any) -> None:
    """Append ``{t, kind, stage, ...fields}`` to the events file, if there is one. Never raises:
    a view that cannot be drawn must not stop training."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    record = {"t": time.time(), "kind": kind, "stage": stage, **fields}
    try:
        line = json.dumps(record, default=_plain, allow_nan=False)
    except ValueError:  # NaN / inf in a metric: show it as missing
        line = json.dumps(json.loads(json.dumps(record, default=_plain), parse_constant=lambda _: None))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def _plain(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m07s``, ``1h02m``; ``?`` when unknown (no step timed yet)."""
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class StepTimer:
    """Times one training attempt from ``start_step`` towards ``total_steps``."""

    def __init__(self, total_steps: int, start_step: int = 0) -> None:
        self.total = total_steps
        self.start_step = start_step
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self, done: int) -> float | None:
        """Seconds left after ``done`` steps, or None before the first step of this attempt."""
        steps = done - self.start_step
        if steps <= 0:
            return None
        return self.elapsed() / steps * max(0, self.total - done)

    def line(self, stage: str, done: int, metrics: dict[str, float] | None = None) -> str:
        """``stage step done/total k v ... ETA t`` (metrics shown with 4 significant digits). The
        same facts go out as a ``progress`` event for the live view of ``fromscratch run``."""
        emit_event(
            "progress", stage, done=done, total=self.total, metrics=dict(metrics or {}),
            eta=self.eta(done), elapsed=self.elapsed(),
        )
        shown = " ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items())
        parts = [f"{stage} step {done}/{self.total}", shown, f"ETA {format_duration(self.eta(done))}"]
        return " ".join(p for p in parts if p)
