"""Golden IR snapshots: formula + data in, ``ModelIR.pretty()`` compared to a file.

Each case in ``IR_CASES`` resolves one formula against the synthetic table of
``make_data()`` and compares the printed IR to ``tests/golden/<case>.txt``; each
case in ``ERROR_CASES`` expects an :class:`HbmError` and compares its
``render()`` to ``tests/golden/errors/<case>.txt``.

To (re)write the snapshots after an intended change, run

    HBM_UPDATE_GOLDEN=1 PYTHONPATH=. .venv/bin/python -m pytest tests/test_golden_ir.py

and then read every changed file (``git diff tests/golden``) before committing:
a snapshot is only as good as the review it got. The ``test_meaning_*`` tests
check the key semantics directly, so they hold even if a wrong snapshot is
blessed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hbm import ir
from hbm.errors import HbmError
from hbm.frontend.parse import parse_formula
from hbm.frontend.priors import parse_prior
from hbm.resolve.linear import resolve
from hbm.data.table import TableInfo

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("HBM_UPDATE_GOLDEN") == "1"


# ---------------------------------------------------------------- data
def make_data() -> pd.DataFrame:
    """200 rows: every kind of response, numeric predictors, text groups, a nesting hierarchy.

    product (12) sits in exactly one category (4), which sits in one division (2);
    g (6 levels) and h (3) are crossed with each other and with everything else.
    """
    rng = np.random.default_rng(0)
    n = 200
    products = [f"p{i:02d}" for i in range(12)]
    category_of = {p: f"c{i % 4}" for i, p in enumerate(products)}
    product = rng.choice(products, n)
    product[:12] = products                      # every product appears
    category = np.array([category_of[p] for p in product])
    division = np.where(np.isin(category, ["c0", "c1"]), "d0", "d1")
    period = rng.integers(1, 4, n)
    period[:3] = [1, 2, 3]
    trials = rng.integers(5, 20, n)
    return pd.DataFrame({
        "y": rng.normal(2.0, 1.5, n).round(3),             # real, some values <= 0
        "count": rng.poisson(3.0, n),                       # counts >= 0
        "binary": rng.integers(0, 2, n),                    # 0/1
        "prop": rng.uniform(0.05, 0.95, n).round(4),        # in (0, 1)
        "pos": (rng.gamma(2.0, 1.5, n) + 0.01).round(4),    # positive
        "k": rng.binomial(trials, 0.3),                     # successes out of n
        "n": trials,
        "s": rng.uniform(0.5, 2.0, n).round(3),             # known standard errors
        "w": rng.uniform(0.0, 3.0, n).round(3),             # weights
        "x": rng.normal(size=n).round(4),
        "z": rng.normal(1.0, 2.0, n).round(4),              # some values <= 0
        "price": rng.uniform(1.0, 10.0, n).round(2),
        "exposure": rng.uniform(0.5, 2.0, n).round(3),
        "g": rng.choice([f"g{i}" for i in range(6)], n),
        "h": rng.choice(["a", "b", "c"], n),
        "product": product,
        "category": category,
        "division": division,
        "period": period,
        "region": rng.choice(["north", "south", "east"], n),
    })


DF = make_data()


def test_data_is_what_the_cases_assume():
    assert len(DF) == 200
    assert (DF.groupby("product")["category"].nunique() == 1).all()
    assert (DF.groupby("category")["division"].nunique() == 1).all()
    assert (DF.groupby("category")["product"].nunique() > 1).all()   # so category/product is not nested
    assert (DF.groupby("g")["h"].nunique() > 1).all()                # crossed
    assert (DF["k"] <= DF["n"]).all() and DF["binary"].isin([0, 1]).all()
    assert (DF["y"] <= 0).any() and (DF["z"] <= 0).any() and (DF["pos"] > 0).all()


# ---------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    name: str
    formula: str
    family: str | None = None
    priors: tuple[tuple[str, object], ...] = ()   # as in a spec's priors: mapping, in order
    noncentered: bool = True
    expect: tuple[str, ...] = ()                  # (errors) text the rendered error must contain

    def build(self) -> ir.ModelIR:
        priors = tuple((k, parse_prior(v, where=f"priors: {k}")) for k, v in self.priors)
        return resolve(parse_formula(self.formula), TableInfo(DF, self.formula), family=self.family,
                       priors=priors, noncentered=self.noncentered)


SEED = "log(count) ~ log(price) | product/category + 1 | product + (1 | category:period)"

IR_CASES = [
    # population-level terms and the intercept
    Case("population", "y ~ x + z"),
    Case("no_intercept_zero", "y ~ 0 + x"),
    Case("no_intercept_minus", "y ~ x - 1"),
    Case("intercept_only", "y ~ 1"),
    Case("factor_reduced", "y ~ factor(period)"),
    Case("factor_full_without_intercept", "y ~ 0 + factor(period)"),
    Case("text_column_is_a_factor", "y ~ region + x"),
    # interactions
    Case("interaction_numeric", "y ~ x * z"),
    Case("interaction_factor_numeric", "y ~ region * x"),
    Case("interaction_without_margin", "y ~ region:x"),
    Case("interaction_two_factors", "y ~ region * h"),
    Case("interaction_distributes", "y ~ (x + z):region"),
    # transforms and offsets
    Case("transforms", "y ~ log(price) + sqrt(pos) + exp(x) + center(z) + scale(price)"),
    Case("offset", "count ~ x + offset(log(exposure))", family="poisson"),
    # group terms
    Case("group_intercept", "y ~ x + (1 | g)"),
    Case("group_slope_implies_intercept", "y ~ x + (x | g)"),
    Case("group_three_correlated", "y ~ x + z + (1 + x + z | g)"),
    Case("group_uncorrelated", "y ~ x + (1 + x || g)"),
    Case("group_slope_only", "y ~ x + (0 + x | g)"),
    Case("group_factor_slope", "y ~ (1 + region | g)"),
    Case("group_centred", "y ~ (1 | g)", noncentered=False),
    Case("nested_two", "y ~ (1 | category/product)"),
    Case("nested_three", "y ~ (1 | division/category/product)"),
    Case("nested_uncorrelated_slope", "y ~ x + (x || category/product)"),
    Case("pairs", "y ~ (1 | category:period)"),
    Case("crossed", "y ~ x + (1 | g) + (1 | h) + (1 | g:h)"),
    # chains
    Case("chain_depth_1", "y ~ x | product"),
    Case("chain_depth_2", "y ~ x | product/category"),
    Case("chain_depth_3", "y ~ x | product/category/division"),
    Case("chain_of_pairs", "y ~ x | product:period/product"),
    Case("chain_without_intercept", "y ~ 0 + x | product/category"),
    Case("chain_with_group_term", "y ~ x | product/category + (1 | g)"),
    Case("bare_intercept", "y ~ 1 | g"),
    Case("bare_intercept_chain", "y ~ x + 1 | product/category"),
    Case("bare_intercept_without_population", "y ~ 0 + 1 | g"),
    Case("seed_inferred", SEED),
    Case("seed_with_priors", SEED, family="poisson", priors=(
        ("log(price)", "normal(-2, 1)"), ("sd(log(price) | category)", 1),
        ("sd(log(price)|product)", 2), ("sd(1 | product)", 3), ("sd(1 | category:period)", 3),
        ("Intercept", "normal(0, 5)"))),
    # families and links
    Case("normal_identity_written", "identity(y) ~ x"),
    Case("student_t", "y ~ x", family="student_t"),
    Case("poisson_inferred", "log(count) ~ x"),
    Case("negative_binomial", "count ~ x + (1 | g)", family="negative_binomial"),
    Case("bernoulli_inferred", "logit(binary) ~ x"),
    Case("bernoulli_probit_inferred", "probit(binary) ~ x"),
    Case("binomial_inferred", "k | trials(n) ~ x"),
    Case("binomial_probit", "probit(k) | trials(n) ~ x + (1 | g)", family="binomial"),
    Case("gamma_inferred", "log(pos) ~ x"),
    Case("gamma_inverse", "inverse(pos) ~ x", family="gamma"),
    Case("lognormal", "pos ~ x", family="lognormal"),
    Case("beta_inferred", "logit(prop) ~ x"),
    Case("beta", "prop ~ x", family="beta"),
    Case("count_without_link_is_normal", "count ~ x"),
    # additions
    Case("se", "y | se(s) ~ 1 + (1 | g)"),
    Case("weights", "y | weights(w) ~ x"),
    Case("se_and_weights", "y | se(s) + weights(w) ~ x"),
    Case("trials_and_weights", "k | trials(n) + weights(w) ~ x"),
    # priors
    Case("custom_priors", "y ~ x + (1 + x | g)", priors=(
        ("x", "student_t(3, 0, 1)"), ("sd(x | g)", "half_cauchy(1)"), ("cor(1, x | g)", "lkj(2)"),
        ("sigma", "exponential(1)"))),
    Case("fixed_priors", "y ~ x + (1 | g) + (1 | h)", priors=(
        ("sd(1 | g)", 0.5), ("sd(1|h)", "2"), ("sigma", 1))),
    Case("prior_names_ignore_spaces", "log(count) ~ log(price) + (log(price) | category)", priors=(
        ("log( price )", "normal(-1, 0.5)"), ("sd(log(price)|category)", "half_normal(0.5)"),
        ("cor(1,log(price)|category)", "lkj(3)"))),
]

ERROR_CASES = [
    Case("unknown_column", "y ~ x + prce", expect=("unknown column 'prce'", "did you mean 'price'")),
    Case("unknown_group_column", "y ~ x + (1 | regoin)", expect=("did you mean 'region'",)),
    Case("unknown_factor_column", "y ~ factor(perod)", expect=("did you mean 'period'",)),
    Case("chain_reversed", "log(count) ~ log(price) | category/product",
         expect=("not nested", "did you mean 'log(price) | product/category'")),
    Case("chain_not_nested", "y ~ x | g/h", expect=("'g' is not nested in 'h'",)),
    Case("log_of_non_positive", "y ~ log(z)", expect=("log() of 'z'", "<= 0")),
    Case("sqrt_of_negative", "y ~ sqrt(x)", expect=("sqrt() of 'x'",)),
    Case("log_of_text", "y ~ log(region)", expect=("'region' holds text",)),
    Case("offset_of_text", "y ~ offset(region)", expect=("'region' holds text",)),
    Case("prior_for_missing_term", "y ~ x + (1 | g)", priors=(("sd(z | g)", 1),),
         expect=("'sd(z | g)'", "not a parameter", "did you mean 'sd(1 | g)'")),
    Case("prior_on_wrong_support", "y ~ x", priors=(("x", "exponential(1)"),),
         expect=("positive values",)),
    Case("binomial_without_trials", "k ~ x", family="binomial", expect=("trials(n)",)),
    Case("trials_with_poisson", "count | trials(n) ~ x", family="poisson", expect=("binomial",)),
    Case("poisson_negative_counts", "y ~ x", family="poisson", expect=("negative values",)),
    Case("bernoulli_not_binary", "y ~ x", family="bernoulli", expect=("0 and 1",)),
    Case("link_not_allowed", "logit(y) ~ x", expect=("logit()", "normal")),
    Case("log_link_with_normal", "log(pos) ~ x", family="normal", expect=("lognormal",)),
    Case("number_in_formula", "y ~ 2 + x", expect=("0 or 1",)),
    Case("minus_a_predictor", "y ~ x - z", expect=("only the intercept",)),
    Case("two_chains_for_one_term", "y ~ x | g + x | h", expect=("two chains",)),
]


def _compare(path: Path, actual: str) -> None:
    actual = actual.rstrip("\n") + "\n"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"no snapshot {path}; run with HBM_UPDATE_GOLDEN=1 and review it"
    assert actual == path.read_text()


@pytest.mark.parametrize("case", IR_CASES, ids=[c.name for c in IR_CASES])
def test_golden_ir(case):
    _compare(GOLDEN / f"{case.name}.txt", case.build().pretty())


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.name for c in ERROR_CASES])
def test_golden_error(case):
    with pytest.raises(HbmError) as info:
        case.build()
    text = info.value.render()
    for needle in case.expect:
        assert needle in text
    _compare(GOLDEN / "errors" / f"{case.name}.txt", text)


def test_no_stale_snapshots():
    names = {c.name for c in IR_CASES}
    errors = {c.name for c in ERROR_CASES}
    assert len(names) == len(IR_CASES) and len(errors) == len(ERROR_CASES)
    assert {p.stem for p in GOLDEN.glob("*.txt")} == names
    assert {p.stem for p in (GOLDEN / "errors").glob("*.txt")} == errors


def test_ir_compares_by_value():
    a, b = IR_CASES[0].build(), IR_CASES[0].build()
    assert a == b and hash(a) == hash(b)


# ---------------------------------------------------------------- meaning, checked without snapshots
def _ir(formula: str, **kw) -> ir.ModelIR:
    return Case("_", formula, **kw).build()


def _pop(m: ir.ModelIR) -> dict[str, ir.PopulationTerm]:
    return {t.name: t for t in m.population}


def test_meaning_intercept_control():
    assert "Intercept" in _pop(_ir("y ~ x"))
    for f in ["y ~ 0 + x", "y ~ x - 1", "y ~ -1 + x", "y ~ x + 0", "y ~ 1 + 0 + x"]:
        assert list(_pop(_ir(f))) == ["x"], f


def test_meaning_treatment_coding():
    assert _pop(_ir("y ~ factor(period)"))["factor(period)"].levels == ("2", "3")
    assert _pop(_ir("y ~ 0 + factor(period)"))["factor(period)"].levels == ("1", "2", "3")
    assert _pop(_ir("y ~ region"))["region"].levels == ("north", "south")      # "east" is the reference
    m = _pop(_ir("y ~ region * x"))
    assert list(m) == ["Intercept", "region", "x", "region:x"]
    assert m["region:x"].levels == ("north", "south")
    assert _pop(_ir("y ~ region:x"))["region:x"].levels == ("east", "north", "south")
    assert len(_pop(_ir("y ~ region * h"))["region:h"].levels) == 4


def test_meaning_varying_slope_brings_its_intercept():
    (b,) = _ir("y ~ (x | g)").groups
    assert b.term_labels == ("1", "x") and b.cor_prior is not None
    (b,) = _ir("y ~ (0 + x | g)").groups
    assert b.term_labels == ("x",) and b.cor_prior is None
    blocks = _ir("y ~ (1 + x || g)").groups
    assert [b.term_labels for b in blocks] == [("1",), ("x",)]
    assert all(b.cor_prior is None for b in blocks)


def test_meaning_lme4_nesting_is_outer_first():
    m = _ir("y ~ (1 | category/product)")
    assert [p.name for p in m.plates] == ["category", "category:product"]
    assert [b.plate for b in m.groups] == ["category", "category:product"]
    assert m.plate("category:product").size == 12
    m = _ir("y ~ (1 | category:period)")
    assert [(p.name, p.columns, p.size) for p in m.plates] == [("category:period", ("category", "period"), 12)]


def test_meaning_chain_is_innermost_first():
    m = _ir("y ~ x | product/category/division")
    (c,) = m.chains
    assert c.plates == ("product", "category", "division") and c.top == "x"
    assert m.nestings == (("product", "category"), ("category", "division"))
    assert _pop(m)["x"].in_chain
    (c,) = _ir("y ~ 0 + 1 | g").chains
    assert c.term == "Intercept" and c.top is None
    (c,) = _ir("y ~ 1 | g").chains
    assert c.top == "Intercept"


def test_meaning_seed_model():
    m = _ir(SEED)
    assert (m.family.name, m.family.link, m.family.inferred) == ("poisson", "log", True)
    assert [(c.term, c.plates) for c in m.chains] == [("log(price)", ("product", "category")),
                                                      ("Intercept", ("product",))]
    assert [b.label for b in m.groups] == ["1 | category:period"]
    assert m.parameter_names() == ("Intercept", "log(price)", "sd(1 | category:period)",
                                   "sd(log(price) | product)", "sd(log(price) | category)",
                                   "sd(1 | product)")


@pytest.mark.parametrize("formula, family, link", [
    ("y ~ x", "normal", "identity"), ("log(count) ~ x", "poisson", "log"),
    ("logit(binary) ~ x", "bernoulli", "logit"), ("probit(binary) ~ x", "bernoulli", "probit"),
    ("k | trials(n) ~ x", "binomial", "logit"), ("logit(prop) ~ x", "beta", "logit"),
    ("count ~ x", "normal", "identity"), ("binary ~ x", "normal", "identity"),
])
def test_meaning_inferred_family(formula, family, link):
    fam = _ir(formula).family
    assert (fam.name, fam.link, fam.inferred) == (family, link, True)


def test_meaning_se_replaces_sigma():
    assert [p.name for p in _ir("y | se(s) ~ 1").family.params] == []
    assert [p.name for p in _ir("y | weights(w) ~ 1").family.params] == ["sigma"]


# ---------------------------------------------------------------- known bugs (see the report)
def test_only_the_first_factor_is_fully_coded_without_intercept():
    p = _pop(_ir("y ~ 0 + region + h"))
    assert len(p["region"].levels) == 3
    assert len(p["h"].levels) == 2


def test_duplicate_varying_term_points_at_the_duplicate():
    f = "y ~ (1 | h) + (1 | g) + 1 | g"
    with pytest.raises(HbmError) as info:
        _ir(f)
    span = info.value.problems[0].span
    assert span.start in (f.index("(1 | g)"), f.index("1 | g", f.index("(1 | g)") + 3))


def test_reversed_order_hint_keeps_the_whole_chain():
    with pytest.raises(HbmError) as info:
        _ir("y ~ x | product/division/category")
    assert "did you mean 'x | product/category/division'" in info.value.render()
