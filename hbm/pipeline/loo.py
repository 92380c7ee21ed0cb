"""``hbm loo RUN [RUN ...]``: PSIS leave-one-out cross-validation of finished fits.

Each run's ``log_likelihood`` group (:mod:`hbm.results.pointwise`) goes through ArviZ's ``loo``: the
expected log predictive density of a left-out row summed over rows (``elpd_loo``, with its standard
error), the effective number of parameters (``p_loo``) and, per row, the Pareto k of its importance
weights (ArviZ's threshold for S draws, ``min(1 - 1/log10(S), 0.7)``, says which rows' estimates are
unreliable). Several runs of the same data are ranked by ArviZ's ``compare`` (stacking weights).

The table goes to ``loo.csv`` in a new directory: ``--out DIR``, by default, with several runs,
``loo-<A>-vs-<B>`` beside the first run (``-2``, ``-3``, ... when taken); one run writes nothing
unless ``--out`` is given. The directory is written whole or not at all, never inside a run.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hbm.errors import HbmError
from hbm.io.rundir import load_run, write_run
from hbm.io.rundir import output_dir as new_output_dir
from hbm.results.pointwise import LOG_LIKELIHOOD_MAX_VALUES

MIN_DRAWS = 20   # fewer posterior draws than this give no Pareto fit (a MAP fit has one)
WORST_ROWS = 5   # the rows with the largest k named in a warning


@dataclass
class RunLoo:
    """One run's PSIS-LOO (an ArviZ ``ELPDData`` computed pointwise) and what identifies the run."""

    label: str
    path: Path
    engine: str
    elpd: object
    fingerprint: str | None
    response: str

    @property
    def pareto_k(self) -> np.ndarray:
        return np.asarray(self.elpd.pareto_k.values).reshape(-1)

    def k_counts(self) -> tuple[int, int, int]:
        """Rows with k at most ArviZ's threshold (good), up to 1 (bad), above 1 (very bad)."""
        k, good = self.pareto_k, float(self.elpd.good_k)
        return int((k <= good).sum()), int(((k > good) & (k <= 1)).sum()), int((k > 1).sum())


@dataclass
class LooReport:
    runs: list[RunLoo]
    table: pd.DataFrame      # one row per run (index: label), the columns of COLUMNS


COLUMNS = ("rank", "elpd_loo", "se", "p_loo", "elpd_diff", "dse", "weight", "k_good", "k_bad", "k_very_bad",
           "good_k", "rows", "draws", "engine", "path")


def loo_run(path, label: str | None = None) -> RunLoo:
    """PSIS-LOO of one run directory (an :class:`HbmError` when it has no ``log_likelihood`` group)."""
    import arviz as az
    rec = load_run(path)
    idata = rec.idata()
    engine = str(rec.fit_info.get("engine") or (rec.spec.get("inference") or {}).get("engine") or "?")
    if "log_likelihood" not in idata.groups():
        plan = (rec.fit_info.get("outputs") or {}).get("log_likelihood") or {}
        why = plan.get("reason")
        hint = ("fit it again with --set outputs.log_likelihood=yes (hbm fit SPEC DATA --set "
                "outputs.log_likelihood=yes)")
        if why is None:
            why = "it was written by an hbm that did not save one"
            hint = (f"fit it again (hbm fit SPEC DATA): a run now holds one up to {LOG_LIKELIHOOD_MAX_VALUES:,} "
                    "draws x rows, and beyond with --set outputs.log_likelihood=yes")
        raise HbmError(f"run {rec.path} has no log_likelihood group ({why}), which loo needs",
                       where=str(rec.path / "posterior.nc"), hint=hint)
    ll = idata.log_likelihood
    draws = int(ll.sizes.get("chain", 1) * ll.sizes.get("draw", 1))
    if draws < MIN_DRAWS:
        raise HbmError(f"run {rec.path} has {draws} posterior draw{'s' * (draws != 1)} (engine {engine}); "
                       f"leave-one-out needs at least {MIN_DRAWS} draws from the posterior",
                       hint="fit with nuts, svi or laplace")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # ArviZ's warning about large k: format_loo says it in words
        elpd = az.loo(idata, pointwise=True)
    return RunLoo(label or rec.path.name, rec.path, engine, elpd,
                  (rec.fit_info.get("data") or {}).get("fingerprint"), str(next(iter(ll.data_vars))))


def _labels(paths) -> list[str]:
    """Each run's directory name, or its path where two runs share a name."""
    names = [Path(p).resolve().name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def loo_runs(paths) -> LooReport:
    """PSIS-LOO of every run and, with several (all fitted to the same data), ArviZ's comparison."""
    runs = [loo_run(p, label) for p, label in zip(paths, _labels(paths))]
    if len(runs) > 1:
        _same_data(runs)
    base = pd.DataFrame(
        {"k_good": [r.k_counts()[0] for r in runs], "k_bad": [r.k_counts()[1] for r in runs],
         "k_very_bad": [r.k_counts()[2] for r in runs], "good_k": [float(r.elpd.good_k) for r in runs],
         "rows": [int(r.elpd.n_data_points) for r in runs], "draws": [int(r.elpd.n_samples) for r in runs],
         "engine": [r.engine for r in runs], "path": [str(r.path.resolve()) for r in runs]},
        index=pd.Index([r.label for r in runs], name="run"))
    if len(runs) == 1:
        e = runs[0].elpd
        head = pd.DataFrame({"rank": [0], "elpd_loo": [float(e.elpd_loo)], "se": [float(e.se)],
                             "p_loo": [float(e.p_loo)], "elpd_diff": [0.0], "dse": [0.0], "weight": [1.0]},
                            index=base.index)
    else:
        import arviz as az
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                head = az.compare({r.label: r.elpd for r in runs}, ic="loo")
            except ValueError as err:
                raise HbmError(f"ArviZ cannot compare these runs: {err}") from None
        head = head[["rank", "elpd_loo", "se", "p_loo", "elpd_diff", "dse", "weight"]].astype(float)
        head["rank"] = head["rank"].astype(int)
        head.index.name = "run"
    table = head.join(base)
    return LooReport(runs, table[list(COLUMNS)])


def _same_data(runs: list[RunLoo]) -> None:
    responses = list(dict.fromkeys(r.response for r in runs))
    if len(responses) > 1:
        raise HbmError(f"the runs model different responses ({', '.join(responses)}); leave-one-out compares "
                       "models of the same response on the same rows")
    rows = {r.label: int(r.elpd.n_data_points) for r in runs}
    prints = {r.label: r.fingerprint for r in runs if r.fingerprint}
    if len(set(rows.values())) > 1 or len(set(prints.values())) > 1:
        shown = ", ".join(f"{k}: {v:,} rows" + (f" (data {prints[k]})" if k in prints else "") for k, v in rows.items())
        raise HbmError(f"the runs were fitted to different data ({shown}); leave-one-out compares models "
                       "on the same rows", hint="fit each model to the same data file, then compare")


# ---------------------------------------------------------------- text

def _warning(r: RunLoo) -> list[str]:
    """The warning, in words, when some rows' Pareto k is above ArviZ's threshold (else no lines)."""
    k = r.pareto_k
    good = float(r.elpd.good_k)
    bad = np.flatnonzero(k > good)
    if not bad.size:
        return []
    worst = bad[np.argsort(-k[bad])][:WORST_ROWS]
    rows = ", ".join(f"{i} (k {k[i]:.2f})" for i in worst)
    more = f", and {bad.size - worst.size:,} more" if bad.size > worst.size else ""
    more_draws = "inference.samples" if r.engine == "nuts" else "inference.draws"
    return [f"warning: {bad.size:,} of {k.size:,} rows {'has' if bad.size == 1 else 'have'} Pareto k above "
            f"{good:.2f}: for {'it' if bad.size == 1 else 'them'} the estimate is "
            "unreliable (leaving one out moves the posterior too far for importance sampling to follow), so "
            "elpd_loo may be too optimistic",
            f"  worst rows (counting from 0): {rows}{more}",
            f"  more draws help while k is below 0.7 (--set {more_draws}=...); beyond, refit without those "
            "rows (exact leave-one-out) or use K-fold cross-validation"]


def format_loo(report: LooReport) -> str:
    """Each run's elpd_loo, se, p_loo and Pareto k counts (with a warning in words where k is large), then,
    with several runs, the comparison table and what it says."""
    out = []
    for r in report.runs:
        e = r.elpd
        good, bad, very = r.k_counts()
        g = float(e.good_k)
        out += [f"{r.label} ({r.engine}): elpd_loo {float(e.elpd_loo):.1f} (se {float(e.se):.1f}), "
                f"p_loo {float(e.p_loo):.1f}; {int(e.n_data_points):,} rows, {int(e.n_samples):,} draws",
                f"  Pareto k: {good:,} good (k <= {g:.2f}), {bad:,} bad ({g:.2f} < k <= 1), "
                f"{very:,} very bad (k > 1)"]
        out += ["  " + line for line in _warning(r)]
    if len(report.runs) > 1:
        t = report.table
        head = ["run", "rank", "elpd_loo", "se", "p_loo", "elpd_diff", "dse", "weight"]
        cells = [[str(i), str(int(x["rank"])), f"{x.elpd_loo:.1f}", f"{x.se:.1f}", f"{x.p_loo:.1f}",
                  f"{x.elpd_diff:.1f}", f"{x.dse:.1f}", f"{x.weight:.2f}"] for i, x in t.iterrows()]
        widths = [max(len(h), *(len(c[j]) for c in cells)) for j, h in enumerate(head)]

        def line(c):
            return c[0].ljust(widths[0]) + "".join("  " + v.rjust(w) for v, w in zip(c[1:], widths[1:]))
        out += ["", "comparison (ArviZ compare: PSIS-LOO, stacking weights; the higher elpd_loo, the better "
                    "the model predicts a left-out row)", line(head), "-" * len(line(head))]
        out += [line(c) for c in cells]
        best, second = t.index[0], t.index[1]
        diff, dse = float(t.loc[second, "elpd_diff"]), float(t.loc[second, "dse"])
        if dse > 0 and diff < 2 * dse:
            out.append(f"{best} leads {second} by {diff:.1f} in elpd, less than twice the difference's standard "
                       f"error ({dse:.1f}): the data do not clearly prefer either")
        else:
            out.append(f"{best} leads {second} by {diff:.1f} in elpd"
                       + (f", {diff / dse:.1f} times the difference's standard error ({dse:.1f})" if dse > 0 else ""))
    return "\n".join(out)


# ---------------------------------------------------------------- files

def output_dir(paths, out_dir=None) -> Path | None:
    """Where ``loo.csv`` goes (:func:`hbm.io.rundir.output_dir`): ``out_dir``, by default, with several
    runs, ``loo-<A>-vs-<B>`` beside the first run; None for one run without ``out_dir``."""
    if out_dir is None and len(paths) < 2:
        return None
    names = [Path(p).resolve().name for p in paths]
    more = f"-and-{len(names) - 3}-more" if len(names) > 3 else ""
    return new_output_dir(Path(paths[0]).resolve().parent / ("loo-" + "-vs-".join(names[:3]) + more), out_dir)


def write_loo(report: LooReport, out_dir: Path | str) -> Path:
    """Write ``loo.csv`` as the new directory ``out_dir``, all at once (:func:`hbm.io.rundir.write_run`)."""
    return write_run(out_dir, {"loo.csv": report.table.to_csv(float_format="%.6g")})
