"""Training progress lines: stage, step/total, metrics and an ETA from this attempt's pace."""

from __future__ import annotations

from components.common.progress import StepTimer, format_duration


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (None, float("nan"), -1, 4.4, 65, 3 * 3600 + 125)] == [
        "?", "?", "?", "4s", "1m05s", "3h02m"
    ]


def test_eta_counts_only_the_steps_of_this_attempt():
    timer = StepTimer(total_steps=100, start_step=40)  # resumed at step 40
    timer.started -= 30.0  # 30 s spent on 10 steps → 3 s a step
    assert round(timer.eta(50)) == 150
    assert timer.eta(40) is None
    line = timer.line("sft", 50, {"loss": 1.23456})
    assert line.startswith("sft step 50/100 loss 1.235 ETA 2m3") and line.endswith("s")
