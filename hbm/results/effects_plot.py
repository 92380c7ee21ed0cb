"""Drawing conditional effects: one panel per predictor, the expected response with 50% and 90% bands.

    plot_effects([EffectPanel(frame, "price", "numeric", None, "price")], "effects.png",
                 title="Expected units (poisson, log link)", ylabel="E[units]")

A numeric predictor's panel is a line (the posterior mean) over its grid, with the 50% and 90%
intervals as bands; a factor's panel is a point per level with the 50% interval as a thick bar
and the 90% interval as a thin one. With ``by``, one line (or one dodged point) per level of that
factor, in its own colour. The frames are what :mod:`hbm.pipeline.effects` computes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_BY_LEVELS = 10   # colours that stay apart


@dataclass
class EffectPanel:
    frame: pd.DataFrame   # the term's column, the by column if any, mean, q5, q25, q50, q75, q95
    term: str             # the column varied
    kind: str             # "numeric" or "factor"
    by: str | None        # the column drawn one line per level, or None
    xlabel: str


def plot_effects(panels: list[EffectPanel], target, *, title: str, ylabel: str, note: str | None = None) -> None:
    """Draw ``panels`` into ``target`` (a path or a binary file), PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    k = len(panels)
    cols = min(3, k)
    rows = -(-k // cols)
    widths = [_width(p) for p in panels]
    fig = Figure(figsize=(max(max(widths) * cols, 6.4), 3.7 * rows + 0.7), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        (_numeric if panel.kind == "numeric" else _factor)(ax, panel, legend=i == 0 or panel.by is not None)
        ax.set_xlabel(panel.xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)   # every panel: their scales differ
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25, lw=0.5)
    fig.suptitle(title, fontsize=10)
    if note:
        fig.supxlabel(note, fontsize=7.5, color="0.3")
    fig.savefig(target, format="png")


def _width(panel: EffectPanel) -> float:
    if panel.kind == "numeric":
        return 4.8
    n = panel.frame[panel.term].nunique()
    return float(np.clip(1.2 + 0.45 * n * (1 + 0.3 * (panel.by is not None)), 4.8, 9.0))


def _groups(panel: EffectPanel):
    if panel.by is None:
        return [(None, panel.frame, "C0")]
    levels = list(dict.fromkeys(panel.frame[panel.by]))
    return [(lv, panel.frame[panel.frame[panel.by] == lv], f"C{j % MAX_BY_LEVELS}") for j, lv in enumerate(levels)]


def _numeric(ax, panel: EffectPanel, legend: bool = True) -> None:
    groups = _groups(panel)
    fade = 1.0 if len(groups) <= 3 else 0.6     # many lines: lighter bands, the lines stay apart
    for level, g, color in groups:
        x = g[panel.term].to_numpy(float)
        ax.fill_between(x, g["q5"], g["q95"], color=color, alpha=0.15 * fade, lw=0,
                        label="90% interval" if level is None else None)
        ax.fill_between(x, g["q25"], g["q75"], color=color, alpha=0.3 * fade, lw=0,
                        label="50% interval" if level is None else None)
        ax.plot(x, g["mean"], color=color, lw=1.8, label="posterior mean" if level is None else f"{level}")
    if legend:
        ax.legend(fontsize=7, loc="best", title=panel.by if panel.by else None, title_fontsize=7)
    if panel.by is not None:
        ax.text(0.99, 0.01, "bands: 50% and 90% intervals", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=6.5, color="0.35")


def _factor(ax, panel: EffectPanel, legend: bool = True) -> None:
    levels = list(dict.fromkeys(panel.frame[panel.term]))
    pos = {lv: i for i, lv in enumerate(levels)}
    groups = _groups(panel)
    step = 0.7 / max(len(groups), 1)
    for j, (level, g, color) in enumerate(groups):
        x = np.array([pos[v] for v in g[panel.term]], float) + (j - (len(groups) - 1) / 2) * step
        ax.vlines(x, g["q5"], g["q95"], color=color, lw=1.2, label="90% interval" if level is None else None)
        ax.vlines(x, g["q25"], g["q75"], color=color, lw=5, alpha=0.55,
                  label="50% interval" if level is None else None)
        ax.plot(x, g["mean"], "o", color=color, ms=5, mec="white", mew=0.8,
                label="posterior mean" if level is None else f"{level}")
    ax.set_xticks(range(len(levels)))
    long = len(levels) > 8 or max(len(str(v)) for v in levels) > 6
    ax.set_xticklabels([_short(str(v)) for v in levels], rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_xlim(-0.6, len(levels) - 0.4)
    if legend:
        ax.legend(fontsize=7, loc="best", title=panel.by if panel.by else None, title_fontsize=7)
    if panel.by is not None:
        ax.text(0.99, 0.01, "bars: 50% and 90% intervals", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=6.5, color="0.35")


def _short(s: str, n: int = 18) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
