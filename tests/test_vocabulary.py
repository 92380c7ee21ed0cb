"""The vocabulary registries are the one source of their words (hbm/vocabulary/).

* functions.OPS: each entry's NumPy and JAX ops agree; its sign and limit rules hold on sampled
  values; the grammar takes exactly its names where the entry allows them; the data table computes
  the formula functions from the entry.
* names: the engines and diagnostics implement exactly the registered guides, losses and corrections.
* spec.py validates against the registries and copies none of them.
"""
from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from hbm.data.table import TableInfo
from hbm.engines.base import EngineResult
from hbm.engines.guides import guide_factory
from hbm.engines.svi import make_elbo
from hbm.errors import HbmError
from hbm.frontend import ast as A
from hbm.frontend import nl_ast as N
from hbm.frontend.parse import LINKS, RHS_FUNCTIONS, parse_formula, parse_nonlinear
from hbm.results.diagnostics import check_fit
from hbm.spec import load_spec
from hbm.vocabulary.families import FAMILIES, FAMILY_ALIASES, INVERSE_LINKS
from hbm.vocabulary.functions import BOUND_SPECS, EXPRESSION_FUNCTIONS, FORMULA_FUNCTIONS, OPS
from hbm.vocabulary.names import CORRECTIONS, GUIDES, LOSSES

HBM = Path(__file__).resolve().parents[1] / "hbm"
GRID = np.array([-3.0, -2.2, -1.5, -1.0, -0.6, -0.25, 0.0, 0.02, 0.1, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0, 1.7,
                 2.5, 3.0])
VALUED = [n for n, o in OPS.items() if o.np is not None]


def _inside(name: str, x: np.ndarray) -> np.ndarray:
    d = OPS[name].domain
    return np.ones(x.shape, bool) if d is None else ~d.outside(x)


def _samples(name: str) -> list[np.ndarray]:
    """Argument arrays (one per argument) inside the entry's domain where NumPy gives a finite value."""
    arity = OPS[name].arity
    args = [a.ravel() for a in np.meshgrid(*[GRID] * arity, indexing="ij")]
    ok = _inside(name, args[0]) if arity == 1 else np.ones(args[0].shape, bool)
    with np.errstate(all="ignore"):
        ok &= np.isfinite(OPS[name].np(*args))
    return [a[ok] for a in args]


# ---------------------------------------------------------------- the function table
@pytest.mark.parametrize("name", VALUED)
def test_numpy_and_jax_ops_agree(name):
    args = _samples(name)
    assert args[0].size >= 6, "too few sample values inside the domain"
    want = OPS[name].np(*args)
    got = np.asarray(OPS[name].jax(*(jnp.asarray(a, jnp.float32) for a in args)), np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_every_entry_computes_or_marks():
    """An entry with a NumPy op has its JAX op; the rest are the table's transforms or term markers."""
    for name, o in OPS.items():
        assert (o.np is None) == (o.jax is None), name
        if o.np is None:
            assert o.formula and not o.expression and o.arity == 1, name
    assert {n for n, o in OPS.items() if o.standardize} == {"center", "scale"}
    assert {n for n, o in OPS.items() if o.np is None and not o.standardize} == {"factor", "offset"}


def test_some_known_values():
    """Independent values (math module) for the entries whose NumPy form is written out here."""
    x = np.array([-2.0, 0.3, 4.0])
    np.testing.assert_allclose(OPS["inv_logit"].np(x), [1 / (1 + math.exp(-v)) for v in x], rtol=1e-14)
    np.testing.assert_allclose(OPS["softplus"].np(x), [math.log1p(math.exp(v)) for v in x], rtol=1e-14)
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(OPS["logit"].np(p), [math.log(v / (1 - v)) for v in p], rtol=1e-12, atol=1e-15)


def _with_sign(s: int) -> np.ndarray:
    return GRID[GRID > 0] if s > 0 else GRID[GRID < 0] if s < 0 else GRID


@pytest.mark.parametrize("name", [n for n, o in OPS.items() if o.sign is not None])
def test_sign_rules_hold_on_samples(name):
    """Where the rule claims a sign for arguments of given signs (0: any), every sampled value has it."""
    o, claims = OPS[name], 0
    for signs in itertools.product((-1, 0, 1), repeat=o.arity):
        s = o.sign(*signs)
        if s == 0:
            continue
        args = [a.ravel() for a in np.meshgrid(*[_with_sign(t) for t in signs], indexing="ij")]
        ok = _inside(name, args[0]) if o.arity == 1 else np.ones(args[0].shape, bool)
        with np.errstate(all="ignore"):
            v = o.np(*args)
        v = v[ok & ~np.isnan(v)]
        assert v.size and (np.sign(v) == s).all(), (name, signs, s)
        claims += 1
    assert claims, f"{name}'s sign rule claims nothing"


@pytest.mark.parametrize("name", [n for n, o in OPS.items() if o.limit is not None])
def test_limit_rules_agree_with_numpy(name):
    """A limit rule's value is NumPy's own with the infinity in place; a sign-dependent answer (a str)
    is one whose NumPy value does change with the other argument's sign."""
    o = OPS[name]
    for inf, i, s in itertools.product((math.inf, -math.inf), (0, 1), (-1, 0, 1)):
        r = o.limit(inf, i, s)
        others = _with_sign(s)
        with np.errstate(all="ignore"):
            values = [o.np(*((inf, x) if i == 0 else (x, inf))) for x in others]
        if isinstance(r, str):
            pos, neg = (o.np(*((inf, x) if i == 0 else (x, inf))) for x in (1.5, -1.5))
            assert s == 0 and pos != neg and r.startswith("-inf" if inf < 0 else "inf"), (name, inf, i, r)
        elif r is not None:
            assert all(v == r for v in values), (name, inf, i, s, r, values)


def test_a_linear_formula_takes_exactly_the_formula_functions():
    for name in FORMULA_FUNCTIONS:
        f = parse_formula(f"y ~ {name}(x)")
        assert f.rhs == A.Call(name, A.Var("x"))
    assert RHS_FUNCTIONS == FORMULA_FUNCTIONS
    for name in set(EXPRESSION_FUNCTIONS) - set(FORMULA_FUNCTIONS):
        with pytest.raises(HbmError) as e:
            parse_formula(f"y ~ z + {name}(x)")
        p = e.value.problems[0]
        assert p.message == f"unknown function '{name}'"
        assert (p.span.start, p.span.end) == (8, 8 + len(name))
        assert all(f in p.hint for f in FORMULA_FUNCTIONS) or "did you mean" in p.hint


def test_a_nonlinear_formula_takes_exactly_the_expression_functions():
    for name in EXPRESSION_FUNCTIONS:
        f = parse_nonlinear(f"y ~ a * {name}(x)")
        assert f.rhs == N.Binary("*", N.Name("a"), N.Apply(name, N.Name("x")))
    assert N.FUNCTIONS == EXPRESSION_FUNCTIONS
    for name in set(FORMULA_FUNCTIONS) - set(EXPRESSION_FUNCTIONS):
        with pytest.raises(HbmError) as e:
            parse_nonlinear(f"y ~ a * {name}(x)")
        p = e.value.problems[0]
        assert p.message == f"unknown function '{name}'"
        assert (p.span.start, p.span.end) == (8, 8 + len(name))


def test_the_table_computes_the_formula_functions():
    x = np.array([0.5, 1.0, 2.0, 4.0, 9.0])
    info = TableInfo(pd.DataFrame({"x": x, "y": x}), "y ~ x")
    for name in FORMULA_FUNCTIONS:
        o = OPS[name]
        if o.np is None and o.standardize is None:
            with pytest.raises(HbmError, match="is not a numeric predictor"):
                info.numeric(A.Call(name, A.Var("x")))
            continue
        got = info.numeric(A.Call(name, A.Var("x")))
        want = {"center": x - x.mean(), "scale": (x - x.mean()) / x.std()}.get(name)
        np.testing.assert_allclose(got, o.np(x) if want is None else want, rtol=1e-15)


@pytest.mark.parametrize("name, column, what", [("log", [1.0, 0.0, -2.0], "2 values are <= 0"),
                                                 ("sqrt", [1.0, 0.0, -2.0], "1 values are negative")])
def test_a_formula_function_outside_its_domain_is_an_error(name, column, what):
    info = TableInfo(pd.DataFrame({"x": column}), f"y ~ {name}(x)")
    with pytest.raises(HbmError) as e:
        info.numeric(parse_formula(f"y ~ {name}(x)").rhs)
    assert e.value.problems[0].message == f"{name}() of 'x' is undefined: {what}"
    assert e.value.problems[0].span.start == 4


def test_bounds_invert_their_links():
    x = np.linspace(-4, 4, 17)
    for name, b in BOUND_SPECS.items():
        np.testing.assert_allclose(np.asarray(b.jax(jnp.asarray(x, jnp.float32))),
                                   x if b.np is None else b.np(x), rtol=2e-6, atol=1e-7)
        if b.inverse is not None:
            np.testing.assert_allclose(OPS[b.inverse].np(x), b.np(x), rtol=1e-12)
            np.testing.assert_allclose(OPS[b.link].np(b.np(x)), x, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- families and links
def test_families_and_links():
    assert LINKS == tuple(INVERSE_LINKS)
    for f in FAMILIES.values():
        assert set(f.links) <= set(INVERSE_LINKS), f.name
    assert set(FAMILY_ALIASES.values()) <= set(FAMILIES) and not set(FAMILY_ALIASES) & set(FAMILIES)
    for link in LINKS:
        assert parse_formula(f"{link}(y) ~ x").lhs.link == link


# ---------------------------------------------------------------- guides, losses, corrections
def _compared(module: str, func: str, var: str) -> set[str]:
    """The string constants ``var`` is compared with (==, in) inside ``func`` of ``module``."""
    tree = ast.parse((HBM / module).read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == func)
    out = set()
    for n in ast.walk(fn):
        if isinstance(n, ast.Compare) and isinstance(n.left, ast.Name) and n.left.id == var:
            for c in n.comparators:
                elts = c.elts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) else [c]
                out |= {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return out


def test_the_guides_implemented_are_the_registered_ones():
    assert _compared("engines/guides.py", "guide_factory", "kind") == set(GUIDES)
    for g in GUIDES:
        assert callable(guide_factory(g))
    with pytest.raises(HbmError) as e:
        guide_factory("nope")
    assert e.value.problems[0].hint.endswith("guides: " + ", ".join(GUIDES))


def test_the_losses_implemented_are_the_registered_ones():
    assert _compared("engines/svi.py", "make_elbo", "loss") == set(LOSSES)
    kinds = {type(make_elbo(SimpleNamespace(loss=name, particles=1, alpha=0.5))).__name__ for name in LOSSES}
    assert kinds == {"Trace_ELBO", "RenyiELBO"}
    with pytest.raises(HbmError, match="unknown loss 'nope'"):
        make_elbo(SimpleNamespace(loss="nope", particles=1))


def test_the_corrections_implemented_are_the_registered_ones():
    assert _compared("results/diagnostics.py", "check_fit", "want") - {"none"} == set(CORRECTIONS) - {"none"}
    rng = np.random.default_rng(0)
    result = EngineResult(samples={"a": rng.normal(size=(1, 200))},
                          sample_stats={"log_weight": 0.01 * rng.normal(size=(1, 200))})
    for name in CORRECTIONS:
        _, diag = check_fit(result, SimpleNamespace(correct=name, seed=0))
        assert diag["correction"]["requested"] == name
        assert diag["correction"]["applied"] == (name != "none")
    with pytest.raises(HbmError) as e:
        check_fit(result, SimpleNamespace(correct="psys", seed=0))
    assert e.value.problems[0].message == "unknown correction 'psys'"
    assert "did you mean 'psis'?" in e.value.problems[0].hint


# ---------------------------------------------------------------- the spec reads the registries
@pytest.mark.parametrize("key, names", [("inference.guide", GUIDES), ("inference.loss", LOSSES),
                                        ("inference.correct", CORRECTIONS), ("family", tuple(FAMILIES))])
def test_the_spec_takes_every_registered_name_and_lists_them(key, names):
    def spec(value):
        head, _, leaf = key.rpartition(".")
        return {"formula": "y ~ x", **({head: {leaf: value}} if head else {leaf: value})}
    for name in names:
        s = load_spec(spec(name))
        assert (getattr(s.inference, key.split(".")[1]) if "." in key else s.family) == name
    with pytest.raises(HbmError) as e:
        load_spec(spec("zzzzzz"))
    assert e.value.problems[0].message == f"{key} must be one of {', '.join(names)}, got 'zzzzzz'"


def test_the_spec_takes_family_aliases_and_bounds():
    for alias, family in FAMILY_ALIASES.items():
        assert load_spec({"formula": "y ~ x", "family": alias}).family == family
    for bound in BOUND_SPECS:
        s = load_spec({"formula": "y ~ a * x", "params": {"a": "1"}, "bounds": {"a": bound}})
        assert s.bounds == (("a", bound),)


def test_the_spec_copies_no_registry():
    """No module-level tuple, list or mapping of names in spec.py holds a registry's names."""
    registries = {"families": set(FAMILIES), "aliases": set(FAMILY_ALIASES), "guides": set(GUIDES),
                  "losses": set(LOSSES), "corrections": set(CORRECTIONS), "bounds": set(BOUND_SPECS),
                  "links": set(INVERSE_LINKS), "functions": set(OPS)}
    tree = ast.parse((HBM / "spec.py").read_text())
    copies = []
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            elts = value.keys if isinstance(value, ast.Dict) else value.elts
            words = {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            copies += [f"line {node.lineno}: {k}" for k, names in registries.items()
                       if len(words & names) >= 2]
    assert not copies, copies
