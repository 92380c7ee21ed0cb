"""Conditional effects and level contrasts of a finished fit: ``hbm effects``, ``hbm contrast``, ``effects.png``.

    eff = conditional_effects("runs/first", "price", by="region")   # eff.table: price, region, mean, q5 ... q95
    con = contrasts("runs/first", "region", pairs=True, at={"x": 1.5})  # con.table: contrast, mean, sd, ...

Both build rows and predict them with the fit's own :class:`hbm.pipeline.predict.Predictor`, asking for
``what="mean"`` (the family's mean E[y] in each posterior draw: exp(eta) for Poisson with its log link)
and ``groups=False``: group-level effects at zero, the population-level prediction (brms's
``re_formula = NA``, the default of its ``conditional_effects``). Rows are in the data's own units:
a numeric predictor varies over ``points`` values across its observed range (evenly spaced on the
log scale where the formula uses the column only through ``log()``), a factor over its levels;
every other predictor is held at its mean (numeric: the column's own, ``price``'s for ``log(price)``)
or its reference level (factors); a ``trials()`` column is held at 1, so E[y] is the probability of
a success; a ``se()`` column at 1. ``at`` sets any of them.

``by`` (effects) and a contrast's factor may also be a grouping factor: then that factor's own group
effects enter (``groups={plate}``; a level of a chain is the coefficient at that level, its outer
levels included), every other group-level effect stays at zero.

Contrasts are differences of E[y] between levels, draw by draw: each level against the reference (the
first level: the fit's treatment coding), or all pairs; per contrast the posterior mean, sd, 90%
interval and the probability that it is above zero.

Outputs go into a new directory (``--out``, by default ``<run>-effects-<term>`` or
``<run>-contrast-<factor>`` beside the run), written whole or not at all; a finished run is never
changed. :func:`effect_files` gives a run directory its ``effects.png`` at fit time: one panel per
population-level predictor (a column in an interaction gets its own panel, the other columns held).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hbm.errors import HbmError, closest
from hbm.ir.columns import formula_columns
from hbm.ir.nonlinear import NonlinearIR
from hbm.io.rundir import output_dir as new_output_dir, write_run
from hbm.pipeline.predict import Predictor
from hbm.results.effects_plot import MAX_BY_LEVELS, EffectPanel, plot_effects

POINTS = 50                   # grid points of a numeric predictor
QUANTILES = {"q5": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95}
EFFECT_COLUMNS = ("mean", *QUANTILES)
CONTRAST_COLUMNS = ("contrast", "level", "reference", "mean", "sd", "q5", "q95", "p_gt_0")
MAX_PAIR_LEVELS = 60          # --pairs: at most 1,770 contrasts
MAX_PANELS = 9                # effects.png at fit time: the first predictors
MAX_PANEL_LEVELS = 40         # ... and factors of at most this many levels


@dataclass(frozen=True)
class Term:
    """A column the user named, as the formula uses it."""

    column: str
    kind: str                        # "numeric", "factor" (a population-level factor) or "group"
    levels: tuple[str, ...] = ()     # a factor's or grouping factor's levels, reference first
    plate: str | None = None         # "group": its plate
    uses: tuple[str, ...] = ()       # "numeric": the expressions of it in the formula, e.g. log(price)

    @property
    def label(self) -> str:
        if self.kind == "numeric" and self.uses and self.uses != (self.column,):
            return f"{self.column}  (the model uses {', '.join(self.uses)})"
        return f"{self.column} (grouping factor)" if self.kind == "group" else self.column


@dataclass
class Effects:
    table: pd.DataFrame          # the term, the by column if any, then EFFECT_COLUMNS
    term: Term
    by: Term | None
    held: dict[str, str]         # column -> its value and why ("0.15 (mean)")
    response: str                # what is predicted, e.g. "E[units]"
    scale: str                   # "poisson, log link; group-level effects at zero"

    def panel(self) -> EffectPanel:
        return EffectPanel(self.table, self.term.column, "numeric" if self.term.kind == "numeric" else "factor",
                           self.by.column if self.by else None, self.term.label)


@dataclass
class Contrasts:
    table: pd.DataFrame          # CONTRAST_COLUMNS
    factor: Term
    held: dict[str, str]
    response: str
    scale: str
    pairs: bool


# ---------------------------------------------------------------- naming columns

def as_predictor(source) -> Predictor:
    """A :class:`Predictor` from a run directory, a FitResult or a Predictor."""
    if isinstance(source, Predictor):
        return source
    if isinstance(source, (str, Path)):
        return Predictor.from_run(source)
    return Predictor.from_fit(source)


def _linear_only(pred: Predictor) -> None:
    if isinstance(pred.ir, NonlinearIR):
        raise HbmError(f"effects and contrasts are computed for linear formulas; this run's formula is "
                       f"non-linear ({pred.ir.formula})", where="RUN",
                       hint="a non-linear fit's fitted curves are in curves.png in its run directory; "
                            "`hbm predict RUN DATA --what mean` gives E[y] for any rows")


def resolve_term(pred: Predictor, name: str, role: str = "TERM", allow_group: bool = False) -> Term:
    """The column ``name`` (a column, or a term's text such as ``log(price)`` or ``factor(k)``) as the
    formula uses it; an :class:`HbmError` saying why it cannot be varied otherwise."""
    _linear_only(pred)
    cols = formula_columns(pred.ir)
    formula = pred.ir.formula
    text = name.replace(" ", "")
    for col, uses in cols.numeric.items():
        if text == col or text in [u.replace(" ", "") for u in uses]:
            return Term(col, "numeric", uses=uses)
    for col, written in cols.factors.items():
        if text in (col, written.replace(" ", "")):
            return Term(col, "factor", tuple(pred.encoding.factor_levels.get(col, ())))
    if name in cols.grouping:
        single = [p for p in cols.grouping[name] if pred.ir.plate(p).columns == (name,)]
        if allow_group and single:
            return Term(name, "group", tuple(pred.encoding.labels[single[0]]), single[0])
        if allow_group:
            raise HbmError(f"{role} '{name}' groups the data only together with other columns "
                           f"({', '.join(cols.grouping[name])})", where=role,
                           hint=f"name a grouping factor of its own, e.g. (1 | {name}) in the formula")
        raise HbmError(f"{role} '{name}' is a grouping factor: population-level effects do not vary with it",
                       where=role, hint=f"compare its levels with `hbm contrast RUN {name}`, or draw one line "
                                        f"per level with --by {name}")
    if name == cols.response:
        raise HbmError(f"{role} '{name}' is the response of {formula}, not a predictor", where=role,
                       hint=_predictors_hint(cols))
    if name in cols.group_only:
        raise HbmError(f"{role} '{name}' enters only group-level terms of {formula}: its population-level "
                       "effect is zero", where=role, hint=_predictors_hint(cols))
    if name in cols.extras:
        raise HbmError(f"{role} '{name}' is the {cols.extras[name]}() column of {formula}, not a predictor",
                       where=role, hint=_predictors_hint(cols))
    near = closest(name, [*cols.all, *(u for uses in cols.numeric.values() for u in uses)])
    if near is not None:
        raise HbmError(f"unknown {role} '{name}': the formula {formula} has no column of that name",
                       where=role, hint=f"did you mean '{near}'?")
    raise HbmError(f"{role} '{name}' is not in the formula {formula}", where=role, hint=_predictors_hint(cols))


def _predictors_hint(cols) -> str:
    names = [*cols.predictors, *cols.grouping]
    return f"its predictors are: {', '.join(names)}" if names else "the formula has no predictors"


def _range(pred: Predictor, col: str) -> tuple[float, float, float]:
    r = pred.encoding.ranges.get(col)
    if r is None:
        raise HbmError(f"the run records no range of the column '{col}' (it was written by an older hbm)",
                       where="RUN", hint="fit the model again: its encoding.json then holds each column's "
                                         "range and mean")
    return r


def parse_at(pred: Predictor, items) -> dict[str, object]:
    """``["x=1.5", "region=r2"]`` (or a mapping) as {column: value}, each checked against the formula."""
    pairs = list(items.items()) if isinstance(items, dict) else []
    for item in ([] if isinstance(items, dict) else list(items or ())):
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise HbmError(f"--at '{item}' is not COLUMN=VALUE", where="--at", hint="e.g. --at x=1.5 --at region=r2")
        pairs.append((key.strip(), value.strip()))
    _linear_only(pred)
    cols = formula_columns(pred.ir)
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in cols.extras:
            term = Term(key, "numeric")
        else:
            term = resolve_term(pred, key, "--at")
        if term.kind == "numeric":
            try:
                out[term.column] = float(value)
            except (TypeError, ValueError):
                raise HbmError(f"--at {key}={value}: '{key}' is numeric and '{value}' is not a number",
                               where="--at") from None
            if not np.isfinite(out[term.column]):
                raise HbmError(f"--at {key}={value}: the value must be finite", where="--at")
        else:
            if str(value) not in term.levels:
                near = closest(str(value), term.levels)
                raise HbmError(f"--at {key}={value}: '{value}' is not a level of '{term.column}'", where="--at",
                               hint=(f"did you mean '{near}'? " if near else "") + "its levels: "
                               + ", ".join(term.levels[:12]) + (", ..." if len(term.levels) > 12 else ""))
            out[term.column] = str(value)
    return out


def reference_row(pred: Predictor, at: dict | None = None) -> tuple[dict[str, object], dict[str, str]]:
    """(the row every prediction starts from, how each value was chosen): numeric predictors at their
    means, factors at their reference levels, trials() and se() at 1, then ``at``."""
    cols = formula_columns(pred.ir)
    row, held = {}, {}
    for col in cols.numeric:
        row[col] = _range(pred, col)[1]
        held[col] = f"{row[col]:.4g} (mean)"
    for col in cols.group_only:
        if col in pred.encoding.ranges:
            row[col] = pred.encoding.ranges[col][1]
            held[col] = f"{row[col]:.4g} (mean)"
    for col in cols.factors:
        levels = pred.encoding.factor_levels.get(col) or []
        if levels:
            row[col], held[col] = levels[0], f"{levels[0]} (reference)"
    for col, role in cols.extras.items():
        if role in ("trials", "se"):
            row[col], held[col] = 1.0, f"1 ({role})"
    for col, value in (at or {}).items():
        row[col] = value
        held[col] = f"{value:.4g} (--at)" if isinstance(value, float) else f"{value} (--at)"
    return row, held


def grid(pred: Predictor, term: Term, points: int = POINTS) -> list:
    """The values a term takes: ``points`` across a numeric column's observed range, or a factor's levels."""
    if term.kind != "numeric":
        return list(term.levels)
    lo, _, hi = _range(pred, term.column)
    if not hi > lo:
        return [lo]
    logged = lo > 0 and all(u.startswith("log(") and u.count("(") == 1 for u in term.uses)
    return list(np.geomspace(lo, hi, points) if logged else np.linspace(lo, hi, points))


def group_columns(pred: Predictor, plate: str, labels) -> dict[str, list[str]]:
    """The columns that name ``labels`` of ``plate``, and the levels they sit in of the plates it is
    nested in (a chain's outer plates, from the fit's parent maps)."""
    out: dict[str, list[str]] = {}
    parents = dict(pred.ir.nestings)
    index = [pred.encoding.labels[plate].index(lab) for lab in labels]
    p = plate
    while True:
        names = [pred.encoding.labels[p][i] for i in index]
        columns = pred.ir.plate(p).columns
        if len(columns) == 1:
            out.setdefault(columns[0], names)
        else:
            parts = [n.split(":") for n in names]
            if any(len(x) != len(columns) for x in parts):
                raise HbmError(f"cannot tell the columns of the levels of '{p}' apart (a label holds ':')",
                               where="FACTOR")
            for k, col in enumerate(columns):
                out.setdefault(col, [x[k] for x in parts])
        q = parents.get(p)
        if q is None or f"{p}>{q}" not in pred.parents:
            return out
        index = [int(pred.parents[f"{p}>{q}"][i]) for i in index]
        p = q


def _describe(pred: Predictor, group: Term | None, row: dict) -> tuple[str, str]:
    """(what is predicted, e.g. ``E[units]`` or ``E[succ] with n = 1``, the scale in words)."""
    m = pred.ir
    trials = m.response.trials
    what = f"E[{m.response.column}]" + (f" with {trials} = {float(row[trials]):g}" if trials else "")
    groups = (f"group-level effects of {group.column} only, the others at zero" if group is not None
              else "group-level effects at zero")
    return what, f"{m.family.name}, {m.family.link} link; {groups}"


def _summary(draws: np.ndarray) -> pd.DataFrame:
    q = np.quantile(draws, list(QUANTILES.values()), axis=1)
    return pd.DataFrame({"mean": draws.mean(axis=1), **{k: q[i] for i, k in enumerate(QUANTILES)}})


# ---------------------------------------------------------------- effects

def conditional_effects(source, term: str, by: str | None = None, at=None, points: int = POINTS,
                        seed: int = 0) -> Effects:
    """E[y] over a grid of ``term`` (one line per level of ``by``), the rest held (module docstring)."""
    pred = as_predictor(source)
    t = resolve_term(pred, term)
    b = by_term(pred, by, t) if by is not None else None
    at = parse_at(pred, at or ())
    for col in at:
        if col in (t.column, b.column if b else None):
            raise HbmError(f"--at sets '{col}', which this plot varies", where="--at")
    if not isinstance(points, int) or not 2 <= points <= 1000:
        raise HbmError(f"--points must be between 2 and 1000, not {points}", where="--points")
    base, held = reference_row(pred, at)
    xs = grid(pred, t, points)
    if not xs:
        raise HbmError(f"the run records no levels of '{t.column}'", where="TERM")
    levels = list(b.levels) if b is not None else [None]
    rows = []
    for lv in levels:
        for x in xs:
            rows.append({**base, t.column: x, **({b.column: lv} if b is not None else {})})
    frame = pd.DataFrame(rows)
    groups = False
    if b is not None and b.kind == "group":
        for col, values in group_columns(pred, b.plate, frame[b.column].tolist()).items():
            frame[col] = values
        groups = {b.plate}
    draws = pred.predict(frame, what="mean", seed=seed, draws=True, groups=groups)
    keys = [t.column] + ([b.column] if b is not None else [])
    table = pd.concat([frame[keys].reset_index(drop=True), _summary(draws)], axis=1)
    for col in (t.column, b.column if b else None):
        held.pop(col, None)
    what, scale = _describe(pred, b if b is not None and b.kind == "group" else None, base)
    return Effects(table, t, b, held, what, scale)


def by_term(pred: Predictor, by: str, term: Term) -> Term:
    """``--by``: a factor or grouping factor of at most ``MAX_BY_LEVELS`` levels, other than ``term``."""
    b = resolve_term(pred, by, "--by", allow_group=True)
    if b.kind == "numeric":
        raise HbmError(f"--by '{by}' is numeric; --by draws one line per level of a factor", where="--by",
                       hint=f"a factor of the formula, or hold '{b.column}' at a value with --at {b.column}=...")
    if b.column == term.column:
        raise HbmError(f"--by names '{b.column}', the TERM itself", where="--by")
    if len(b.levels) > MAX_BY_LEVELS:
        raise HbmError(f"--by '{b.column}' has {len(b.levels):,} levels; one line each is readable up to "
                       f"{MAX_BY_LEVELS}", where="--by",
                       hint=f"compare its levels with `hbm contrast RUN {b.column}` instead")
    return b


def plot_single(eff: Effects, target) -> None:
    """One effect's picture (``effects.png`` of ``hbm effects``)."""
    by = f" by {eff.by.column}" if eff.by else ""
    plot_effects([eff.panel()], target, title=f"{eff.response} over {eff.term.column}{by}\n({eff.scale})",
                 ylabel=eff.response, note=_held_note(eff.held))


def _held_note(held: dict[str, str]) -> str | None:
    if not held:
        return None
    text = "held: " + ", ".join(f"{k} = {v}" for k, v in held.items())
    return text if len(text) <= 160 else text[:157] + "..."


def format_effects(eff: Effects, max_rows: int = 11) -> str:
    """The terminal's table: at most ``max_rows`` rows per line (every k-th grid point)."""
    t = eff.table
    n = len(t) // (len(eff.by.levels) if eff.by else 1)
    step = max(1, -(-n // max_rows)) if eff.term.kind == "numeric" else 1
    pos = np.arange(len(t)) % n            # the place in its line's grid; the last point always shown
    keep = np.flatnonzero((pos % step == 0) | (pos == n - 1)) if step > 1 else np.arange(len(t))
    shown = t.iloc[keep]
    head = [f"{eff.response} over {eff.term.label}" + (f", by {eff.by.column}" if eff.by else "")
            + f" ({eff.scale})"]
    if eff.held:
        head.append(_held_note(eff.held))
    body = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    tail = ([f"({len(shown)} of {len(t)} rows shown, one grid point in {step} and the last; all in effects.csv)"]
            if step > 1 else [])
    return "\n".join(head + [body] + tail)


# ---------------------------------------------------------------- contrasts

def contrasts(source, factor: str, pairs: bool = False, at=None, seed: int = 0) -> Contrasts:
    """Differences of E[y] between the levels of ``factor`` (module docstring)."""
    pred = as_predictor(source)
    f = factor_term(pred, factor, pairs)
    at = parse_at(pred, at or ())
    if f.column in at:
        raise HbmError(f"--at sets '{f.column}', the factor compared", where="--at")
    base, held = reference_row(pred, at)
    held.pop(f.column, None)
    frame = pd.DataFrame([{**base, f.column: lv} for lv in f.levels])
    groups = False
    if f.kind == "group":
        for col, values in group_columns(pred, f.plate, list(f.levels)).items():
            frame[col] = values
        groups = {f.plate}
    draws = pred.predict(frame, what="mean", seed=seed, draws=True, groups=groups)
    table = contrast_table(draws, f.levels, pairs)
    what, scale = _describe(pred, f if f.kind == "group" else None, base)
    return Contrasts(table, f, held, what, scale, pairs)


def factor_term(pred: Predictor, factor: str, pairs: bool = False) -> Term:
    """A contrast's FACTOR: a factor or a grouping factor of two levels or more."""
    f = resolve_term(pred, factor, "FACTOR", allow_group=True)
    if f.kind == "numeric":
        raise HbmError(f"FACTOR '{f.column}' is numeric, not a factor", where="FACTOR",
                       hint="contrasts compare the levels of a factor (a text column, factor(x), or a grouping "
                            f"factor); for a numeric predictor see `hbm effects RUN {f.column}`")
    if len(f.levels) < 2:
        raise HbmError(f"FACTOR '{f.column}' has {len(f.levels)} level(s) in the run: nothing to compare",
                       where="FACTOR")
    if pairs and len(f.levels) > MAX_PAIR_LEVELS:
        raise HbmError(f"--pairs of '{f.column}' would be {len(f.levels) * (len(f.levels) - 1) // 2:,} contrasts "
                       f"({len(f.levels):,} levels); at most {MAX_PAIR_LEVELS} levels", where="--pairs",
                       hint="leave out --pairs: each level against the reference")
    return f


def contrast_table(draws: np.ndarray, levels, pairs: bool = False) -> pd.DataFrame:
    """Per pair of rows of ``draws`` (levels, draws): the difference's mean, sd, 90% interval, P(> 0)."""
    idx = ([(i, j) for i in range(len(levels)) for j in range(i + 1, len(levels))] if pairs
           else [(0, j) for j in range(1, len(levels))])
    out = []
    for i, j in idx:
        d = draws[j] - draws[i]
        q5, q95 = np.quantile(d, (0.05, 0.95))
        out.append({"contrast": f"{levels[j]} - {levels[i]}", "level": levels[j], "reference": levels[i],
                    "mean": d.mean(), "sd": d.std(ddof=1) if d.size > 1 else 0.0, "q5": q5, "q95": q95,
                    "p_gt_0": float((d > 0).mean())})
    return pd.DataFrame(out, columns=list(CONTRAST_COLUMNS))


def format_contrasts(con: Contrasts, max_rows: int = 40) -> str:
    t = con.table
    against = "all pairs" if con.pairs else f"each level against {con.factor.levels[0]}"
    head = [f"{con.response}: differences between levels of {con.factor.label}, {against} ({con.scale})"]
    if con.held:
        head.append(_held_note(con.held))
    shown = t.drop(columns=["level", "reference"]).rename(columns={"p_gt_0": "P(>0)"})
    body = shown.head(max_rows).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    tail = [f"({max_rows} of {len(t):,} contrasts shown; all in contrast.csv)"] if len(t) > max_rows else []
    return "\n".join(head + [body] + tail)


# ---------------------------------------------------------------- files

def output_dir(run, kind: str, name: str, out=None) -> Path:
    """Where ``hbm effects`` / ``hbm contrast`` write (:func:`hbm.io.rundir.output_dir`): ``out``, by
    default ``<run>-<kind>-<name>`` beside the run."""
    r = Path(run).resolve()
    return new_output_dir(r.parent / f"{r.name}-{kind}-{_slug(name)}", out)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "term"


def write_effects(eff: Effects, out_dir) -> Path:
    """``effects.csv`` and ``effects.png`` as the new directory ``out_dir``, all at once."""
    png = io.BytesIO()
    plot_single(eff, png)
    return write_run(out_dir, {"effects.csv": eff.table.to_csv(index=False, float_format="%.8g"),
                               "effects.png": png.getvalue()})


def write_contrasts(con: Contrasts, out_dir) -> Path:
    """``contrast.csv`` as the new directory ``out_dir``."""
    return write_run(out_dir, {"contrast.csv": con.table.to_csv(index=False, float_format="%.8g")})


# ---------------------------------------------------------------- the run directory's effects.png

def run_effects(pred: Predictor) -> list[Effects]:
    """One :class:`Effects` per population-level predictor (at most ``MAX_PANELS``; factors of at most
    ``MAX_PANEL_LEVELS`` levels)."""
    out = []
    cols = formula_columns(pred.ir)
    for col in cols.predictors:
        if col in cols.offset_only:     # an offset is not an effect the model estimates
            continue
        t = resolve_term(pred, col)
        if t.kind != "numeric" and not 0 < len(t.levels) <= MAX_PANEL_LEVELS:
            continue
        out.append(conditional_effects(pred, col))
        if len(out) == MAX_PANELS:
            break
    return out


def plot_run_effects(pred: Predictor, target) -> None:
    """``effects.png``: one panel per population-level predictor."""
    effs = run_effects(pred)
    base, held = reference_row(pred)
    what, scale = _describe(pred, None, base)
    note = "each panel varies one predictor and holds the others at " + ", ".join(f"{k} = {v}" for k, v in held.items())
    plot_effects([e.panel() for e in effs], target, title=f"Conditional effects on {what} ({scale})",
                 ylabel=what, note=note if len(note) <= 200 else note[:197] + "...")


def effect_files(result) -> dict:
    """``{"effects.png": writer}`` for a fit's run directory: a linear formula with population-level
    predictors; else {} (a non-linear formula has curves.png instead)."""
    if isinstance(result.model.ir, NonlinearIR):
        return {}
    pred = Predictor.from_fit(result)
    if not run_effects_possible(pred):
        return {}
    return {"effects.png": lambda path: plot_run_effects(pred, path)}


def run_effects_possible(pred: Predictor) -> bool:
    """Whether effects.png has a panel to draw: a predictor other than an offset (a factor of at most
    MAX_PANEL_LEVELS levels), and every numeric column's range recorded."""
    cols = formula_columns(pred.ir)
    if not all(c in pred.encoding.ranges for c in cols.numeric):
        return False
    return any(c not in cols.offset_only and (c in cols.numeric or
                                              0 < len(pred.encoding.factor_levels.get(c, ())) <= MAX_PANEL_LEVELS)
               for c in cols.predictors)


__all__ = ["Term", "Effects", "Contrasts", "conditional_effects", "contrasts", "contrast_table", "parse_at",
           "resolve_term", "by_term", "factor_term", "reference_row", "grid", "group_columns", "output_dir",
           "write_effects", "write_contrasts", "format_effects", "format_contrasts", "effect_files",
           "plot_run_effects"]
