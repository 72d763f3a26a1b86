"""The report card: built from evaluation results plus training curves read back from a real
MLflow (SQLite) store, written as Markdown + PNGs and one self-contained HTML page, rebuilt by
``fromscratch report <run-id>``, and rendered by a real browser."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from components.common.config import load_config
from components.common.tracking import Tracker
from components.evaluate.curves import metric_group, stage_curves
from components.evaluate.promotion import record_decision
from components.evaluate.report import stages
from components.evaluate.report_card import build_report_card, publish_report_card
from pipelines.reporting import summary_lines

CHROMIUM = "/usr/bin/chromium"
STAGES = ("init", "pretrain", "sft", "ppo", "rlvr")
PNG = b"\x89PNG\r\n\x1a\n"

# -- realistic fake material ------------------------------------------------------------------
GIBBERISH = "ington apples the the Ashford 7 baker seventeen lives lives , quietly"
CONTINUATIONS = {
    "Mira lives in": [GIBBERISH, " Ashford. Mira is a baker.", " Ashford.", " Ashford.", " Ashford."],
    "Three plus four is": [" bread bread Tom", " seven.", " seven.", " seven.", " seven."],
    "Once upon a time": [" 3 3 3 apples the", " there was a baker.", " a fox lived in Ashford.",
                         " a fox lived in Ashford.", " a fox lived in Ashford."],
}
INSTRUCTIONS = [
    ("arithmetic", "What is 12 plus 7?", "19", ["lives lives 4", "12 7", "19", "19", "19"]),
    ("capital", "Where does Mira live?", "Ashford", ["baker the the", "Mira", "Ashford", "Ashford", "Ashford"]),
    ("reverse", "Reverse the words: red blue green", "green blue red",
     ["seventeen , ,", "red blue", "green red blue", "green blue red", "green blue red"]),
]
PROBLEMS = [
    ("Tom has 3 apples and buys 4 more. How many apples does Tom have?", "7",
     ["apples apples", "Tom has", "<think>3 + 4</think> 6", "<think>3 + 4 = 7</think> 7", "<think>3+4=7</think> 7"]),
    ("A box holds 5 eggs. How many eggs are in 3 boxes?", "15",
     ["eggs eggs boxes", "5 eggs", "<think>5*3</think> 15", "<think>5*3=15</think> 15", "<think>5*3=15</think> 15"]),
]


def fake_results() -> dict[str, Any]:
    """An evaluate ``results`` dict shaped like the real one: five stages in order, the reward
    model's own metrics first (as ``run_evaluate`` inserts it), some metrics missing early on."""
    rm = {"pairwise_accuracy": 0.87, "accuracy.rude": 1.0, "pairs.rude": 5.0,
          "accuracy.wrong.arithmetic": 0.4, "pairs.wrong.arithmetic": 10.0}
    results: dict[str, Any] = {"reward_model": {"metrics": rm, "checkpoint_uri": "x"}}
    ppl = [2051.3, 14.2, 11.8, 12.1, 12.4]
    comp = [0.0, 0.03, 0.81, 0.84, 0.86]
    for i, stage in enumerate(STAGES):
        metrics: dict[str, float] = {
            "perplexity": ppl[i], "heldout_loss": math.log(ppl[i]), "heldout_tokens": 4096.0,
            "bigram_validity": [0.02, 0.71, 0.74, 0.73, 0.72][i],
            "instruct.compliance": comp[i], "instruct.accuracy": comp[i] * 0.7,
            "instruct.acc.arithmetic": [0.0, 0.0, 0.41, 0.44, 0.62][i],
            "instruct.acc.capital": [0.0, 0.05, 0.9, 0.92, 0.93][i],
            "instruct.acc.reverse": [0.0, 0.0, 0.35, 0.37, 0.36][i],
            "reason.pass_at_1": [0.0, 0.0, 0.12, 0.14, 0.31][i],
            "reason.pass_at_k": [0.0, 0.02, 0.3, 0.33, 0.52][i],
            "reason.pass_at_1.d1": [0.0, 0.0, 0.25, 0.27, 0.55][i],
            "reason.pass_at_1.d2": [0.0, 0.0, 0.09, 0.1, 0.28][i],
            "reason.pass_at_1.d3": [0.0, 0.0, 0.02, 0.04, 0.1][i],
        }
        if stage != "init":  # the random model's preference numbers are left out: shown as "–"
            metrics.update({"pref.rm_score": [0, -1.2, 0.4, 1.1, 0.9][i],
                            "pref.win_rate_rm_vs_sft": [0, 0.1, 0.5, 0.68, 0.63][i],
                            "pref.kl_to_sft": [0, 3.0, 0.0, 0.21, 0.35][i]})
        results[stage] = {
            "metrics": metrics,
            "checkpoint_uri": f"file:///runs/r/checkpoints/{stage}",
            "samples": [{"prompt": p, "completion": c[i]} for p, c in CONTINUATIONS.items()],
            "instruction_samples": [
                {"family": f, "prompt": p, "reply": r[i], "expected": e} for f, p, e, r in INSTRUCTIONS
            ],
            "reasoning_samples": [
                {"prompt": p, "reply": r[i], "answer": a, "correct": r[i].endswith(" " + a)} for p, a, r in PROBLEMS
            ],
            "preference_samples": [
                {"prompt": "Say something kind about bakers.", "reply": ["x x", "bakers bakers", "Bakers are kind.",
                 "Bakers make warm bread for everyone.", "Bakers are kind."][i], "sft_reply": "Bakers are kind."},
                {"prompt": "Tell me <b>everything</b> | now", "reply": "<script>alert(1)</script> & done",
                 "sft_reply": "ok"},
            ],
        }
    return results


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module (creating one takes seconds): (config, tracker).
    ``mlflow.set_tracking_uri`` (called by ``Tracker``) exports MLFLOW_TRACKING_URI, which
    ``resolve_tracking_uri`` prefers over the storage root; cleared so this module gets its own."""
    before = os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = load_config("tiny", [f"storage.root={tmp_path_factory.mktemp('runs')}"])
    yield cfg, Tracker(cfg)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _curve(n: int, start: float, end: float, wiggle: float = 0.05) -> list[float]:
    return [end + (start - end) * math.exp(-4 * i / n) + wiggle * math.sin(i) for i in range(n)]


FAKE_CURVES: dict[str, dict[str, list[float]]] = {
    "pretrain": {"train_loss": _curve(40, 7.6, 2.6), "lr": [min(1, i / 5) * 3e-3 for i in range(40)],
                 "tokens_per_s": [9000 + 100 * math.sin(i) for i in range(40)]},
    "sft": {"loss": _curve(30, 3.2, 1.1), "learning_rate": [1e-3] * 30, "grad_norm": _curve(30, 4, 1)},
    "preference": {"reward/loss": _curve(20, 0.69, 0.35), "ppo/score_mean": _curve(25, -0.8, 1.1),
                   "ppo/kl": [0.01 * i for i in range(25)], "ppo/reply_length_mean": _curve(25, 30, 14),
                   "ppo/policy_loss": _curve(25, 0.1, -0.02), "ppo/value_loss": _curve(25, 1.5, 0.3)},
    "rlvr": {"loss": _curve(30, 0.05, 0.01), "reward": _curve(30, 0.1, 0.6), "kl": [0.002 * i for i in range(30)],
             "completions/mean_length": _curve(30, 38, 22), "rewards/correct/mean": _curve(30, 0.05, 0.55)},
}


def curves_of(fake: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """What ``stage_curves`` should read back for histories logged at steps 1, 2, ..."""
    return {stage: {k: list(enumerate(v, 1)) for k, v in sorted(series.items())} for stage, series in fake.items()}


DECISION = {
    "promoted": False, "model_name": "fromscratch", "alias": "champion", "version": "4", "champion_version": "3",
    "reason": "reason.pass_at_1: candidate 0.31 < required 0.35",
    "checks": [{"metric": "reason.pass_at_1", "direction": "max", "margin": 0.01, "candidate": 0.31,
                "champion": 0.34, "required": 0.35, "passed": False, "note": ""}],
}


@pytest.fixture(scope="module")
def card():
    """One card for the module (plotting is the slow part): every stage, every curve group."""
    return build_report_card(fake_results(), curves_of(FAKE_CURVES), DECISION, "r1")


def log_fake_run(tracker: Tracker, run_id: str, fake: dict[str, dict[str, list[float]]] = FAKE_CURVES) -> dict[str, str]:
    """A pipeline run in MLflow: parent + one child run per stage with metric histories (and one
    single-valued summary metric, which is not a curve). Returns stage → MLflow run id."""
    from mlflow.entities import Metric

    parent = tracker.pipeline_run(run_id)
    ids = {}
    for stage in ("data_prep", "pretrain", "sft", "preference", "rlvr", "evaluate"):
        ids[stage] = tracker.stage_run(parent, run_id, stage)
        for key, values in fake.get(stage, {}).items():
            tracker.client.log_batch(ids[stage], metrics=[Metric(key, v, 1000 + s, s + 1) for s, v in enumerate(values)])
        tracker.log_metrics(ids[stage], {f"{stage}.fit_seconds": 12.5})
        tracker.end_run(ids[stage], ok=True)
    return ids


def _sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^#{2,3} ", markdown, flags=re.MULTILINE)
    return {p.split("\n", 1)[0]: p for p in parts[1:]}


# -- tests ------------------------------------------------------------------------------------
def test_metric_groups_and_stage_order():
    assert [metric_group(k) for k in ("train_loss", "reward/loss", "ppo/value_loss")] == ["loss"] * 3
    assert [metric_group(k) for k in ("ppo/score_mean", "reward", "rewards/correct/mean")] == ["reward"] * 3
    assert [metric_group(k) for k in ("ppo/kl", "kl", "ppo/approx_kl")] == ["KL"] * 3
    assert metric_group("completions/mean_length") == metric_group("ppo/reply_length_mean") == "reply length"
    assert [metric_group(k) for k in ("learning_rate", "reward/learning_rate", "reward_std")] == ["other"] * 3
    # a results file written with sorted keys still reads in pipeline order
    shuffled = {k: {"metrics": {}} for k in sorted(["rlvr", "init", "sft", "pretrain", "ppo", "reward_model"])}
    assert stages(shuffled) == ["init", "pretrain", "sft", "ppo", "rlvr"]


def test_a_retraining_run_starts_its_card_with_the_checkpoint_it_continued_from():
    results = fake_results()
    results = {("start" if k == "init" else k): v for k, v in sorted(results.items())}
    results["start"]["checkpoint_uri"] = "s3://b/runs/old/checkpoints/rlvr"
    card = build_report_card(results, {}, None, "retrain")
    assert stages(results)[0] == "start"
    assert "continued from (s3://b/runs/old/checkpoints/rlvr" in card.markdown
    assert "| start |" in card.markdown


def test_report_card_from_results_and_mlflow_curves(store, tmp_path, card):
    _, tracker = store
    ids = log_fake_run(tracker, "r1")
    # a step logged twice (a resumed attempt) keeps its latest value
    tracker.client.log_metric(ids["sft"], "loss", 9.0, timestamp=5000, step=3)
    curves = stage_curves(tracker.client, tracker.experiment_id, "r1")
    expected = curves_of(FAKE_CURVES)
    expected["sft"]["loss"][2] = (3, 9.0)
    assert curves == expected  # run order; single-valued summaries (fit_seconds) are no curves
    assert list(curves) == ["pretrain", "sft", "preference", "rlvr"]
    # ``card`` was built from exactly these curves (bar the re-logged point)

    # plots: one per group, real PNGs
    assert list(card.images) == ["curves-loss.png", "curves-reward.png", "curves-kl.png",
                                 "curves-reply-length.png", "curves-other.png"]
    assert all(png.startswith(PNG) and len(png) > 5000 for png in card.images.values())

    md = _sections(card.markdown)
    metrics = md["Metrics"]
    assert "| metric | key | init | pretrain | sft | ppo | rlvr |" in metrics
    row = {line.split(" | ")[1]: line for line in metrics.splitlines() if line.startswith("| ")}
    assert row["perplexity"].endswith("| 2051 | 14.2 | 11.8 | 12.1 | 12.4 |")
    assert row["pref.rm_score"].split(" | ")[2] == "–"  # init has no reward-model score
    for key in ("instruct.compliance", "instruct.acc.arithmetic", "instruct.acc.reverse", "pref.win_rate_rm_vs_sft",
                "reason.pass_at_1", "reason.pass_at_k", "reason.pass_at_1.d1", "reason.pass_at_1.d3"):
        assert key in row, key
    keys = list(row)
    assert keys.index("instruct.accuracy") < keys.index("instruct.acc.arithmetic") < keys.index("pref.rm_score")
    assert keys.index("reason.pass_at_1") < keys.index("reason.pass_at_1.d1") < keys.index("reason.pass_at_1.d2")
    assert "heldout_tokens" not in card.markdown
    assert "pairwise accuracy 0.87" in card.markdown
    assert "| wrong: arithmetic | 10 | 0.4 |" in card.markdown and "| rude | 5 | 1 |" in card.markdown
    assert "pref.kl_to_sft" in md["All other metrics"] and "bigram_validity" in md["All other metrics"]

    # replies side by side: the first data column is the random model's gibberish
    text = md["Text continuation"]
    assert "| prompt | init | pretrain | sft | ppo | rlvr |" in text
    assert f"| Mira lives in | {GIBBERISH} | Ashford. Mira is a baker. |" in text
    assert "| ✗ <think>3 + 4</think> 6 |" in md["Reasoning"].replace("&lt;", "<").replace("&gt;", ">")
    assert "| ✓ <think>3+4=7</think> 7 |" in md["Reasoning"].replace("&lt;", "<").replace("&gt;", ">")
    assert "Tell me <b>everything</b> \\| now" in md["Preference prompts"].replace("&lt;", "<").replace("&gt;", ">")
    assert "Not promoted" in md["Promotion"] and "0.34" in md["Promotion"]
    for name in card.images:
        assert f"]({name})" in card.markdown

    # HTML: self-contained (no external resource), escaped, plots embedded
    page = card.html
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; done" in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(card.images) and base64.b64decode(embedded[0]).startswith(PNG)

    # written beside each other and logged to the evaluate run
    out = tmp_path / "card"
    paths = publish_report_card(card, str(out), tracker.client, ids["evaluate"])
    assert Path(paths["html"]).read_text() == page
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.md", "report.html", *card.images])
    logged = {a.path for a in tracker.client.list_artifacts(ids["evaluate"], "report_card")}
    assert {"report_card/report.html", "report_card/report.md", "report_card/curves-loss.png"} <= logged


def test_cli_report_rebuilds_the_card_from_mlflow_alone(store, tmp_path, capsys):
    from pipelines.cli import main

    cfg, tracker = store
    ids = log_fake_run(tracker, "r2", {"pretrain": {"train_loss": FAKE_CURVES["pretrain"]["train_loss"]}})
    tracker.log_text(ids["evaluate"], json.dumps(fake_results(), indent=2), "results.json")
    notes = ["SFT data: the preference prompts with their chosen replies (data.instructions.fallback=chosen_replies)"]
    tracker.log_text(ids["evaluate"], json.dumps(notes), "data_notes.json")
    record_decision(tracker.client, ids["evaluate"], {
        "promoted": True, "model_name": "fromscratch", "alias": "champion", "version": "1",
        "reason": "first candidate: no 'champion' yet", "checks": [],
    })
    out = tmp_path / "rebuilt"
    assert main(["report", "r2", "--set", f"storage.root={cfg.storage.root}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed
    md = (out / "report.md").read_text()
    assert "Promoted: fromscratch v1 is now 'champion'" in md
    assert "| metric | key | init | pretrain | sft | ppo | rlvr |" in md
    assert "## Data" in md and notes[0] in md  # the Data section comes back too
    assert (out / "curves-loss.png").read_bytes().startswith(PNG)

    assert main(["report", "no-such-run", "--set", f"storage.root={cfg.storage.root}"]) == 1
    assert "no evaluate stage" in capsys.readouterr().err

    # the end-of-run summary of `fromscratch run` reads the same records
    summary = "\n".join(summary_lines(tracker, "r2", str(tmp_path / "r2")))
    assert "| perplexity, held-out text (lower is better) | perplexity | 2051 |" in summary
    assert re.search(r"^  pretrain +\d+s$", summary, flags=re.MULTILINE), summary
    assert "promotion:   fromscratch v1 promoted to 'champion' — first candidate" in summary


def screenshot_report(html_path: Path, png_path: Path) -> dict[str, Any]:
    """Open the page in headless Chromium, screenshot it whole; what the page shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(html_path.resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(png_path), full_page=True)
            return {
                "title": page.title(),
                "metric_rows": page.locator("table.metrics").first.locator("tbody tr").count(),
                "metric_header": page.locator("table.metrics").first.locator("th").all_inner_texts(),
                "images": page.eval_on_selector_all(
                    "img", "imgs => imgs.map(i => ({w: i.naturalWidth, h: i.naturalHeight, done: i.complete}))"
                ),
                "alerts": page.evaluate("document.body.innerText.includes('<script>alert(1)</script>')"),
                "errors": errors,
            }
        finally:
            browser.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (Debian package 'chromium')")
def test_html_report_renders_in_chromium(tmp_path, card):
    html_path = tmp_path / "report.html"
    html_path.write_text(card.html)
    shot = tmp_path / "report.png"
    seen = screenshot_report(html_path, shot)
    assert seen["title"] == "fromscratch report card — run r1"
    assert seen["metric_header"][:4] == ["metric", "key", "init", "pretrain"]
    assert seen["metric_rows"] >= 12
    assert len(seen["images"]) == len(card.images) == 5
    assert all(img["done"] and img["w"] > 0 and img["h"] > 0 for img in seen["images"]), seen["images"]
    assert seen["alerts"]  # the model's "<script>" reply is shown as text, not run
    assert not seen["errors"]
    assert shot.read_bytes().startswith(PNG)
    if keep := os.environ.get("FROMSCRATCH_KEEP_SCREENSHOT"):  # a copy for a person to look at
        shutil.copy(shot, keep)
