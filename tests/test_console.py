"""The console of ``fromscratch run``: progress events drawn as a few lines, everything else in
the run's log file; and a small real run captured without a terminal stays short."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.console import PlainView, Tailer

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _stage(view: PlainView, clock: Clock, stage: str, jobs: dict[str, int], seconds_per_step: float) -> None:
    view.handle({"kind": "stage_start", "stage": stage, "t": clock.now})
    started = clock.now
    for job, steps in jobs.items():
        for step in range(1, steps + 1):
            clock.now += seconds_per_step
            view.handle({"kind": "progress", "stage": job, "t": clock.now, "done": step, "total": steps,
                         "metrics": {"loss": 5.0 - step / steps, "tok/s": 9000.0}, "eta": (steps - step) * seconds_per_step})
            view.tick()
    view.handle({"kind": "stage_end", "stage": stage, "ok": True, "seconds": clock.now - started, "t": clock.now})


def test_off_a_terminal_progress_comes_at_a_steady_rate_and_each_stage_ends_in_one_line():
    """A 20-minute run with a progress event every second: one progress line a minute at most,
    plus one line per finished stage with its wall time and last figures."""
    out, clock = io.StringIO(), Clock()
    view = PlainView(out, every=60.0, clock=clock)
    _stage(view, clock, "pretrain", {"pretrain": 300}, 1.0)
    _stage(view, clock, "preference", {"reward": 300, "ppo": 300}, 1.0)
    _stage(view, clock, "rlvr", {"rlvr": 300}, 1.0)
    lines = out.getvalue().splitlines()
    minutes = clock.now / 60
    assert clock.now == 1200
    assert len(lines) <= minutes + 3 + 1, lines  # 20 progress lines at most, 3 stage ends
    ends = [line for line in lines if line.startswith("✓")]
    assert [e.split()[1] for e in ends] == ["pretrain", "preference", "rlvr"]
    assert "5m00s" in ends[0] and "loss 4" in ends[0] and "9000 tok/s" in ends[0]
    assert "reward:" in ends[1] and "ppo:" in ends[1]  # both jobs of the stage
    progress = [line for line in lines if not line.startswith("✓")]
    assert progress and all("ETA" in p or "100%" in p for p in progress)
    assert "pretrain" in progress[0] and "/300" in progress[0]


def test_a_slow_machine_does_not_lengthen_the_output():
    """The same run at 30 s a step (10 hours): still at most five progress lines per job."""
    out, clock = io.StringIO(), Clock()
    view = PlainView(out, every=60.0, clock=clock)
    _stage(view, clock, "pretrain", {"pretrain": 300}, 30.0)
    _stage(view, clock, "preference", {"reward": 300, "ppo": 300}, 30.0)
    lines = out.getvalue().splitlines()
    assert len(lines) <= 3 * 5 + 2, lines
    assert sum(" reward " in line for line in lines) >= 3  # still news while it runs


def test_a_failed_stage_says_so_and_a_job_without_tokens_shows_steps_per_second():
    out, clock = io.StringIO(), Clock()
    view = PlainView(out, every=0.0, clock=clock)
    view.handle({"kind": "stage_start", "stage": "sft", "t": 0.0})
    for step in (1, 2, 3):
        clock.now = 2.0 * step
        view.handle({"kind": "progress", "stage": "sft", "t": clock.now, "done": step, "total": 10, "metrics": {"loss": 2.0}})
    view.handle({"kind": "stage_end", "stage": "sft", "ok": False, "seconds": 7.0, "error": "RuntimeError('boom')"})
    text = out.getvalue()
    assert "0.5 steps/s" in text  # 2 steps in 4 s
    assert text.splitlines()[-1].startswith("✗ sft") and "FAILED RuntimeError('boom')" in text


def test_the_tailer_returns_only_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = Tailer(path)
    assert tail.read() == []  # not there yet
    with open(path, "ab") as fh:
        fh.write(b'{"kind": "a"}\n{"kind": "b"')
    assert tail.read() == [{"kind": "a"}]
    with open(path, "ab") as fh:
        fh.write(b', "x": 1}\nnot json\n')
    assert tail.read() == [{"kind": "b", "x": 1}]


SCRIPT = textwrap.dedent("""
    import os, subprocess, sys
    from pipelines.console import live_view
    with live_view(sys.argv[1], "r1", verbose=sys.argv[2] == "verbose", every=0.0, interactive=False) as view:
        view.print("HEADER")
        print("NOISE from the driver")
        print("WARNING on stderr", file=sys.stderr)
        subprocess.run([sys.executable, "-c",
            "from components.common.progress import emit_event, StepTimer\\n"
            "print('CHILD output')\\n"
            "emit_event('stage_start', 'pretrain')\\n"
            "StepTimer(10).line('pretrain', 5, {'loss': 3.5})\\n"
            "emit_event('stage_end', 'pretrain', ok=True, seconds=12.0)\\n"], check=True)
    print("AFTER the view")
""")


def _run_script(tmp_path: Path, mode: str) -> tuple[str, list[Path]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FROMSCRATCH_EVENTS", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"), mode], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr, sorted((tmp_path / "run" / "logs").glob("run-*.log"))


def test_the_processes_output_goes_to_the_log_and_the_events_to_the_console(tmp_path):
    console, logs = _run_script(tmp_path, "quiet")
    assert len(logs) == 1
    log_text = logs[0].read_text()
    first = console.splitlines()[0]
    assert first.startswith("log:") and str(logs[0]) in first  # the log's path comes first
    for noise in ("NOISE from the driver", "WARNING on stderr", "CHILD output"):
        assert noise not in console and noise in log_text
    assert "HEADER" in console and "AFTER the view" in console  # the console is back afterwards
    assert "pretrain" in console and "5/10" in console and "loss 3.5" in console
    assert "✓ pretrain" in console and "12s" in console


def test_verbose_keeps_everything_on_the_console(tmp_path):
    console, _ = _run_script(tmp_path, "verbose")
    for noise in ("NOISE from the driver", "WARNING on stderr", "CHILD output", "HEADER"):
        assert noise in console


@pytest.mark.slow
@pytest.mark.e2e
def test_a_small_run_without_a_terminal_prints_few_lines(tmp_path):
    """The whole pipeline at small sizes, stdout and stderr piped (no terminal): the console
    stays under 80 lines (it was ~2,000 before the live view), the log file holds the rest."""
    from tests.conftest import SMALL

    overrides = [
        f"storage.root={tmp_path / 'runs'}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *SMALL,
        "pretrain.steps=40", "pretrain.checkpoint_every=40", "sft.steps=20", "sft.checkpoint_every=20",
        "data.instructions.num_train=300", "data.instructions.num_heldout=20", "data.preferences.num_train=200",
        "data.preferences.num_heldout=20", "preference.reward.steps=10", "preference.reward.checkpoint_every=10",
        "preference.ppo.iterations=3", "preference.ppo.checkpoint_every=3", "preference.ppo.prompts_per_worker=4",
        "data.problems.num_train=100", "data.problems.num_heldout=20", "rlvr.steps=2", "rlvr.checkpoint_every=2",
        "rlvr.prompts_per_step=2", "rlvr.num_generations=4", "evaluate.pass_k=2", "evaluate.pass_n=4",
        "evaluate.max_instruction_examples=20", "evaluate.max_preference_examples=20",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "FROMSCRATCH_EVENTS")}
    env["PYTHONPATH"] = str(REPO)
    args = [sys.executable, "-m", "pipelines.cli", "run", "--new-run-id", "quiet", "--progress-every", "10"]
    proc = subprocess.run(args + [x for o in overrides for x in ("--set", o)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    console = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(console[-60:])
    assert len(console) < 80, "\n".join(console)
    assert "run quiet finished" in proc.stdout and "promotion:" in proc.stdout
    for stage in ("data_prep", "pretrain", "sft", "preference", "rlvr", "evaluate"):
        assert any(line.startswith(f"✓ {stage}") for line in console), stage
    log = next((tmp_path / "runs" / "quiet" / "logs").glob("run-*.log")).read_text()
    assert len(log.splitlines()) > 10 * len(console)  # the rest is there
    assert "executor_input" in log or "Executing task" in log
    events = next((tmp_path / "runs" / "quiet" / "logs").glob("events-*.jsonl")).read_text().splitlines()
    assert any(json.loads(e)["kind"] == "progress" and json.loads(e)["stage"] == "pretrain" for e in events)


def test_on_a_terminal_the_bars_leave_the_processes_output_alone(tmp_path):
    """rich's live display must not take over sys.stdout (KFP prints its tasks' output there)."""
    from pipelines.console import RichView

    before = sys.stdout
    view = RichView(io.StringIO())
    try:
        assert sys.stdout is before
        view.handle({"kind": "stage_start", "stage": "pretrain", "t": 0.0})
        view.handle({"kind": "progress", "stage": "pretrain", "t": 1.0, "done": 1, "total": 4, "metrics": {"loss": 3.0}})
        view.handle({"kind": "stage_end", "stage": "pretrain", "ok": True, "seconds": 2.0})
        assert view.tasks == {} and sys.stdout is before
    finally:
        view.close()
    assert "✓ pretrain" in view.out.getvalue()


def test_the_log_tail_after_a_failure_skips_repeated_warnings(tmp_path):
    from pipelines.console import log_tail

    log = tmp_path / "run.log"
    log.write_text("\n".join(["Traceback (most recent call last):", "ValueError: bad"]
                             + ["(pid=1) Failed to query Ray Train Controller actor state."] * 50 + ["Aborted"]) + "\n")
    assert log_tail(log, lines=5) == ["Traceback (most recent call last):", "ValueError: bad", "Aborted"]
