"""Synthetic data from a spec: the covariates, then the response drawn from the model.

The ``simulate:`` block of a spec says how many rows, the seed, how to draw
each column, and the true parameter values::

    simulate:
      rows: 100000
      seed: 0
      columns:
        category: {levels: 10}
        product: {levels: 1000, within: category}
        period: {levels: 52}
        price: lognormal(3, 0.3)
      params: {Intercept: 2, log(price): -2, sd(1 | product): 0.5}

Columns not listed get defaults: a grouping or factor column gets
``levels: max(2, rows // 50)`` (at most 200), a numeric column ``normal(0, 1)``
(``lognormal(0, 0.5)`` under a function that needs it positive: log, sqrt, log1p),
``trials()`` columns 10, ``se()`` columns 1, ``weights()`` columns 1.
Parameters not in ``params`` keep a fixed prior's value, and are otherwise drawn
from their prior (a prior predictive draw).

A dose design (dose-response assays, non-linear formulas)::

    dose: {doses: [0, 0.001, 0.01, 0.1, 1, 10, 100], per: compound, count: [4, 6]}

gives each level of ``per`` a series of ``count`` consecutive non-zero doses of the
list (a random window; ``count`` a number, or ``[least, most]`` drawn per level;
default: all of them), plus the controls at dose 0 when 0 is listed. The rows of a
level cycle through its series, so every dose has replicates. Without ``per`` each
row draws a dose from the list.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import numpyro
import pandas as pd

from hbm.frontend import ast as A
from hbm.errors import HbmError
from hbm.vocabulary.families import FAMILIES
from hbm.vocabulary.functions import OPS
from hbm.frontend.parse import Fn, parse_call, parse_formula, parse_nonlinear
from hbm.spec import SimulateSpec, Spec
from hbm.pipeline.compiled import compile_table
from hbm.results.outputs import build_outputs
from hbm.results.summary import element_names
from hbm.frontend import nl_ast as N

_PLACEHOLDER = {"real": 0.5, "count": 1.0, "binary": 1.0, "trials": 1.0, "positive": 1.0, "unit": 0.5}
_GENERATORS = ("normal", "lognormal", "uniform", "poisson", "constant")


def simulate_table(spec: Spec, rows: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """A table with every column the formula uses, the response drawn from the model."""
    return simulate(spec, rows, seed)[0]


def simulate(spec: Spec, rows: int | None = None, seed: int | None = None) -> tuple[pd.DataFrame, dict]:
    """The simulated table and the true value of every named parameter (element name -> value)."""
    sim = spec.simulate or SimulateSpec()
    n = int(rows or sim.rows)
    rng = np.random.default_rng(sim.seed if seed is None else seed)
    lhs, uses = _formula_uses(spec)
    columns = {k: _thaw(v) for k, v in sim.columns}
    unknown = set(columns) - set(uses)
    if unknown:
        name = sorted(unknown)[0]
        raise HbmError(f"simulate.columns names '{name}', which the formula does not use",
                       where=f"simulate.columns.{name}", hint="columns used: " + ", ".join(sorted(uses)))
    df = _covariates(uses, columns, n, rng, lhs.column)
    family = spec.family or _family_for_link(lhs)
    df[lhs.column] = _PLACEHOLDER[FAMILIES[family].support]
    placeholder_spec = dataclasses.replace(spec, family=family, data=None)
    model = compile_table(placeholder_spec, df, devices=1, noncentered=False, whiten=False)
    params = {k: float(v) for k, v in sim.params}
    known = {name.replace(" ", ""): name for name in model.ir.parameter_names()}
    for k in params:
        if k.replace(" ", "") not in known:
            raise HbmError(f"simulate.params names '{k}', which is not a parameter of this model",
                           where=f"simulate.params.{k}", hint="parameters: " + ", ".join(known.values()))
    values = {known[k.replace(" ", "")]: v for k, v in params.items()}
    cond = numpyro.handlers.condition(model.numpyro_model, data=_shaped(model, values))
    tr = numpyro.handlers.trace(numpyro.handlers.seed(cond, jax.random.PRNGKey(int(rng.integers(2**31)))))
    trace = tr.get_trace(model.rows, model.consts, mode="simulate")
    y = np.asarray(trace["y"]["value"])
    if not np.isfinite(y).all():
        raise HbmError("the simulated response is not finite: the parameter values are too extreme",
                       where="simulate.params", hint="give smaller coefficients or standard deviations")
    df[lhs.column] = y.astype(np.int64) if FAMILIES[family].support in ("count", "binary", "trials") else y
    return df, _truth(model, trace)


def _truth(model, trace) -> dict[str, float]:
    sites = {k: np.asarray(v["value"])[None, None] for k, v in trace.items()
             if v["type"] in ("sample", "deterministic")}
    outputs = build_outputs(model.ir, sites, model.encoding)
    truth = {}
    for var in outputs.vars:
        values = np.asarray(var.values).reshape(-1)
        truth.update(zip(element_names(var, outputs.coords, outputs.plate_dims), values.tolist()))
    return truth


def _shaped(model, values: dict) -> dict:
    """Broadcast scalar values to vector population terms (a factor's levels)."""
    out = {}
    for k, v in values.items():
        term = next((t for t in model.ir.population if t.name == k), None)
        out[k] = np.full(len(term.columns), v, np.float32) if term is not None and term.is_vector \
            else np.float32(v)
    return out


def _family_for_link(lhs: A.Response) -> str:
    if any(a.kind == "trials" for a in lhs.additions):
        return "binomial"
    return {"log": "poisson", "logit": "bernoulli", "probit": "bernoulli"}.get(lhs.link or "", "normal")


def _formula_uses(spec: Spec) -> tuple[A.Response, dict[str, str]]:
    """The left side, and each column the formula uses and how (see ``_column_uses``); a non-linear
    formula's columns are its expression's and those of its parameters' formulas."""
    if not spec.params:
        formula = parse_formula(spec.formula)
        return formula.lhs, _column_uses(formula)
    formula = parse_nonlinear(spec.formula)
    params = dict(spec.params)
    uses: dict[str, str] = {}
    rank = {"numeric": 0, "positive": 1, "factor": 2, "group": 3}
    for name, text in spec.params:
        for col, kind in _column_uses(parse_formula(f"{name} ~ {text}")).items():
            if rank.get(kind, 9) > rank.get(uses.get(col), -1):
                uses[col] = kind

    def visit(e, inside):
        if isinstance(e, N.Name):
            if e.name not in params and rank[inside] > rank.get(uses.get(e.name), -1):
                uses[e.name] = inside
        elif not isinstance(e, N.Number):
            op, args = N.op_and_args(e)
            for a in args:
                visit(a, "positive" if _positive_argument(op) else inside)
    visit(formula.rhs, "numeric")
    for a in formula.lhs.additions:
        uses[a.column] = a.kind
    return formula.lhs, uses


def _positive_argument(func: str) -> bool:
    """Whether ``func`` needs an argument drawn positive (log, sqrt: hbm/vocabulary/functions.py)."""
    domain = OPS[func].domain
    return domain is not None and domain.positive


def _column_uses(formula: A.Formula) -> dict[str, str]:
    """Each column the formula uses and how: group, factor, positive, numeric, trials, se, weights."""
    uses: dict[str, str] = {}

    def visit(e, inside=None):
        if isinstance(e, A.Var):
            if uses.get(e.name) not in ("group", "factor", "positive"):
                uses[e.name] = inside or "numeric"
        elif isinstance(e, A.Call):
            kind = "factor" if e.func == "factor" else "positive" if _positive_argument(e.func) else inside
            visit(e.arg, kind)
        elif isinstance(e, (A.Paren, A.Neg)):
            visit(e.body, inside)
        elif isinstance(e, A.BinOp):
            visit(e.left, inside)
            visit(e.right, inside)
        elif isinstance(e, (A.GroupTerm, A.Chain)):
            visit(e.body if isinstance(e, A.GroupTerm) else e.term, inside)
            for f in e.group.factors:
                for name in f.names:
                    uses[name] = "group"
    visit(formula.rhs)
    for a in formula.lhs.additions:
        uses[a.column] = a.kind
    return uses


def _covariates(uses: dict, columns: dict, n: int, rng, response: str) -> pd.DataFrame:
    data: dict[str, np.ndarray] = {}
    def tier(c):  # parents before the columns drawn within them, dose designs after their groups
        how = columns.get(c)
        return 2 if isinstance(how, dict) and "doses" in how else int(isinstance(how, dict) and "within" in how)
    order = sorted(uses, key=lambda c: (tier(c), c))
    parents: dict[str, tuple[str, np.ndarray]] = {}
    for col in order:
        if col == response:
            continue
        how = columns.get(col)
        kind = uses[col]
        if isinstance(how, dict) and "doses" in how:
            data[col] = _doses(col, how, n, rng, data)
        elif kind in ("group", "factor") or isinstance(how, dict):
            data[col] = _levels(col, how, n, rng, data, parents)
        else:
            data[col] = _numeric(col, how, kind, n, rng)
    return pd.DataFrame(data)


def _levels(col, how, n, rng, data, parents) -> np.ndarray:
    how = how if isinstance(how, dict) else {}
    bad = set(how) - {"levels", "within"}
    if bad:
        raise HbmError(f"simulate.columns.{col} has unknown key '{sorted(bad)[0]}'",
                       where=f"simulate.columns.{col}", hint="a grouping column takes 'levels' and 'within'")
    k = int(how.get("levels", max(2, min(200, n // 50))))
    width = len(str(k - 1))
    names = np.array([f"{col[:1]}{i:0{width}d}" for i in range(k)])
    within = how.get("within")
    codes = rng.permutation(np.resize(np.arange(k), n))  # balanced: every level appears
    if within is None:
        pass
    else:
        if within not in data:
            raise HbmError(f"simulate.columns.{col}: 'within: {within}' names no grouping column",
                           where=f"simulate.columns.{col}")
        parent_names = np.unique(data[within])
        owner = np.concatenate([np.arange(len(parent_names)),
                                rng.integers(0, len(parent_names), max(0, k - len(parent_names)))])[:k]
        data[within] = parent_names[owner[codes]]
    return names[codes]


def _doses(col, how, n, rng, data) -> np.ndarray:
    """A dose design (see the module docstring)."""
    where = f"simulate.columns.{col}"
    bad = set(how) - {"doses", "per", "count"}
    if bad:
        raise HbmError(f"{where} has unknown key '{sorted(bad)[0]}'", where=where,
                       hint="a dose design takes 'doses', 'per' and 'count'")
    try:
        doses = sorted(float(d) for d in how["doses"])
    except (TypeError, ValueError):
        doses = []
    if not doses or doses[0] < 0:
        raise HbmError(f"{where}.doses must be a list of doses >= 0", where=where,
                       hint="e.g. doses: [0, 0.01, 0.1, 1, 10]")
    positive = np.array([d for d in doses if d > 0])
    controls = int(doses[0] == 0)
    count = how.get("count", len(positive))
    lo, hi = (count, count) if isinstance(count, (int, float)) else tuple(count)
    if not 1 <= int(lo) <= int(hi) <= len(positive):
        raise HbmError(f"{where}.count must be between 1 and {len(positive)} (the non-zero doses listed), "
                       f"got {count!r}", where=where)
    per = how.get("per")
    if per is None:
        return rng.choice(np.array(doses), n)
    if per not in data:
        raise HbmError(f"{where}: 'per: {per}' names no grouping column of the formula", where=where)
    labels, codes = np.unique(data[per], return_inverse=True)
    k = len(labels)
    length = rng.integers(int(lo), int(hi) + 1, k)                # non-zero doses of each level
    start = rng.integers(0, len(positive) - length + 1)           # its window in the list
    order = np.lexsort((rng.random(n), codes))                  # each level's rows, in random order
    first = np.searchsorted(codes[order], np.arange(k))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - first[codes[order]]              # position of each row within its level
    pos = rank % (length + controls)[codes] - controls            # -1: a control
    return np.where(pos < 0, 0.0, positive[np.clip(start[codes] + pos, 0, len(positive) - 1)])


def _numeric(col, how, kind, n, rng) -> np.ndarray:
    if kind == "trials":
        return np.full(n, int(how if isinstance(how, (int, float)) else 10))
    if kind in ("se", "weights") and how is None:
        return np.ones(n)
    if isinstance(how, (int, float)):
        return np.full(n, float(how))
    fn = parse_call(how) if isinstance(how, str) else None
    if fn is None:
        fn = Fn("lognormal", (0.0, 0.5)) if kind == "positive" else Fn("normal", (0.0, 1.0))
    if not isinstance(fn, Fn) or fn.name not in _GENERATORS:
        raise HbmError(f"simulate.columns.{col}: cannot draw from {how!r}", where=f"simulate.columns.{col}",
                       hint="use normal(m, s), lognormal(m, s), uniform(a, b), poisson(rate) or a number")
    a = [float(x) for x in fn.args]
    return {"normal": lambda: rng.normal(*a, n), "lognormal": lambda: rng.lognormal(*a, n),
            "uniform": lambda: rng.uniform(*a, n), "poisson": lambda: rng.poisson(*a, n).astype(float),
            "constant": lambda: np.full(n, a[0])}[fn.name]()


def _thaw(v):
    if isinstance(v, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in v):
        return {k: _thaw(x) for k, x in v}
    return v

