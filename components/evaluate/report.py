"""The evaluation results as tables: which rows and columns, how values are shown, and the one
Markdown and one HTML writer for them.

Tables are built once as plain text cells (``Table``) and rendered twice, so the Markdown card
and the HTML card can never disagree about a number. Metric tables put metrics in rows and
stages in columns: a run has a handful of stages but a few dozen metrics (one per instruction
family and per difficulty), and a tall table stays readable where a wide one does not.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from components.evaluate.intervals import is_interval_key

MISSING = "–"
REPLY_CHARS = 160  # a reply cell longer than this is cut (the full text is in results.json)

# (key, label) of the headline rows, in order; ``instruct.acc.<family>`` and
# ``reason.pass_at_1.d<N>`` rows are inserted after their group's overall figure.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("perplexity", "perplexity, held-out text (lower is better)"),
    ("next_token.entropy", "next-token entropy on held-out text (nats)"),
    ("next_token.kl_to_previous", "KL(stage || stage before), next token on held-out text (nats)"),
    ("copy.score", "in-context copying (0: none, 1: perfect)"),
    ("instruct.compliance", "instruction compliance"),
    ("instruct.accuracy", "instruction accuracy, all families"),
    ("pref.rm_score", "reward-model score"),
    ("pref.win_rate_rm_vs_sft", "win rate vs SFT (reward model)"),
    ("pref.win_rate_oracle_vs_sft", "win rate vs SFT (oracle)"),
    ("reason.pass_at_1", "reasoning pass@1"),
    ("reason.pass_at_k", "reasoning pass@k"),
)
PASS_K_LABEL = "reasoning pass@{k}, unbiased from n={n} samples"
NOT_SHOWN = {"heldout_tokens"}
# (key, label) of the rows of the "what each stage bought" table: paired per-item changes
CHANGES: tuple[tuple[str, str], ...] = (
    ("change.reason.pass_at_1", "reasoning pass@1"),
    ("change.instruct.compliance", "instruction compliance"),
    ("change.instruct.accuracy", "instruction accuracy"),
    ("change.heldout_loss", "held-out loss, per block (lower is better)"),
)


@dataclass
class Table:
    """Header and rows of plain-text cells; renderers do all escaping."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


STAGE_ORDER = ("init", "start", "pretrain", "sft", "preference", "ppo", "dpo", "rlvr")


def stages(results: dict[str, Any]) -> list[str]:
    """Checkpoint names in pipeline order (``reward_model`` is not a stage). Known stages sort
    by ``STAGE_ORDER``, so a results file written with sorted keys still reads init → rlvr;
    unknown names keep their place after them."""
    names = [name for name, value in results.items() if name != "reward_model" and isinstance(value, dict)]
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(STAGE_ORDER)), names.index(n)))


def fmt(value: Any) -> str:
    """4 significant digits; ``–`` for a metric a stage does not have."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_metric(metrics: dict[str, Any], key: str) -> str:
    """``fmt`` of ``metrics[key]``, followed by its 95 % interval where the evaluation computed
    one (``0.95 [0.93, 0.97]``): a reader comparing two stages sees whether the gap is noise."""
    show = _signed if key.startswith("change.") else fmt
    text = show(metrics.get(key))
    low, high = metrics.get(f"{key}.ci_low"), metrics.get(f"{key}.ci_high")
    if key in metrics and low is not None and high is not None:
        text += f" [{show(low)}, {show(high)}]"
    return text


def _signed(value: Any) -> str:
    """A change: always with its sign, so +0.15 and -0.15 cannot be mistaken."""
    return f"{value:+.4g}" if isinstance(value, float) else fmt(value)


def metric_names(results: dict[str, Any]) -> set[str]:
    """Every metric key that at least one stage has."""
    return {k for name in stages(results) for k in results[name].get("metrics", {})}


def change_keys(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of the ``CHANGES`` rows that at least one stage has."""
    present = metric_names(results)
    return [(key, label) for key, label in CHANGES if key in present]


def _difficulty(key: str) -> int:
    match = re.search(r"\.d(\d+)$", key)
    return int(match.group(1)) if match else 0


def headline_keys(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of the headline rows that at least one stage has, per-family accuracy and
    per-difficulty pass@1 included."""
    present = metric_names(results)
    families = sorted(k for k in present if k.startswith("instruct.acc."))
    levels = sorted((k for k in present if re.fullmatch(r"reason\.pass_at_1\.d\d+", k)), key=_difficulty)
    rows: list[tuple[str, str]] = []
    for key, label in HEADLINE:
        if key == "pref.rm_score" and families:  # families follow the overall accuracy
            rows += [(k, f"accuracy: {k.removeprefix('instruct.acc.')}") for k in families]
        if key == "reason.pass_at_k":
            label = pass_k_label(results) or label
        if key in present:
            rows.append((key, label))
        if key == "reason.pass_at_1":
            rows += [(k, f"reasoning pass@1, difficulty {_difficulty(k)}") for k in levels]
    return rows


def pass_k_label(results: dict[str, Any]) -> str | None:
    """``reasoning pass@4, unbiased from n=8 samples`` from the k and n the evaluation recorded."""
    for name in stages(results):
        metrics = results[name].get("metrics", {})
        if metrics.get("reason.pass_k"):
            return PASS_K_LABEL.format(k=int(metrics["reason.pass_k"]), n=int(metrics.get("reason.pass_n", 0)))
    return None


def metric_table(results: dict[str, Any], keys: list[tuple[str, str]]) -> Table:
    """Rows = metrics (label, key), columns = stages; missing values shown as ``–``."""
    names = stages(results)
    table = Table(["metric", "key", *names])
    for key, label in keys:
        table.rows.append([label, key, *(fmt_metric(results[n].get("metrics", {}), key) for n in names)])
    return table


def other_metric_keys(results: dict[str, Any]) -> list[tuple[str, str]]:
    """Every metric not in the headline table (bigram validity, KL to SFT, ...); intervals are
    shown beside their metric, not as rows of their own."""
    shown = {k for k, _ in headline_keys(results)} | NOT_SHOWN
    keys = sorted({
        k for k in metric_names(results)
        if not is_interval_key(k) and not k.startswith(("change.", "bench."))  # bench.*: their own table
    } - shown)
    return [(k, k) for k in keys]


def reward_model_table(metrics: dict[str, float]) -> Table | None:
    """The reward model's accuracy per kind of pair (``accuracy.<group>`` / ``pairs.<group>``
    from ``reward_model_metrics``); None for results that have only the overall figure."""
    groups = sorted(k.removeprefix("accuracy.") for k in metrics if k.startswith("accuracy."))
    if not groups:
        return None
    table = Table(["pairs that test", "pairs", "accuracy"])
    for group in groups:
        count = metrics.get(f"pairs.{group}")
        table.rows.append([group.replace(".", ": "), fmt(int(count)) if count is not None else MISSING,
                           fmt(metrics[f"accuracy.{group}"])])
    return table


def clip(text: str, limit: int = REPLY_CHARS) -> str:
    """One line, at most ``limit`` characters; an empty reply says so."""
    text = " ".join(str(text).split())
    if not text:
        return "(empty)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _aligned(results: dict[str, Any], suite: str, key: str = "prompt") -> tuple[list[str], dict[str, list[dict]]]:
    """The prompts of one sample suite in first-seen order, and each stage's rows by prompt.
    Every stage answers the same fixed prompts, so rows line up; a stage without one shows ``–``."""
    order: list[str] = []
    by_stage: dict[str, dict[str, dict]] = {}
    for name in stages(results):
        rows = results[name].get(suite) or []
        by_stage[name] = {row[key]: row for row in rows}
        order += [row[key] for row in rows if row[key] not in order]
    return order, by_stage  # type: ignore[return-value]


def reply_tables(results: dict[str, Any], max_rows: int = 8) -> list[tuple[str, str, Table]]:
    """(title, explanation, table) per sample suite: the same prompts, each stage's reply side by
    side, stages in order (so the first reply column is the random-init model's)."""
    names = stages(results)
    out: list[tuple[str, str, Table]] = []

    def cell(row: dict | None, field_name: str, mark: bool = False) -> str:
        if row is None:
            return MISSING
        text = clip(row.get(field_name, ""))
        if mark and "correct" in row:
            return ("✓ " if row["correct"] else "✗ ") + text
        return text

    prompts, rows = _aligned(results, "samples")
    if prompts:
        table = Table(["prompt", *names])
        for p in prompts[:max_rows]:
            table.rows.append([clip(p), *(cell(rows[n].get(p), "completion") for n in names)])
        out.append(("Text continuation", "Fixed prompts, greedy decoding, no chat template.", table))

    prompts, rows = _aligned(results, "instruction_samples")
    if prompts:
        table = Table(["family", "prompt", "expected", *names])
        for p in prompts[:max_rows]:
            first = next(rows[n][p] for n in names if p in rows[n])
            table.rows.append(
                [first.get("family", ""), clip(p), clip(str(first.get("expected", ""))),
                 *(cell(rows[n].get(p), "reply") for n in names)]
            )
        out.append(("Instructions", "Held-out instructions (one per family), greedy, chat template.", table))

    prompts, rows = _aligned(results, "reasoning_samples")
    if prompts:
        table = Table(["problem", "answer", *names])
        for p in prompts[:max_rows]:
            first = next(rows[n][p] for n in names if p in rows[n])
            table.rows.append([clip(p), clip(str(first.get("answer", ""))),
                               *(cell(rows[n].get(p), "reply", mark=True) for n in names)])
        out.append(("Reasoning", "Held-out problems with a verifiable answer; ✓ = verified correct.", table))

    prompts, rows = _aligned(results, "preference_samples")
    if prompts:
        table = Table(["prompt", "SFT baseline", *names])
        for p in prompts[:max_rows]:
            first = next(rows[n][p] for n in names if p in rows[n])
            table.rows.append([clip(p), clip(first.get("sft_reply", "")), *(cell(rows[n].get(p), "reply") for n in names)])
        out.append(("Preference prompts", "Sampled replies, judged against the SFT model's reply.", table))
    return out


# -- writers ----------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |", "|---" * len(table.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def html_table(table: Table, css_class: str = "") -> str:
    """Every cell escaped; ``–`` cells get class ``missing`` so they read as absent, not zero."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = "".join(
            f'<td class="missing">{html.escape(c)}</td>' if c == MISSING else f"<td>{html.escape(c)}</td>" for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    cls = f' class="{html.escape(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
