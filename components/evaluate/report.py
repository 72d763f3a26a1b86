"""Evaluation results as a Markdown table and as JSON (per checkpoint, per metric)."""

from __future__ import annotations

from typing import Any

HEADLINE = (
    "perplexity", "heldout_loss", "bigram_validity", "instruct.compliance", "instruct.accuracy",
    "pairwise_accuracy", "pref.rm_score", "pref.oracle_score", "pref.win_rate_rm_vs_sft",
    "pref.win_rate_oracle_vs_sft", "pref.kl_to_sft",
)


def markdown_report(results: dict[str, dict[str, Any]]) -> str:
    """A stage × metric table plus each checkpoint's samples."""
    names = list(results)
    metrics = [m for m in HEADLINE if any(m in results[n]["metrics"] for n in names)]
    extra = sorted({m for n in names for m in results[n]["metrics"]} - set(metrics) - {"heldout_tokens"})
    columns = metrics + extra
    lines = ["# Evaluation", "", "| checkpoint | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for name in names:
        values = results[name]["metrics"]
        cells = [_fmt(values.get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Instruction following (held-out prompts, greedy)", ""]
    for name in names:
        rows = results[name].get("instruction_samples", [])
        if not rows:
            continue
        lines.append(f"### {name}")
        for row in rows:
            reply = row["reply"].replace("\n", " ").replace("|", "\\|")
            lines.append(f"- *{row['family']}* **{row['prompt']}** → {reply}  (expected: {row['expected']})")
        lines.append("")
    rows = [(n, r) for n in names for r in results[n].get("preference_samples", [])]
    if rows:
        lines += ["", "## Preference (held-out prompts, sampled replies vs the SFT model's)", ""]
        for name, row in rows:
            lines.append(f"- *{name}* **{row['prompt']}** → {row['reply']}  (SFT: {row['sft_reply']})")
    lines += ["", "## Samples (greedy)", ""]
    for name in names:
        lines.append(f"### {name}")
        for sample in results[name].get("samples", []):  # (the reward model has none)
            completion = sample["completion"].replace("\n", " ").replace("|", "\\|")
            lines.append(f"- **{sample['prompt']}** → {completion}")
        lines.append("")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
