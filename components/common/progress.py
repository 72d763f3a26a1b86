"""Progress lines for training logs: ``<stage> step 40/200 loss 3.21 ETA 1m05s``.

Every training loop (the hand-written pre-training and PPO loops, and the TRL trainers through
``MlflowLogCallback``) logs the same shape of line, so a person watching ``fromscratch run``
can tell which stage is running, how far it is and when it will be done. The ETA extrapolates
the mean time per step *of this attempt* (a resumed run does not count the steps it skipped).
"""

from __future__ import annotations

import math
import time


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
        """``stage step done/total k v ... ETA t`` (metrics shown with 4 significant digits)."""
        shown = " ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items())
        parts = [f"{stage} step {done}/{self.total}", shown, f"ETA {format_duration(self.eta(done))}"]
        return " ".join(p for p in parts if p)
