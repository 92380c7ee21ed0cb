"""Pictures of a fit's draws: ``trace.png`` of a sampler's run (ArviZ's trace plot of a handful of
population parameters)."""
from __future__ import annotations

import numpy as np

from hbm.results.summary import Outputs, element_names

TRACE_MOST = 6   # parameters in trace.png


def trace_parameters(outputs: Outputs, most: int = TRACE_MOST) -> dict[str, np.ndarray]:
    """Up to ``most`` population parameters, name -> draws (chains, draws): the scalars in model order
    (coefficients, group-level sds and correlations' first, family parameters), then the elements of
    vectors without a plate (a factor's levels). Group values (per plate level) are left out."""
    out: dict[str, np.ndarray] = {}
    scalars = [v for v in outputs.vars if not v.dims]
    vectors = [v for v in outputs.vars if v.dims and not set(v.dims) & set(outputs.plate_dims)]
    for v in scalars:
        if len(out) < most:
            out[v.base] = v.values
    for v in vectors:
        flat = v.values.reshape(v.values.shape[:2] + (-1,))
        for name, k in zip(element_names(v, outputs.coords, outputs.plate_dims), range(flat.shape[2])):
            if len(out) < most:
                out[name] = flat[:, :, k]
    return out


def plot_trace(outputs: Outputs, path, sample_stats: dict | None = None, most: int = TRACE_MOST) -> None:
    """``trace.png``: ``arviz.plot_trace`` of :func:`trace_parameters`, one row each (density per chain,
    draws per chain), divergent draws marked when ``sample_stats`` has ``diverging``."""
    import arviz as az
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = trace_parameters(outputs, most)
    if not chosen:
        raise ValueError("no population parameters to plot")
    stats = None
    if sample_stats and "diverging" in sample_stats:
        stats = {"diverging": np.asarray(sample_stats["diverging"]).astype(bool)}
    data = az.from_dict(posterior=chosen, sample_stats=stats)
    fig = Figure(figsize=(10, 1.8 * len(chosen) + 0.7), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(chosen), 2, squeeze=False)
    az.plot_trace(data, axes=axes, compact=False, show=False,
                  divergences="bottom" if stats is not None else None)
    chains, draws = next(iter(chosen.values())).shape
    note = ""
    if stats is not None and stats["diverging"].any():
        note = f"; {int(stats['diverging'].sum()):,} divergent draws marked on the axes"
    fig.suptitle(f"{chains} chains of {draws:,} draws (left: density per chain; right: draws in order{note})",
                 fontsize=9)
    for ax in axes.ravel():
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
