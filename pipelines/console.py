"""What a person sees while ``fromscratch run`` works: one line of news per stage, not 2,000
lines of other programs' logs.

The stages report progress as events (``components.common.progress.emit_event``): JSON lines
appended to one file that every process of the run finds through ``FROMSCRATCH_EVENTS``. While
the pipeline runs, ``live_view``

- sends the process's own stdout and stderr (file descriptors 1 and 2, so the KFP task
  subprocesses, the Ray workers' forwarded output and C++ warnings follow) to a log file per
  run, whose path it prints first;
- tails the events file and draws it: on a terminal, one ``rich`` progress bar per training
  job (step/total, loss, tokens/s or steps/s, ETA) and, when a stage ends, its wall time and
  headline figures; off a terminal (CI, a pod log), the same facts as plain lines, a progress
  line at most every ``every`` seconds (and at most one per fifth of a job, so a slow machine
  does not lengthen the output) plus one line per finished stage.

``--verbose`` turns all of this off: everything goes to the console as before. On a cluster
there is no events file and each stage's progress lines are its pod's log.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from components.common import storage
from components.common.progress import EVENTS_ENV, format_duration

PLAIN_EVERY = 60.0  # seconds between progress lines off a terminal
MIN_ADVANCE = 0.2  # ... and a job's line only after it moved a fifth of its steps: at most 5 per job
POLL = 0.25  # seconds between reads of the events file
LABEL_WIDTH = 11


def add_console_arguments(parser: Any) -> None:
    """``fromscratch run``'s console flags."""
    parser.add_argument(
        "--verbose", action="store_true",
        help="print everything (KFP, Ray, DeepSpeed, TRL, worker output) on the console instead of the live view",
    )
    parser.add_argument(
        "--progress-every", type=float, default=PLAIN_EVERY, metavar="SECONDS",
        help=f"off a terminal: seconds between progress lines (default {PLAIN_EVERY:g})",
    )


@dataclass
class RunFiles:
    """Where a run's console-side files go: the log of everything, and the events file."""

    folder: Path
    log: Path
    events: Path


def run_files(run_dir: str, run_id: str, stamp: str | None = None) -> RunFiles:
    """``<run>/logs/run-<stamp>.log`` and ``events-<stamp>.jsonl`` (one pair per invocation, so a
    resumed run keeps the first attempt's log); in ``./.fromscratch-kfp/<run-id>/logs`` when the
    run's storage is remote (processes append to them as local files)."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    if storage.is_remote(run_dir):
        folder = Path(".fromscratch-kfp").resolve() / run_id / "logs"
    else:
        folder = Path(storage.normalize(storage.join(run_dir, "logs")).removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    return RunFiles(folder, folder / f"run-{stamp}.log", folder / f"events-{stamp}.jsonl")


# -- formatting -------------------------------------------------------------------------------
def _num(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    if abs(value) >= 10_000:
        return f"{value / 1000:.1f}k"
    return f"{value:.4g}"


def _short(key: str) -> str:
    return {"train_loss": "loss", "score_mean": "score", "reply_length_mean": "len",
            "ended_fraction": "ended"}.get(key, key)


@dataclass
class JobState:
    """What the view knows about one training job (``pretrain``, ``reward``, ``ppo``...)."""

    stage: str
    done: int = 0
    total: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    eta: float | None = None
    first: tuple[float, int] | None = None  # (time, done) of its first event: for the rate
    last_t: float = 0.0
    unit: str = "steps"
    label: str = ""
    shown: int = 0  # ``done`` when its last plain progress line was printed

    def rate(self) -> str:
        """tokens/s when the job reports it, else steps (or checkpoints) per second."""
        for key in ("tok/s", "tokens_per_s"):
            if key in self.metrics:
                return f"{_num(self.metrics[key])} tok/s"
        if self.first is None or self.last_t <= self.first[0] or self.done <= self.first[1]:
            return ""
        per_s = (self.done - self.first[1]) / (self.last_t - self.first[0])
        return f"{per_s:.3g} {self.unit}/s" if per_s >= 0.1 else f"{1 / per_s:.3g} s/{self.unit.rstrip('s')}"

    def stats(self, limit: int = 3) -> str:
        shown = [(k, v) for k, v in self.metrics.items() if k not in ("tok/s", "tokens_per_s", "lr")][:limit]
        parts = [f"{_short(k)} {_num(v)}" for k, v in shown if v is not None]
        if self.rate():
            parts.append(self.rate())
        return "  ".join(parts)


class View:
    """Turns events into console output; subclasses draw (plain lines or rich bars)."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.jobs: dict[str, JobState] = {}
        self.stage_jobs: dict[str, list[str]] = {}
        self.headlines: dict[str, dict[str, Any]] = {}
        self.current = ""
        self.started = clock()

    # events ---------------------------------------------------------------------------------
    def handle(self, event: dict[str, Any]) -> None:
        kind, stage = event.get("kind"), str(event.get("stage", "?"))
        if kind == "stage_start":
            self.current = stage
            self.stage_jobs.setdefault(stage, [])
            self.on_stage_start(stage)
        elif kind == "progress":
            owner = self.current or stage
            job = self.jobs.get(stage)
            if job is None or job.stage != owner:
                job = self.jobs[stage] = JobState(owner)
                self.stage_jobs.setdefault(owner, []).append(stage)
            now = float(event.get("t", self.clock()))
            job.done, job.total = int(event.get("done", 0)), int(event.get("total", 0))
            job.metrics = {k: v for k, v in (event.get("metrics") or {}).items() if isinstance(v, (int, float))}
            job.eta, job.last_t = event.get("eta"), now
            job.unit, job.label = str(event.get("unit", "steps")), str(event.get("label", ""))
            if job.first is None and job.done > 0:
                job.first = (now, job.done)
            self.on_progress(stage, job)
        elif kind == "headline":
            self.headlines[stage] = event.get("figures") or {}
        elif kind == "stage_end":
            self.on_stage_end(stage, bool(event.get("ok")), event.get("seconds"), event.get("error"))

    def headline(self, stage: str) -> str:
        """A finished stage's figures: evaluation's own, else each job's last metrics."""
        if self.headlines.get(stage):
            return "  ".join(f"{k} {_num(v)}" for k, v in self.headlines[stage].items())
        parts = []
        for name in self.stage_jobs.get(stage, []):
            job = self.jobs[name]
            stats = job.stats(limit=2)
            parts.append(f"{name}: {stats}" if name != stage or len(self.stage_jobs[stage]) > 1 else stats)
        return "  |  ".join(p for p in parts if p)

    def end_line(self, stage: str, ok: bool, seconds: Any, error: Any) -> str:
        mark = "✓" if ok else "✗"
        took = format_duration(float(seconds)) if isinstance(seconds, (int, float)) else "?"
        tail = self.headline(stage) if ok else f"FAILED {error or ''}".strip()
        return f"{mark} {stage:<{LABEL_WIDTH}} {took:>7}  {tail}".rstrip()

    # drawing (subclasses) -------------------------------------------------------------------
    def on_stage_start(self, stage: str) -> None: ...

    def on_progress(self, name: str, job: JobState) -> None: ...

    def on_stage_end(self, stage: str, ok: bool, seconds: Any, error: Any) -> None: ...

    def tick(self) -> None: ...

    def close(self) -> None: ...

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()


class PlainView(View):
    """Off a terminal: a progress line at most every ``every`` seconds (the newest job's, once it
    has moved ``MIN_ADVANCE`` of its steps since its last line), and one line per finished
    stage. However slow the machine, a job prints at most five progress lines."""

    def __init__(self, out: TextIO, every: float = PLAIN_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(out, clock)
        self.every = every
        self.last_line = -float("inf")
        self.pending: str | None = None

    def progress_line(self, name: str, job: JobState) -> str:
        elapsed = format_duration(self.clock() - self.started)
        share = f"{100 * job.done / job.total:3.0f}%" if job.total else ""
        eta = f"ETA {format_duration(job.eta)}" if job.eta is not None and job.done < job.total else ""
        what = f"{job.done}/{job.total}" + (f" {job.unit}" if job.unit != "steps" else "")
        parts = [f"[{elapsed:>6}]", f"{name:<{LABEL_WIDTH}}", what, share, job.stats(), eta]
        return "  ".join(p for p in parts if p)

    def on_progress(self, name: str, job: JobState) -> None:
        self.pending = name
        self.tick()

    def tick(self) -> None:
        now = self.clock()
        if not self.pending or now - self.last_line < self.every:
            return
        job = self.jobs[self.pending]
        if job.total and job.done - job.shown < MIN_ADVANCE * job.total:
            return  # a slow run would otherwise print a line a minute for hours
        self.print(self.progress_line(self.pending, job))
        job.shown = job.done
        self.pending, self.last_line = None, now

    def on_stage_end(self, stage: str, ok: bool, seconds: Any, error: Any) -> None:
        if self.pending and self.jobs[self.pending].stage == stage:
            self.pending = None  # its news is in the end line
        self.print(self.end_line(stage, ok, seconds, error))


class RichView(View):
    """On a terminal: a live ``rich`` progress bar per running job; a line per finished stage."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(out, clock)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

        self.console = Console(file=out, force_terminal=True, highlight=False)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<11}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("[dim]{task.fields[eta]}"),
            console=self.console, transient=True, refresh_per_second=4,
            # sys.stdout/stderr stay on the log file: rich must not pull them onto the console
            redirect_stdout=False, redirect_stderr=False,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def _task(self, name: str, total: int | None) -> Any:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, stats="", eta="")
        return self.tasks[name]

    def on_stage_start(self, stage: str) -> None:
        self._task(stage, None)  # a spinner until its first progress event

    def on_progress(self, name: str, job: JobState) -> None:
        if name != job.stage and job.stage in self.tasks:  # the stage's spinner gives way to its jobs
            self.progress.remove_task(self.tasks.pop(job.stage))
        eta = f"ETA {format_duration(job.eta)}" if job.eta is not None and job.done < job.total else ""
        task = self._task(name, job.total or None)
        self.progress.update(task, total=job.total or None, completed=job.done, stats=job.stats(), eta=eta)

    def on_stage_end(self, stage: str, ok: bool, seconds: Any, error: Any) -> None:
        for name in [stage, *self.stage_jobs.get(stage, [])]:
            if name in self.tasks:
                self.progress.remove_task(self.tasks.pop(name))
        self.progress.console.print(self.end_line(stage, ok, seconds, error), markup=False)

    def print(self, text: str = "") -> None:
        self.progress.console.print(text, markup=False)

    def close(self) -> None:
        self.progress.stop()


# -- the events file --------------------------------------------------------------------------
class Tailer:
    """Reads whole lines appended to ``path`` since the last read (a half-written line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


@dataclass
class LiveView:
    """What ``live_view`` yields: the files, and the view to print through."""

    files: RunFiles
    view: View | None
    out: TextIO

    def print(self, text: str = "") -> None:
        if self.view is not None:
            self.view.print(text)
        else:
            self.out.write(text + "\n")
            self.out.flush()


@contextmanager
def live_view(
    run_dir: str, run_id: str, verbose: bool = False, every: float = PLAIN_EVERY, interactive: bool | None = None
) -> Iterator[LiveView]:
    """Route this process's output to the run's log file and draw the events on the console
    for the duration of the block (see the module doc). With ``verbose`` nothing is routed:
    the events file is still written, the console shows everything."""
    files = run_files(run_dir, run_id)
    os.environ[EVENTS_ENV] = str(files.events)
    files.events.touch()
    if verbose:
        print(f"log:         (--verbose: everything below; events in {files.events})", flush=True)
        try:
            yield LiveView(files, None, sys.stdout)
        finally:
            os.environ.pop(EVENTS_ENV, None)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    if interactive is None:
        interactive = os.isatty(saved_out) and os.environ.get("TERM") != "dumb"
    console.write(f"log:         {files.log}  (everything else: KFP, Ray, DeepSpeed, TRL)\n")
    console.flush()
    log_fd = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    view: View = RichView(console) if interactive else PlainView(console, every)
    stop = threading.Event()
    tailer = Tailer(files.events)

    def pump() -> None:
        while True:
            for event in tailer.read():
                view.handle(event)
            view.tick()
            if stop.wait(POLL):
                for event in tailer.read():  # whatever came in last
                    view.handle(event)
                return

    thread = threading.Thread(target=pump, name="fromscratch-view", daemon=True)
    thread.start()
    try:
        yield LiveView(files, view, console)
    finally:
        stop.set()
        thread.join(timeout=5)
        view.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        console.close()
        os.environ.pop(EVENTS_ENV, None)


def log_tail(path: Path, lines: int = 25, window: int = 2000) -> list[str]:
    """The last ``lines`` lines of the log (where a failed task's traceback is), leaving out
    lines that repeat more than three times near the end (a warning Ray prints every second)."""
    from collections import Counter

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    recent = text.rstrip("\n").splitlines()[-window:]
    counts = Counter(recent)
    return [line for line in recent if counts[line] <= 3][-lines:]
