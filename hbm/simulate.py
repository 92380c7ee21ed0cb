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
(``lognormal(0, 0.5)`` when the formula takes its log or square root),
``trials()`` columns 10, ``se()`` columns 1, ``weights()`` columns 1.
Parameters not in ``params`` keep a fixed prior's value, and are otherwise drawn
from their prior (a prior predictive draw).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import numpyro
import pandas as pd

from . import ast as A
from .errors import HbmError
from .families import FAMILIES
from .parse import Fn, parse_call, parse_formula
from .spec import SimulateSpec, Spec

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
    formula = parse_formula(spec.formula)
    uses = _column_uses(formula)
    columns = {k: _thaw(v) for k, v in sim.columns}
    unknown = set(columns) - set(uses)
    if unknown:
        name = sorted(unknown)[0]
        raise HbmError(f"simulate.columns names '{name}', which the formula does not use",
                       where=f"simulate.columns.{name}", hint="columns used: " + ", ".join(sorted(uses)))
    df = _covariates(uses, columns, n, rng, formula.lhs.column)
    family = spec.family or _family_for_link(formula.lhs.link, formula)
    df[formula.lhs.column] = _PLACEHOLDER[FAMILIES[family].support]
    from .compiler import compile_table
    placeholder_spec = dataclasses.replace(spec, family=family, data=None)
    model = compile_table(placeholder_spec, df, devices=1, noncentered=False)
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
    df[formula.lhs.column] = y.astype(np.int64) if FAMILIES[family].support in ("count", "binary", "trials") else y
    return df, _truth(model, trace)


def _truth(model, trace) -> dict[str, float]:
    from .outputs import build_outputs
    from .results import element_names
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


def _family_for_link(link: str | None, formula: A.Formula) -> str:
    if any(a.kind == "trials" for a in formula.lhs.additions):
        return "binomial"
    return {"log": "poisson", "logit": "bernoulli", "probit": "bernoulli"}.get(link or "", "normal")


def _column_uses(formula: A.Formula) -> dict[str, str]:
    """Each column the formula uses and how: group, factor, positive, numeric, trials, se, weights."""
    uses: dict[str, str] = {}

    def visit(e, inside=None):
        if isinstance(e, A.Var):
            if uses.get(e.name) not in ("group", "factor", "positive"):
                uses[e.name] = inside or "numeric"
        elif isinstance(e, A.Call):
            kind = {"factor": "factor", "log": "positive", "sqrt": "positive"}.get(e.func, inside)
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
    order = sorted(uses, key=lambda c: (isinstance(columns.get(c), dict) and "within" in columns[c], c))
    parents: dict[str, tuple[str, np.ndarray]] = {}
    for col in order:
        if col == response:
            continue
        how = columns.get(col)
        kind = uses[col]
        if kind in ("group", "factor") or isinstance(how, dict):
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

