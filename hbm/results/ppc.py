"""The posterior predictive check picture: ``ppc.png`` in a run directory, and ``hbm ppc``.

ArviZ's ``plot_ppc`` of the ``posterior_predictive`` group (:mod:`hbm.results.pointwise`) against the
observed responses of the same rows: for a continuous family the density (``kind="kde"``) of each
simulated data set over the observed one's; for a discrete family (counts, 0/1, successes) their
empirical distribution functions (``kind="cumulative"``: the share of rows at or below each value).
ArviZ's ``kde`` of integers draws step histograms whose bar for the value k spans k to k + 1 and whose
bins change from draw to draw once the values are many; the steps of the cumulative sit on the values.
``group``: one panel per level of a grouping factor, the ``MAX_PANELS`` levels with the most rows, each
row's level read from the group's own coordinates.
"""
from __future__ import annotations

import numpy as np

from hbm.errors import HbmError, did_you_mean

MAX_PANELS = 9          # --group: at most this many levels, those with the most rows
MIN_ROWS_PER_PANEL = 2  # a density of fewer rows says nothing


def predictive_parts(idata) -> dict:
    """What the picture needs from an InferenceData: the response's name, its draws (chains, draws,
    rows), the observed values of those rows, the row coordinates (grouping factors) and the attributes."""
    if "posterior_predictive" not in idata.groups():
        raise HbmError("this run has no posterior_predictive group",
                       hint="runs written by an older hbm lack it: fit the model again")
    pp = idata.posterior_predictive
    attrs = dict(pp.attrs)
    name = attrs.get("hbm_response")
    if name not in pp.data_vars:
        name = next(iter(pp.data_vars))
    da = pp[name]
    row_dim = da.dims[2]
    rows = np.asarray(pp[row_dim].values, dtype=np.int64)
    obs_group = idata.observed_data if "observed_data" in idata.groups() else None
    if obs_group is None or not obs_group.data_vars:
        raise HbmError("this run has no observed_data group to compare the draws with")
    ovar = name if name in obs_group.data_vars else next(iter(obs_group.data_vars))
    observed = np.asarray(obs_group[ovar].values).reshape(-1)
    if rows.size and rows.max() >= observed.size:
        raise HbmError("the posterior_predictive group's rows do not match observed_data's",
                       hint="posterior.nc may be damaged: fit the model again")
    observed = observed[rows]
    values = np.asarray(da.values)
    if values.dtype.kind == "i":
        observed = np.round(observed).astype(values.dtype)
    levels = {str(c): np.asarray(pp.coords[c].values).astype(str) for c in pp.coords
              if c not in ("chain", "draw", row_dim) and pp.coords[c].dims == (row_dim,)}
    return {"name": name, "values": values, "observed": observed, "row_dim": row_dim, "levels": levels,
            "family": attrs.get("hbm_family"), "rows_total": int(attrs.get("hbm_rows_total", observed.size))}


def _panel(ax, parts, cols, legend: bool, textsize: float) -> None:
    import arviz as az
    import xarray as xr
    name, dim = parts["name"], parts["row_dim"]
    vals = parts["values"][:, :, cols]
    sub = az.InferenceData(
        posterior_predictive=xr.Dataset({name: (("chain", "draw", dim), vals)},
                                        coords={"chain": np.arange(vals.shape[0]), "draw": np.arange(vals.shape[1])}),
        observed_data=xr.Dataset({name: ((dim,), parts["observed"][cols])}))
    discrete = vals.dtype.kind == "i"
    state = np.random.get_state()     # plot_ppc seeds NumPy's global generator: the caller's is kept
    try:
        az.plot_ppc(sub, ax=ax, kind="cumulative" if discrete else "kde", legend=legend, random_seed=0,
                    textsize=textsize)
    finally:
        np.random.set_state(state)
    if discrete:
        values = np.unique(np.concatenate([np.unique(parts["observed"][cols]), np.unique(vals)]))
        binary = values.size and values.max() - values.min() <= 1
        ax.set_ylabel(f"share of rows with {name} = {values.min()}" if binary else "share of rows <= value",
                      fontsize=textsize * 0.8)
        if binary:     # 0/1: the two values, nothing between
            ax.set_xticks(values)


def choose_levels(labels: np.ndarray, max_panels: int = MAX_PANELS) -> tuple[list[str], int]:
    """The levels to draw (most rows first, at most ``max_panels``, each with at least two rows) and how
    many levels are left out."""
    values, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((values, -counts))
    keep = [str(values[i]) for i in order if counts[i] >= MIN_ROWS_PER_PANEL][:max_panels]
    return keep, len(values) - len(keep)


def plot_ppc(idata, target, group: str | None = None, max_panels: int = MAX_PANELS) -> dict:
    """Draw the check into ``target`` (a path or a binary file) as PNG; ``group``: a panel per level of
    that grouping factor. Returns what was drawn: levels shown and left out, draws and rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts = predictive_parts(idata)
    name, values = parts["name"], parts["values"]
    n_draws, n_rows = values.shape[0] * values.shape[1], values.shape[2]
    family = f" ({parts['family']})" if parts["family"] else ""
    rows_note = (f"{n_rows:,} rows" if n_rows >= parts["rows_total"]
                 else f"a random {n_rows:,} of the {parts['rows_total']:,} rows")
    if group is None:
        fig = Figure(figsize=(7, 4.4), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        _panel(ax, parts, np.arange(n_rows), True, 11)
        ax.set_title(f"observed {name} against {n_draws} data sets simulated from the posterior\n"
                     f"{rows_note}", fontsize=9)
        fig.suptitle(f"posterior predictive check of {name}{family}", fontsize=11)
        fig.tight_layout()
        fig.savefig(target, format="png")
        return {"draws": n_draws, "rows": n_rows, "levels": [], "left_out": 0}
    if group not in parts["levels"]:
        known = sorted(parts["levels"])
        raise HbmError(f"'{group}' is not a grouping factor of this run", where="--group",
                       hint=(did_you_mean(group, known) or "") + (
                           f" grouping factors: {', '.join(known)}" if known else
                           " the model has no grouping factor"))
    labels = parts["levels"][group]
    shown, left_out = choose_levels(labels, max_panels)
    if not shown:
        raise HbmError(f"no level of '{group}' has {MIN_ROWS_PER_PANEL} rows among the {n_rows:,} drawn",
                       where="--group")
    ncols = min(3, len(shown))
    nrows = -(-len(shown) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.9 * nrows + 0.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    for i, level in enumerate(shown):
        cols = np.flatnonzero(labels == level)
        _panel(axes[i], parts, cols, i == 0, 9)
        axes[i].set_title(f"{group} = {level} ({cols.size:,} rows)", fontsize=9)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    which = (f"the {len(shown)} levels with the most rows; {left_out:,} more left out" if left_out
             else f"each of its {len(shown)} levels")
    fig.suptitle(f"posterior predictive check of {name}{family} by {group}: {n_draws} simulated data sets\n"
                 f"{which} ({rows_note})", fontsize=10)
    fig.tight_layout()
    fig.savefig(target, format="png")
    return {"draws": n_draws, "rows": n_rows, "levels": shown, "left_out": left_out}


def ppc_files(idata) -> dict:
    """``{"ppc.png": writer}`` for a run directory whose InferenceData has a posterior_predictive group."""
    if "posterior_predictive" not in idata.groups():
        return {}
    return {"ppc.png": lambda path: plot_ppc(idata, path)}
