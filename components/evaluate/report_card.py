"""The report card of a pipeline run: what each stage changed, in one page.

Built from the evaluate stage's ``results`` (checkpoint → metrics and samples, in stage order)
and the training curves in MLflow, with the promotion decision when there is one. It is
assembled once as a list of blocks (headings, paragraphs, ``report.Table``s, images) and
rendered twice:

- Markdown, with the plots as PNG files beside it (for the run's storage folder and git-style
  viewers);
- one self-contained HTML file (inline CSS, plots as base64 data URIs, every text escaped), so
  it can be mailed, attached to the KFP run as a visualisation, or opened from MLflow.

The same function serves the end of ``evaluate`` and ``fromscratch report <run-id>``, which
rebuilds the card from MLflow alone.
"""

from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common import storage
from components.evaluate.curves import Curves
from components.evaluate.next_token import PLOT_NAME as NEXT_TOKEN_PLOT
from components.evaluate.next_token import plot_next_tokens
from components.evaluate.plots import curve_plots
from components.evaluate.report import (
    Table,
    change_keys,
    fmt,
    fmt_metric,
    headline_keys,
    html_table,
    markdown_table,
    metric_table,
    other_metric_keys,
    reply_tables,
    reward_model_table,
    stages,
)

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
ARTIFACT_PATH = "report_card"


# -- blocks ---------------------------------------------------------------------------------
@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str
    css_class: str = ""


@dataclass
class TableBlock:
    table: Table
    css_class: str = ""


@dataclass
class Image:
    name: str
    alt: str


@dataclass
class Details:
    """Collapsed in HTML (long, rarely needed); a plain sub-section in Markdown."""

    summary: str
    blocks: list[Block]


Block = Heading | Para | TableBlock | Image | Details


@dataclass
class ReportCard:
    title: str
    markdown: str
    html: str
    images: dict[str, bytes]  # file name → PNG, referenced by name from the Markdown


MISSING_CHANGE = "–"
NEXT_TOKEN_TEXT = (
    "What the model computes at every position is P(next token | context). For a few fixed prompts, each "
    "checkpoint's most likely next tokens with their probabilities, and the entropy H of the whole distribution: "
    "random init is flat (H near ln |V|), pre-training piles the probability onto the words the corpus allows, and "
    "fine-tuning reshapes it (sharper where a stage trained the reply, not necessarily on plain text). The metrics table gives the same on the held-out text: the mean "
    "next-token entropy and the KL divergence of each stage's next-token distribution from the stage before it."
)


# -- content --------------------------------------------------------------------------------
def promotion_blocks(decision: dict[str, Any]) -> list[Block]:
    """The gate's verdict in one sentence, then its comparisons."""
    name, version = decision.get("model_name", ""), decision.get("version")
    model = f"{name} v{version}" if version else name
    if decision.get("promoted") and decision.get("champion_version") == version:  # evaluate re-ran
        text = f"Promoted: {model} is already '{decision.get('alias')}'"
    elif decision.get("promoted"):
        text = f"Promoted: {model} is now '{decision.get('alias')}' — {decision.get('reason', '')}"
    else:
        text = f"Not promoted: {model} — {decision.get('reason', '')}"
        if decision.get("champion_version"):
            text += f" (the '{decision.get('alias')}' stays version {decision['champion_version']})"
    blocks: list[Block] = [Heading("Promotion"), Para(text, "promoted" if decision.get("promoted") else "held")]
    if decision.get("checks"):
        blocks.append(Para(
            "Each gate metric is compared item by item on the same held-out items: the change is the mean "
            "per-item difference (candidate - champion) with its paired 95 % bootstrap interval, which must "
            "lie above the margin (below minus the margin for a 'min' metric)."
        ))
        table = Table(["gate metric", "direction", "margin", "candidate", "champion", "change [95 % interval]", "passed"])
        for c in decision["checks"]:
            if c.get("change") is not None:
                change = f"{c['change']:+.3g} [{c['ci_low']:+.3g}, {c['ci_high']:+.3g}]"
            else:  # a decision recorded before paired checks (point estimates only)
                change = MISSING_CHANGE if c.get("required") is None else f"required {fmt(c['required'])}"
            table.rows.append([
                c["metric"], c["direction"], f"{c['margin']:+g}", fmt(c["candidate"]), fmt(c["champion"]),
                change, ("yes" if c["passed"] else "NO") + (f" ({c['note']})" if c.get("note") else ""),
            ])
        blocks.append(TableBlock(table))
    return blocks


def votes_sentence(votes: dict[str, Any], rm: dict[str, Any]) -> str:
    """What people's votes did in this run: the snapshot, the new votes, the leak check, and the
    reward model on the newest voted pairs it did not train on."""
    text = (
        f"People's votes: snapshot {votes['digest'][:16]} of {votes['source']} up to vote {votes['watermark']}: "
        f"{votes['num_votes']} votes, {votes['new_votes']} of them new since the run this one continued from "
        f"(vote {votes['previous_watermark']}); {votes.get('leaked_votes_dropped', 0)} votes on held-out prompts "
        f"dropped; {votes.get('train_pairs', 0)} voted pairs trained on, the newest {votes.get('heldout_pairs', 0)} held out."
    )
    if "accuracy.votes" in rm:
        text += (f" The reward model ranks {rm['accuracy.votes']:.0%} of those {int(rm.get('pairs.votes', 0))} "
                 "newest voted pairs the way people voted.")
    return text


def benchmark_blocks(results: dict[str, Any]) -> list[Block]:
    """The standard benchmarks (lm-eval) beside the built-in suites, and the data notes."""
    from components.evaluate.benchmarks import benchmark_rows

    blocks: list[Block] = []
    rows = benchmark_rows(results)
    if rows:
        blocks += [
            Heading("Standard benchmarks (lm-eval)"),
            Para("Published benchmarks scored with lm-evaluation-harness on every checkpoint: accuracy and centered "
                 "accuracy ((acc - chance) / (1 - chance), so random init reads about 0), 95 % intervals in brackets; "
                 "GSM8K only on chat checkpoints; bits per byte of this run's held-out text."),
            TableBlock(metric_table(results, rows), "metrics"),
        ]
    notes = results.get("data_notes")
    if isinstance(notes, list) and notes:
        blocks += [Heading("Data"), *(Para(str(n)) for n in notes)]
    return blocks


def card_blocks(
    results: dict[str, Any], plots: dict[str, bytes], promotion: dict[str, Any] | None
) -> list[Block]:
    names = stages(results)
    blocks: list[Block] = [Para("Stages, in order: " + " → ".join(names) + ". Every checkpoint is measured on the same held-out suites.")]
    if "start" in results:  # retraining: no random init, the run began from an earlier model
        blocks.append(Para(
            f"This run did not start from random weights: 'start' is the checkpoint it continued from "
            f"({results['start'].get('checkpoint_uri', '?')}, pretrain.init_from)."
        ))
    if promotion:
        blocks += promotion_blocks(promotion)
    blocks += [Heading("Metrics"), TableBlock(metric_table(results, headline_keys(results)), "metrics")]
    if NEXT_TOKEN_PLOT in plots:
        blocks += [Heading("The next-token picture"), Para(NEXT_TOKEN_TEXT),
                   Image(NEXT_TOKEN_PLOT, "top next-token probabilities per checkpoint")]
    changes = change_keys(results)
    if changes:
        blocks += [
            Heading("What each stage bought"),
            Para("The change from the stage before, item by item on the same held-out "
                 "prompts, with a paired 95 % interval in brackets. An interval that excludes 0 is a real change, "
                 "not noise."),
            TableBlock(metric_table(results, changes), "metrics"),
        ]
    rm = results.get("reward_model", {}).get("metrics", {})
    if rm:
        blocks.append(Para(
            f"Reward model (judge of the preference suite): pairwise accuracy {fmt_metric(rm, 'pairwise_accuracy')} "
            "on held-out pairs (95 % interval in brackets)."
        ))
        by_group = reward_model_table(rm)
        if by_group is not None:
            blocks += [
                Para("By what a pair tests: why its rejected reply loses, and for wrong answers the task "
                     "(the reward model can only tell a wrong answer from the right one where its backbone knows it)."),
                TableBlock(by_group, "metrics"),
            ]
    votes = results.get("reward_model", {}).get("votes")
    if votes:
        blocks.append(Para(votes_sentence(votes, rm)))
    blocks += benchmark_blocks(results)  # standard benchmarks, then the Data section
    blocks.append(Heading("Training curves"))
    curves = [name for name in plots if name != NEXT_TOKEN_PLOT]
    if curves:
        blocks += [Image(name, name.removesuffix(".png").replace("-", " ")) for name in curves]
    else:
        blocks.append(Para("No training curves were found in MLflow for this run."))
    blocks.append(Heading("Replies, stage by stage"))
    for title, explanation, table in reply_tables(results):
        blocks += [Heading(title, 3), Para(explanation), TableBlock(table, "replies")]
    others = other_metric_keys(results)
    if others:
        table = metric_table(results, others)
        table = Table([table.header[0], *table.header[2:]], [[r[1], *r[2:]] for r in table.rows])  # label = key
        blocks.append(Details("All other metrics", [TableBlock(table, "metrics others")]))
    return blocks


# -- renderers ------------------------------------------------------------------------------
def _md_blocks(blocks: list[Block]) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            lines += [block.text, ""]
        elif isinstance(block, TableBlock):
            lines += [markdown_table(block.table), ""]
        elif isinstance(block, Image):
            lines += [f"![{block.alt}]({block.name})", ""]
        elif isinstance(block, Details):
            lines += [f"## {block.summary}", "", *_md_blocks(block.blocks)]
    return lines


def render_markdown(title: str, blocks: list[Block]) -> str:
    return "\n".join([f"# {title}", "", *_md_blocks(blocks)]).rstrip() + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px auto;
       max-width: 1400px; padding: 0 16px; color: #1d2330; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 4px; } h2 { margin-top: 1.6em; border-bottom: 1px solid #dde; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ccd; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #eef1f7; position: sticky; top: 0; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics td:first-child, table.metrics:not(.others) td:nth-child(2) { text-align: left; }
table.metrics:not(.others) td:nth-child(2) { font-family: monospace; color: #667; font-size: 0.85em; }
table.others td:first-child { font-family: monospace; }
table.replies td { font-family: "DejaVu Sans Mono", monospace; font-size: 0.8em; min-width: 140px; max-width: 300px;
                   word-break: break-word; }
td.missing { color: #aab; text-align: center !important; }
tr:nth-child(even) td { background: #fafbfd; }
p.promoted { background: #e6f6ea; border-left: 4px solid #2e9a4a; padding: 8px 12px; }
p.held { background: #fff4e0; border-left: 4px solid #d08a00; padding: 8px 12px; }
img.curves { max-width: 100%; border: 1px solid #e3e6ee; margin: 6px 0 12px; display: block; }
details summary { cursor: pointer; font-weight: 600; margin: 12px 0; }
"""


def _html_blocks(blocks: list[Block], images: dict[str, bytes]) -> list[str]:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            cls = f' class="{html.escape(block.css_class)}"' if block.css_class else ""
            out.append(f"<p{cls}>{html.escape(block.text)}</p>")
        elif isinstance(block, TableBlock):
            out.append(f'<div class="scroll">{html_table(block.table, block.css_class)}</div>')
        elif isinstance(block, Image):
            data = base64.b64encode(images[block.name]).decode("ascii")
            out.append(f'<img class="curves" alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">')
        elif isinstance(block, Details):
            inner = "\n".join(_html_blocks(block.blocks, images))
            out.append(f"<details><summary>{html.escape(block.summary)}</summary>\n{inner}\n</details>")
    return out


def render_html(title: str, blocks: list[Block], images: dict[str, bytes]) -> str:
    body = "\n".join(_html_blocks(blocks, images))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


# -- entry points ---------------------------------------------------------------------------
def build_report_card(
    results: dict[str, Any],
    curves: Curves | None = None,
    promotion: dict[str, Any] | None = None,
    run_id: str = "",
) -> ReportCard:
    """The card for one pipeline run from its evaluation ``results`` (stage order), its
    training ``curves`` (``curves.stage_curves``) and the promotion decision, if any."""
    title = f"fromscratch report card — run {run_id}" if run_id else "fromscratch report card"
    images = curve_plots(curves or {})
    picture = plot_next_tokens({name: results[name].get("next_token") or [] for name in stages(results)})
    if picture is not None:
        images[NEXT_TOKEN_PLOT] = picture
    blocks = card_blocks(results, images, promotion)
    return ReportCard(title, render_markdown(title, blocks), render_html(title, blocks, images), images)


def _write_local(card: ReportCard, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKDOWN_FILE).write_text(card.markdown, encoding="utf-8")
    (folder / HTML_FILE).write_text(card.html, encoding="utf-8")
    for name, png in card.images.items():
        (folder / name).write_bytes(png)


def publish_report_card(
    card: ReportCard, folder_uri: str, client: Any | None = None, mlflow_run_id: str | None = None
) -> dict[str, str]:
    """Write the card (Markdown, HTML, PNGs side by side) to ``folder_uri`` (any fsspec URI)
    and, given a client and run, log the same files as the run's ``report_card/`` artifacts.
    Returns the URIs of the Markdown and HTML files."""
    with tempfile.TemporaryDirectory(prefix="report-card-") as tmp:
        _write_local(card, Path(tmp))
        storage.upload_dir(tmp, folder_uri)
        if client is not None and mlflow_run_id:
            client.log_artifacts(mlflow_run_id, tmp, ARTIFACT_PATH)
    return {
        "markdown": storage.join(folder_uri, MARKDOWN_FILE),
        "html": storage.join(folder_uri, HTML_FILE),
        "folder": folder_uri,
    }
