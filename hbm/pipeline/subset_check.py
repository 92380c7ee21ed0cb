"""A stronger check of a variational fit than k-hat: the same engine against NUTS on a subset.

Pareto k-hat judges every latent value at once, and with hundreds of them it is above 0.7 for
every Gaussian guide, good or bad (benchmarks/RESULTS.md, calibration). This check asks the
question a user cares about instead: on data of the same kind, small enough for NUTS, does the
engine give NUTS's answer? It draws whole levels of the grouping with the most levels (all of
its rows; random rows for a model without groups) until about :data:`SUBSET_ROWS` rows, or takes
every row of a smaller table, fits that subset twice, with the fit's own engine and settings and
with NUTS, and compares every element both report by the fast engine's rule of the validation
suite: means within :data:`MEAN_TOL` NUTS posterior sds, sds within a factor of :data:`SD_RATIO`.

The overall verdict trusts a fit only when k-hat and this check both do: measured on the
validation suite with SVI (benchmarks/RESULTS.md), that flags every failing fit and trusts 81% of
the passing ones, where k-hat alone trusted 4 failing fits and this check alone 2.

Its verdict is about the engine on this model and data shape, not a proof about the full fit:
where the full data pin the levels more than the subset does, the two posteriors differ, and an
error that is small on the subset's wider posterior can be large on the full one. (A full fit that
stopped at ``steps`` before its stopping rule held is said so; it is not by itself a failure, as
SVI's movement rule rarely holds under adam's stationary noise: see benchmarks/RESULTS.md.)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from hbm.pipeline.compiled import compile_table
from hbm.pipeline.fit import fit
from hbm.data.table import as_dataframe

SUBSET_ROWS = 2_000
MEAN_TOL = 0.5
SD_RATIO = 2.0


def subset_rows(model, df: pd.DataFrame, seed: int = 0, max_rows: int = SUBSET_ROWS) -> tuple[np.ndarray, str]:
    """The rows of the subset (indices into ``df``) and what they are, in words."""
    n = len(df)
    if n <= max_rows:
        return np.arange(n), f"all {n:,} rows"
    rng = np.random.default_rng(seed)
    if not model.ir.plates:
        return np.sort(rng.choice(n, max_rows, replace=False)), f"{max_rows:,} random rows of {n:,}"
    plate = max(model.ir.plates, key=lambda p: p.size)
    key = df[list(plate.columns)].astype(str).agg(":".join, axis=1).to_numpy()
    levels, inverse = np.unique(key, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(levels))
    order = rng.permutation(len(levels))
    take = order[: max(2, int(np.searchsorted(np.cumsum(counts[order]), max_rows)) + 1)]
    rows = np.flatnonzero(np.isin(inverse, take))
    return rows, f"{len(take):,} of {len(levels):,} levels of {plate.name} ({len(rows):,} of {n:,} rows)"


def compare_summaries(fast: pd.DataFrame, exact: pd.DataFrame) -> tuple[bool, str, list[str]]:
    """Every element both report, by the suite's fast rule: (passes, worst element in words, problems)."""
    shared = [k for k in exact.index if k in fast.index and exact.loc[k, "sd"] > 0]
    problems, worst, worst_err = [], "", -1.0
    for k in shared:
        err = abs(fast.loc[k, "mean"] - exact.loc[k, "mean"]) / exact.loc[k, "sd"]
        ratio = fast.loc[k, "sd"] / exact.loc[k, "sd"]
        if err > worst_err:
            worst_err, worst = err, f"{k}: mean {err:.2f} NUTS sds from NUTS's, sd ratio {ratio:.2f}"
        if not (err <= MEAN_TOL and 1 / SD_RATIO <= ratio <= SD_RATIO):
            problems.append(f"{k} (mean {err:.2f} sd off, sd ratio {ratio:.2f})")
    return not problems and bool(shared), worst, problems


def check_on_subset(fitted, df: pd.DataFrame, seed: int = 0, max_rows: int = SUBSET_ROWS) -> dict:
    """The subset check of ``fitted`` (a FitResult of ``df``); a diagnostics dict with a verdict."""
    import dataclasses

    df = as_dataframe(df)
    rows, what = subset_rows(fitted.model, df, seed, max_rows)
    sub = df.iloc[rows].reset_index(drop=True)
    spec = dataclasses.replace(fitted.model.spec, batch_size=None, devices=1)
    model = compile_table(spec, sub, devices=1)
    config = {f.name: getattr(fitted.config, f.name) for f in dataclasses.fields(fitted.config)}
    config.pop("engine")
    same = fit(model, engine=fitted.config.engine, **config)
    exact = fit(model, engine="nuts")
    exact_ok = bool((exact.diagnostics or {}).get("trustworthy"))
    ok, worst, problems = compare_summaries(same.summary(), exact.summary())
    head = f"Checked against NUTS on a subset ({what}): "
    if fitted.engine.info.get("converged") is False:
        head += f"(the full fit stopped before its convergence rule held: {fitted.engine.info.get('stop_reason')}) "
    if not exact_ok:
        text = head + "inconclusive, NUTS itself did not converge there; NOT known to be trustworthy."
    elif ok:
        text = head + f"{fitted.config.engine} agrees on every parameter (worst {worst}): trustworthy."
    else:
        text = (head + f"NOT trustworthy: {fitted.config.engine} differs from NUTS on {len(problems)} "
                "element(s): " + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "") + ".")
    khat_ok = (fitted.diagnostics or {}).get("trustworthy")
    both = bool(khat_ok) and exact_ok and ok
    says = [w for w, good in (("k-hat", khat_ok), ("the subset check", exact_ok and ok)) if not good]
    overall = ("Overall: trustworthy (k-hat and the subset check both say so)." if both else
               "Overall: NOT trustworthy (" + " and ".join(says) + " say" + ("s" if len(says) == 1 else "")
               + " not).")
    return {"kind": "subset", "verdict": text, "trustworthy": exact_ok and ok, "subset": what,
            "problems": problems, "nuts_trustworthy": exact_ok, "overall": overall, "overall_trustworthy": both}
