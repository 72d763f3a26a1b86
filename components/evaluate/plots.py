"""Training curves as PNG images, one figure per group (loss, reward, KL, reply length, other).

Within a figure each stage gets its own panel: stages count steps differently (pre-training
steps, PPO iterations, GRPO steps) and their values live on different scales, so one shared
axis would flatten all but the largest curve. Rendered with matplotlib's Agg backend (no
display needed) at a fixed size, so a card looks the same wherever it is built.
"""

from __future__ import annotations

import io
import math
import re

from components.evaluate.curves import Curve, Curves, grouped

PANELS_PER_ROW = 4
MAX_OTHER_PANELS = 16


def plot_name(group: str) -> str:
    """``curves-reply-length.png`` for group ``reply length``."""
    return "curves-" + re.sub(r"[^a-z0-9]+", "-", group.lower()).strip("-") + ".png"


def _label(stage: str, key: str) -> str:
    # "ppo/kl" on the preference panel reads better as "ppo: kl"
    return key.replace("/", ": ", 1) if "/" in key and not key.startswith(stage) else key


def _render(panels: list[tuple[str, dict[str, Curve]]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(PANELS_PER_ROW, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    for ax, (panel_title, series) in zip(axes.flat, panels):
        for key, curve in series.items():
            steps, values = zip(*curve)
            ax.plot(steps, values, label=key, linewidth=1.6, marker="o" if len(curve) <= 12 else None, markersize=3)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def curve_plots(curves: Curves) -> dict[str, bytes]:
    """File name → PNG bytes, one per group that has curves, in group order."""
    out: dict[str, bytes] = {}
    for group, by_stage in grouped(curves).items():
        if group == "other":  # unrelated scales (lr, grad norm, throughput): one panel per metric
            panels = [(f"{stage}: {key}", {key: c}) for stage, series in by_stage.items() for key, c in series.items()]
            panels = panels[:MAX_OTHER_PANELS]
        else:
            panels = [(stage, {_label(stage, k): c for k, c in series.items()}) for stage, series in by_stage.items()]
        out[plot_name(group)] = _render(panels, f"training curves: {group}")
    return out
