"""``hbm compare RUN_A RUN_B``: how far one fit's posterior summaries are from a reference fit's.

Typical use: the same spec and data fitted fast (SVI, RUN_A) and exactly (NUTS, RUN_B). Per
parameter element present in both summaries:

``shift``        ``(mean_A - mean_B) / sd_B``: the difference in means in units of the reference's sd
``width_ratio``  ``(q95 - q5)_A / (q95 - q5)_B``: the ratio of 90% interval widths (1: as wide;
                 0.2: A's intervals are five times too narrow)
``sd_ratio``     ``sd_A / sd_B``

The terminal shows every scalar parameter, one line per vector variable (median and worst
over its elements), the worst elements, and a summary line. The whole table goes to
``compare.csv`` and a picture to ``compare.png``, both in a new directory: ``--out DIR``, by
default ``compare-<A>-vs-<B>`` beside RUN_A (``-2``, ``-3``, ... when the name is taken). The
directory is written under a temporary name and renamed when whole; a finished run is never
changed, an earlier comparison never replaced.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hbm.errors import HbmError
from hbm.io.rundir import load_run, write_run
from hbm.io.rundir import output_dir as new_output_dir

COLUMNS = ("mean_a", "mean_b", "sd_a", "sd_b", "shift", "width_ratio", "sd_ratio")


@dataclass
class Comparison:
    table: pd.DataFrame          # index: parameter; COLUMNS; plus "variable"
    only_a: list[str]
    only_b: list[str]
    label_a: str
    label_b: str
    warnings: list[str]

    def summary(self) -> dict:
        """The figures of the summary line, JSON-able."""
        t = self.table
        z = t["shift"].abs().to_numpy(float)
        w = t["width_ratio"].to_numpy(float)
        okz, okw = np.isfinite(z), np.isfinite(w) & (w > 0)
        out = {"parameters": int(len(t)), "only_a": len(self.only_a), "only_b": len(self.only_b)}
        if okz.any():
            i = int(np.nanargmax(np.where(okz, z, -1)))
            out.update(shift_median=float(np.median(z[okz])), shift_max=float(z[i]), shift_max_at=str(t.index[i]),
                       shift_over_1=int((z[okz] > 1).sum()), shift_over_half=int((z[okz] > 0.5).sum()))
        if okw.any():
            out.update(width_median=float(np.median(w[okw])), width_q05=float(np.quantile(w[okw], 0.05)),
                       width_q95=float(np.quantile(w[okw], 0.95)),
                       width_under_half=int((w[okw] < 0.5).sum()), width_over_2=int((w[okw] > 2).sum()))
        return out

    def summary_line(self) -> str:
        s = self.summary()
        parts = [f"{s['parameters']:,} parameters compared ({self.label_a} vs reference {self.label_b})"]
        if "shift_median" in s:
            parts.append(f"mean shift |A - B| / sd_B: median {s['shift_median']:.2f}, max {s['shift_max']:.2f} "
                         f"at {s['shift_max_at']}, {s['shift_over_1']:,} beyond 1 sd")
        if "width_median" in s:
            parts.append(f"90% width ratio A/B: median {s['width_median']:.2f} "
                         f"(5%-95% of parameters {s['width_q05']:.2f}-{s['width_q95']:.2f}), "
                         f"{s['width_under_half']:,} under 0.5, {s['width_over_2']:,} over 2")
        return "; ".join(parts)


def _variable(name: str) -> str:
    """``log(price)[product=p01]`` -> ``log(price)[product]``; ``factor(period)[2]`` -> ``factor(period)``."""
    i = name.find("[")
    if i <= 0 or not name.endswith("]"):
        return name
    inner = name[i + 1:-1]
    dims = [p.split("=", 1)[0] for p in inner.split(",") if "=" in p]
    return f"{name[:i]}[{','.join(dims)}]" if dims else name[:i]


def compare_summaries(a: pd.DataFrame, b: pd.DataFrame, label_a: str = "A", label_b: str = "B") -> Comparison:
    """The comparison table of two summaries (one row per parameter; mean, sd, q5, q95)."""
    for name, df in (("A", a), ("B", b)):
        missing = [c for c in ("mean", "sd", "q5", "q95") if c not in df.columns]
        if missing:
            raise HbmError(f"the summary of run {name} has no column {missing[0]}", where=f"RUN_{name}")
    common = [n for n in b.index if n in a.index]
    only_a = [n for n in a.index if n not in b.index]
    only_b = [n for n in b.index if n not in a.index]
    if not common:
        raise HbmError(f"runs {label_a} and {label_b} share no parameter",
                       hint="compare two fits of the same spec (say one with engine: svi, one with engine: nuts)")
    A, B = a.loc[common], b.loc[common]
    wa, wb = (A["q95"] - A["q5"]).to_numpy(float), (B["q95"] - B["q5"]).to_numpy(float)
    sb = B["sd"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = (A["mean"].to_numpy(float) - B["mean"].to_numpy(float)) / sb
        shift[sb == 0] = np.nan      # a fixed parameter: nothing to compare
        width = np.where(wb > 0, wa / wb, np.nan)
        sd_ratio = np.where(sb > 0, A["sd"].to_numpy(float) / sb, np.nan)
    table = pd.DataFrame({"variable": [_variable(n) for n in common],
                          "mean_a": A["mean"].to_numpy(float), "mean_b": B["mean"].to_numpy(float),
                          "sd_a": A["sd"].to_numpy(float), "sd_b": sb, "shift": shift,
                          "width_ratio": width, "sd_ratio": sd_ratio},
                         index=pd.Index(common, name="parameter"))
    return Comparison(table, only_a, only_b, label_a, label_b, [])


def compare_runs(run_a, run_b) -> Comparison:
    """Compare two run directories (RUN_B the reference), warning when spec or data differ."""
    ra, rb = load_run(run_a), load_run(run_b)
    cmp = compare_summaries(ra.summary, rb.summary, _label(ra), _label(rb))
    fa, fb = ra.fit_info.get("data") or {}, rb.fit_info.get("data") or {}
    if fa.get("fingerprint") and fb.get("fingerprint") and fa["fingerprint"] != fb["fingerprint"]:
        cmp.warnings.append(f"the runs were fitted to different data (fingerprints {fa['fingerprint']} and "
                            f"{fb['fingerprint']}): differences mix data and method")
    if ra.spec.get("formula") and rb.spec.get("formula") and \
            str(ra.spec["formula"]).replace(" ", "") != str(rb.spec["formula"]).replace(" ", ""):
        cmp.warnings.append(f"the runs fit different formulas: {ra.spec['formula']!r} and {rb.spec['formula']!r}")
    if cmp.only_a or cmp.only_b:
        cmp.warnings.append(f"parameters only in {cmp.label_a}: {len(cmp.only_a):,}, only in {cmp.label_b}: "
                            f"{len(cmp.only_b):,}; compared the {len(cmp.table):,} in both")
    return cmp


def _label(rec) -> str:
    info = rec.fit_info
    eng = info.get("engine") or (rec.spec.get("inference") or {}).get("engine") or "?"
    conv = info.get("convergence") or {}
    guide = conv.get("guide") if eng == "svi" else None
    return f"{rec.path.name} ({eng}{', ' + guide if guide else ''})"


# ---------------------------------------------------------------- text

def _cell(x: float, fmt: str = "{:.3g}") -> str:
    return "nan" if not np.isfinite(x) else fmt.format(x)


def _row_cells(r) -> list[str]:
    """Means and sds of one row at one precision: two significant digits of the smaller sd, so the
    four numbers line up at the decimal point and none shows more digits than the draws support."""
    sds = [x for x in (r.sd_a, r.sd_b) if np.isfinite(x) and x > 0]
    decimals = int(np.clip(1 - np.floor(np.log10(min(sds))), 0, 8)) if sds else 3
    return [_cell(x, f"{{:.{decimals}f}}") for x in (r.mean_a, r.mean_b, r.sd_a, r.sd_b)]


def format_comparison(cmp: Comparison, worst: int = 5) -> str:
    """The terminal table: scalars, one line per vector variable, the worst elements, the summary line."""
    t = cmp.table
    head = ["parameter", "mean A", "mean B", "sd A", "sd B", "shift", "width A/B"]
    rows: list[list[str]] = []
    counts = t["variable"].value_counts()
    done: set[str] = set()
    for name, r in t.iterrows():
        var = r["variable"]
        if counts[var] == 1 and var == name:
            rows.append([name, *_row_cells(r), _cell(r["shift"], "{:+.2f}"), _cell(r.width_ratio, "{:.2f}")])
        elif var not in done:
            done.add(var)
            g = t[t["variable"] == var]
            z, w = g["shift"].abs().to_numpy(float), g["width_ratio"].to_numpy(float)
            rows.append([f"{var} ({len(g):,} values)", "", "", "", "",
                         f"|{_cell(np.nanmedian(z), '{:.2f}')}| max {_cell(np.nanmax(z), '{:.2f}')}"
                         if np.isfinite(z).any() else "nan",
                         f"{_cell(np.nanmedian(w), '{:.2f}')} min {_cell(np.nanmin(w), '{:.2f}')}"
                         if np.isfinite(w).any() else "nan"])
    vec = t[t["variable"].map(counts) > 1]
    worst_rows = []
    if len(vec) > 0 and worst > 0:
        for n in vec["shift"].abs().sort_values(ascending=False).dropna().index[:worst]:
            r = vec.loc[n]
            worst_rows.append([n, *_row_cells(r), _cell(r["shift"], "{:+.2f}"), _cell(r.width_ratio, "{:.2f}")])
    widths = [max(len(h), *(len(r[i]) for r in rows + worst_rows)) for i, h in enumerate(head)]
    widths[0] = min(widths[0], 56)

    def line(cells):
        first = cells[0] if len(cells[0]) <= widths[0] else cells[0][:widths[0] - 3] + "..."
        return first.ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(cells[1:], widths[1:]))

    out = [f"A: {cmp.label_a}", f"B: {cmp.label_b} (reference)",
           "shift = (mean A - mean B) / sd B; width A/B = ratio of 90% interval widths "
           "(vector variables: median |shift| and width ratio over their values, and the worst)", "",
           line(head), "-" * len(line(head))]
    out += [line(r) for r in rows]
    if worst_rows:
        out += ["", "largest shifts among vector values:"] + [line(r) for r in worst_rows]
    out += ["", cmp.summary_line()]
    out += [f"warning: {w}" for w in cmp.warnings]
    return "\n".join(out)


# ---------------------------------------------------------------- files

def output_dir(run_a, run_b, out_dir=None) -> Path:
    """Where a comparison goes (:func:`hbm.io.rundir.output_dir`): ``out_dir``, by default
    ``compare-<A>-vs-<B>`` beside RUN_A."""
    a, b = Path(run_a).resolve(), Path(run_b).resolve()    # RUN_A may be "."
    return new_output_dir(a.parent / f"compare-{a.name}-vs-{b.name}", out_dir)


def write_comparison(cmp: Comparison, out_dir: Path | str) -> Path:
    """Write ``compare.csv`` (the table) and ``compare.png`` (the plot) as the new directory ``out_dir``,
    all at once (:func:`hbm.io.rundir.write_run`: a kill leaves no half file, anywhere)."""
    png = io.BytesIO()
    plot_comparison(cmp, png)
    return write_run(out_dir, {"compare.csv": cmp.table.to_csv(float_format="%.6g"),
                               "compare.png": png.getvalue()})


def plot_comparison(cmp: Comparison, target) -> None:
    """Two panels: shift against width ratio per parameter, and each variable's width ratios."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    t = cmp.table
    fig = Figure(figsize=(11, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    variables = list(dict.fromkeys(t["variable"]))
    colors = {v: f"C{i % 10}" for i, v in enumerate(variables)}
    ok = np.isfinite(t["shift"]) & np.isfinite(t["width_ratio"]) & (t["width_ratio"] > 0)
    for v in variables:
        g = t[ok & (t["variable"] == v)]
        if len(g):
            ax.scatter(g["width_ratio"], g["shift"], s=10 if len(g) > 50 else 24, alpha=0.6,
                       color=colors[v], label=v if len(variables) <= 12 else None)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axhline(0.0, color="k", lw=0.8)
    for y in (-1, 1):
        ax.axhline(y, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("90% interval width, A / B (log scale)")
    ax.set_ylabel("(mean A - mean B) / sd B")
    ax.set_title("each parameter", fontsize=10)
    if len(variables) <= 12:
        ax.legend(fontsize=7, loc="best")
    data = [t.loc[ok & (t["variable"] == v), "width_ratio"].to_numpy(float) for v in variables]
    keep = [i for i, d in enumerate(data) if d.size]
    if keep:
        bx.boxplot([data[i] for i in keep], orientation="horizontal", showfliers=True)
        bx.set_yticks(range(1, len(keep) + 1))
        bx.set_yticklabels([_short(variables[i]) for i in keep], fontsize=7)
    bx.set_xscale("log")
    bx.axvline(1.0, color="k", lw=0.8)
    bx.set_xlabel("90% interval width, A / B (log scale)")
    bx.set_title("per variable", fontsize=10)
    for axis in (ax, bx):
        _ratio_ticks(axis)
    fig.suptitle(f"A: {cmp.label_a}   vs   B: {cmp.label_b}", fontsize=9)
    fig.tight_layout()
    fig.savefig(target, format="png")


_TICKS = ((0.001, 0.01, 0.1, 1, 10, 100, 1000),          # coarsest first: the first with 3 ticks in view
          (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100),
          (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10),
          (0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 1.75, 2),
          (0.8, 0.85, 0.9, 0.95, 1, 1.05, 1.1, 1.15, 1.2, 1.25))


def _ratio_ticks(ax) -> None:
    """Ratio ticks on a log x axis, labelled as ratios (0.5, 1, 2; not 10^0), at least three in view."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
    lo, hi = ax.get_xlim()
    ticks = next((ts for ts in (tuple(t for t in level if lo <= t <= hi) for level in _TICKS) if len(ts) >= 3),
                 (lo, 1.0, hi) if lo < 1 < hi else (lo, hi))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)


def _short(s: str, n: int = 34) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


__all__ = ["Comparison", "compare_summaries", "compare_runs", "format_comparison", "output_dir",
           "write_comparison", "plot_comparison"]
