"""Fitted curves over their data for a non-linear fit: ``curves.png`` in the run directory.

    from hbm.results.curves import plot_curves
    plot_curves(result, "curves.png")                                  # six levels of the finest group
    plot_curves(result, "curves.png", by="compound", levels=["c0042", "c1337"])

It applies to a non-linear formula whose expression holds one data leaf, e.g.
``log(dose)`` in the 4PL: each panel is one level of a grouping factor (by default
the one with the most levels, ``compound``); the points are its rows, the response
against the leaf; the line and band are the posterior median and 90% interval of
the expression over a grid of the leaf, with every parameter at that level's value
averaged over its rows (so a plate-varying asymptote enters as the average of the
compound's plates). Rows where the leaf is infinite (the controls at dose 0) are
drawn at the left edge with the expression's limit there. :func:`curve_files` gives
the run directory its ``curves.png`` when the model qualifies (``hbm fit`` writes it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hbm.errors import HbmError
from hbm.ir.nonlinear import NonlinearIR
from hbm.vocabulary.functions import NP_OPS
from hbm.ir.nonlinear import Param, evaluate


def curve_setup(model) -> tuple[object, str, str] | None:
    """(the data leaf, the plate to draw by, its parameter) when ``model`` (a CompiledModel) has
    curves to draw, else None."""
    nl = model.ir
    if not isinstance(nl, NonlinearIR) or len(nl.leaves) != 1 or model.observed_y is not None:
        return None     # (a distributed run's rows are this process's share: no curves)
    owners = {plate: p.name for p in nl.params for plate in model.rows.params[p.name].idx}
    if not owners:
        return None
    by = max(owners, key=lambda plate: (nl.plate(plate).size, plate))
    return nl.leaves[0], by, owners[by]


def curve_files(result) -> dict:
    """``{"curves.png": writer}`` for a run directory, or {} when the model has no curves to draw."""
    if curve_setup(result.model) is None:
        return {}
    return {"curves.png": lambda path: plot_curves(result, path)}


def curve_draws(result, by: str | None = None, levels=None, n: int = 6, draws: int = 200,
                grid: int = 80, seed: int = 0) -> dict:
    """The numbers :func:`plot_curves` draws: per level, its rows' leaf values and responses, and
    the curve's grid with the median and the 5% and 95% quantiles over posterior draws."""
    import jax
    from numpyro import handlers

    model = result.model
    setup = curve_setup(model)
    if setup is None:
        raise HbmError("no curves to draw: that needs a non-linear formula with one data part "
                       "(such as log(dose)) and a grouping factor", where="curves")
    leaf, default_by, owner = setup
    nl = model.ir
    if by is not None:
        owner = next((p.name for p in nl.params if by in model.rows.params[p.name].idx), None)
        if owner is None:
            raise HbmError(f"'{by}' is not a grouping factor of a parameter's formula", where="curves")
    by = by or default_by
    labels = list(model.encoding.labels[by])
    if levels is None:
        levels = [labels[i] for i in np.unique(np.linspace(0, len(labels) - 1, min(n, len(labels))).astype(int))]
    missing = [lv for lv in levels if lv not in labels]
    if missing:
        raise HbmError(f"'{missing[0]}' is not a level of '{by}'", where="curves")
    rows, n_rows = model.rows, model.n_rows
    codes = np.asarray(rows.params[owner].idx[by])[:n_rows]
    x_all = np.asarray(rows.data[leaf.text])[:n_rows]
    y_all = np.asarray(rows.y)[:n_rows]
    limit = np.zeros(n_rows, bool)
    for lim in nl.limits:
        limit |= np.asarray(rows.limits[lim.key])[:n_rows]

    flat = {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in result.engine.samples.items()}
    total = next(iter(flat.values())).shape[0]
    pick = np.random.default_rng(seed).choice(total, min(draws, total), replace=False)
    flat = {k: v[pick] for k, v in flat.items()}

    out = {"by": by, "leaf": leaf.text, "levels": {}, "limit": nl.limits[0].key if nl.limits else ""}
    finite = x_all[~limit]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    xs = np.linspace(lo, hi, grid)
    for level in levels:
        sel = np.flatnonzero(codes == labels.index(level))
        sub = jax.tree.map(lambda a: a[sel] if np.ndim(a) and a.shape[0] == rows.y.shape[0] else a, rows)

        def values(sample):
            fn = handlers.substitute(handlers.seed(model.numpyro_model, 0), data=sample)
            return fn(sub, model.consts, mode="params")
        theta = {k: np.asarray(v, np.float64).mean(-1)[:, None]        # (draws, 1): mean over its rows
                 for k, v in jax.jit(jax.vmap(values))(flat).items()}

        def curve(e, x):
            with np.errstate(all="ignore"):
                return np.broadcast_to(evaluate(e, NP_OPS, lambda node: theta[node.name]
                                                if isinstance(node, Param) else x[None, :]),
                                       (len(pick), x.size))
        ys = curve(nl.expr, xs)
        entry = {"x": x_all[sel][~limit[sel]], "y": y_all[sel][~limit[sel]], "grid": xs,
                 "q5": np.quantile(ys, 0.05, 0), "q50": np.quantile(ys, 0.5, 0), "q95": np.quantile(ys, 0.95, 0),
                 "limit_y": y_all[sel][limit[sel]], "limit_fit": None}
        if nl.limits and limit[sel].any():
            entry["limit_fit"] = float(np.median(curve(nl.limits[0].expr, xs[:1])))
        out["levels"][level] = entry
    return out


def plot_curves(result, path, *, by: str | None = None, levels=None, n: int = 6, draws: int = 200,
                seed: int = 0) -> Path:
    """Draw fitted curves over their data into ``path`` (PNG); see the module docstring."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    c = curve_draws(result, by, levels, n, draws, seed=seed)
    k = len(c["levels"])
    cols = min(3, k)
    rows = -(-k // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    resp = result.model.ir.response.column
    for i, (level, e) in enumerate(c["levels"].items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(e["x"], e["y"], ".", ms=3, alpha=0.5, color="0.35")
        ax.fill_between(e["grid"], e["q5"], e["q95"], alpha=0.3, color="C0", lw=0)
        ax.plot(e["grid"], e["q50"], color="C0", lw=1.6)
        if len(e["limit_y"]):
            left = e["grid"][0] - 0.12 * (e["grid"][-1] - e["grid"][0] or 1.0)
            ax.plot(np.full(len(e["limit_y"]), left), e["limit_y"], "x", ms=4, alpha=0.6, color="C3",
                    label=c["limit"])
            if e["limit_fit"] is not None:
                ax.plot([left], [e["limit_fit"]], "o", color="C0", ms=5)
            if i == 0:
                ax.legend(fontsize=7, loc="best")
        ax.set_title(f"{c['by']} {level}", fontsize=9)
        ax.set_xlabel(c["leaf"], fontsize=8)
        ax.set_ylabel(resp, fontsize=8)
        ax.tick_params(labelsize=7)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return Path(path)
