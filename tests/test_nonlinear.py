"""Non-linear formulas (SPEC section 1): grammar, names, errors, log density, dose 0, recovery.

The hierarchical four-parameter logistic (4PL) dose-response model is the running example:

    response ~ bottom + (top - bottom) / (1 + exp(hill * (log(dose) - log_ic50)))

with ``bottom``/``top`` varying by plate, ``log_ic50`` a chain compound -> target -> population,
and ``hill`` positive (sampled itself, with a lognormal prior). Its compiled log density is held
to a hand-written NumPyro 4PL with the same hierarchy and site names, at random parameter values
(centred and non-centred), and the
controls at dose 0 must give finite values and gradients equal to the top asymptote's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpyro import handlers
from numpyro.infer.util import log_density

import hbm
from hbm.frontend import nl_ast as N
from hbm.frontend.ast import Response
from hbm.errors import HbmError
from hbm.frontend.parse import parse_formula, parse_nonlinear
from hbm.pipeline.simulate import simulate
from hbm.spec import load_spec

import hand_4pl as hand
from hand_4pl import prior_draw

FOUR_PL = "response ~ bottom + (top - bottom) / (1 + exp(hill * (log(dose) - log_ic50)))"
PARAMS = {"bottom": "1 + (1 | plate)", "top": "1 + (1 | plate)", "log_ic50": "1 | compound/target", "hill": "1"}
PRIORS = {
    "bottom": "normal(0, 20)", "top": "normal(100, 20)", "sd(bottom | plate)": "half_normal(5)",
    "sd(top | plate)": "half_normal(5)", "log_ic50": "normal(0, 3)", "sd(log_ic50 | target)": "half_normal(2)",
    "sd(log_ic50 | compound)": "half_normal(2)", "hill": "lognormal(0, 0.5)", "sigma": "exponential(0.2)",
}
DOSES = np.array([0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])


def spec_of(formula=FOUR_PL, params=PARAMS, priors=PRIORS, bounds=None, **kw) -> dict:
    return {"formula": formula, "params": dict(params), "bounds": {"hill": "positive"} if bounds is None else bounds,
            "priors": dict(priors), "family": "normal", **kw}


def assay(seed=0, compounds=12, targets=3, plates=4, doses=DOSES, reps=2) -> pd.DataFrame:
    """A small 4PL data set: every compound at every dose (controls at 0), in replicate."""
    rng = np.random.default_rng(seed)
    comp = np.repeat(np.arange(compounds), len(doses) * reps)
    dose = np.tile(np.repeat(doses, reps), compounds)
    target = comp % targets
    plate = rng.integers(0, plates, len(comp))
    lic = -1 + rng.normal(size=targets)[target] + 0.5 * rng.normal(size=compounds)[comp]
    top = 100 + 3 * rng.normal(size=plates)[plate]
    bottom = 5 + 2 * rng.normal(size=plates)[plate]
    with np.errstate(divide="ignore"):
        mu = bottom + (top - bottom) / (1 + np.exp(1.2 * (np.log(dose) - lic)))
    return pd.DataFrame({
        "response": mu + rng.normal(0, 5, len(comp)), "dose": dose,
        "compound": [f"c{i:02d}" for i in comp], "target": [f"t{i}" for i in target],
        "plate": [f"p{i}" for i in plate]})


DF = assay()


# ====================================================================== grammar
ROUND_TRIPS = [
    FOUR_PL,
    "y ~ a * exp(-b * x)",
    "y ~ -x^2",
    "y ~ (-x)^2",
    "y ~ a - (b - c)",
    "y ~ a / (b * c)",
    "y ~ a / b * c",
    "y ~ 2^-1^3",
    "y ~ (a^b)^c",
    "y ~ a * -b",
    "y ~ a - -b + 1e-05 * x",
    "y | se(s) ~ inv_logit(a + b * x)",
    "log(y) ~ log1p(a) + expm1(b) + sqrt(abs(c)) - softplus(d) / logit(e)",
]
CANONICAL = [
    ("y~a*exp( - b*x )", "y ~ a * exp(-b * x)"),
    ("y ~ ((a)) + (b * c)", "y ~ a + b * c"),
    ("y ~ (a + b) + c", "y ~ a + b + c"),
    ("y ~ a ^ (b ^ c)", "y ~ a^b^c"),
    ("y ~ 1.50 * x", "y ~ 1.5 * x"),
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_round_trip(text):
    f = parse_nonlinear(text)
    assert str(f) == text
    assert parse_nonlinear(str(f)) == f
    for node in N.walk(f.rhs):  # every node's span covers exactly the text it prints as
        assert text[node.span.start:node.span.end] == str(node)


@pytest.mark.parametrize("given_text, canonical", CANONICAL)
def test_canonical_text(given_text, canonical):
    f = parse_nonlinear(given_text)
    assert str(f) == canonical
    assert parse_nonlinear(canonical) == f


def test_parse_builds_the_tree_the_operators_mean():
    f = parse_nonlinear("y ~ a - b * c^-d")
    assert f.rhs == N.Binary("-", N.Name("a"), N.Binary("*", N.Name("b"), N.Binary(
        "^", N.Name("c"), N.Negate(N.Name("d")))))
    assert parse_nonlinear("y ~ -a^2").rhs == N.Negate(N.Binary("^", N.Name("a"), N.Number(2.0)))


_LEAF = st.one_of(st.sampled_from(["a", "b", "x", "dose", "log_ic50"]).map(N.Name),
                  st.sampled_from([0.0, 1.0, 2.0, 0.5, 1e-05, 250.0]).map(N.Number))
_EXPR = st.recursive(_LEAF, lambda kids: st.one_of(
    st.tuples(st.sampled_from("+-*/^"), kids, kids).map(lambda t: N.Binary(*t)),
    kids.map(N.Negate),
    st.tuples(st.sampled_from(N.FUNCTIONS), kids).map(lambda t: N.Apply(*t))), max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(_EXPR)
def test_generated_trees_print_and_parse_back(expr):
    f = N.NonlinearFormula(Response("y"), expr)
    text = str(f)
    assert parse_nonlinear(text) == f
    assert str(parse_nonlinear(text)) == text


@pytest.mark.parametrize("text, message, marked", [
    ("y ~ a + lg(x)", "unknown function 'lg'", "lg"),
    ("y ~ a + * x", "unexpected '*'", "*"),
    ("y ~ a ^ ^ 2", "unexpected '^'", "^"),
    ("y ~ (a + b", "ends too early", None),
    ("y ~ a | g", "unexpected '|'", "|"),
    ("y ~ a $ b", "unexpected character '$'", "$"),
])
def test_syntax_errors_point_at_the_problem(text, message, marked):
    with pytest.raises(HbmError) as e:
        parse_nonlinear(text)
    p = e.value.problems[0]
    assert message in p.message and "^" in p.render()
    if marked is not None:
        assert text[p.span.start:p.span.end] == marked


def test_the_linear_grammar_is_unchanged():
    assert str(parse_formula("y ~ x + (1 | g)")) == "y ~ x + (1 | g)"
    with pytest.raises(HbmError, match="unexpected"):
        parse_formula("y ~ a^2")


# ====================================================================== names and errors
def compile_(spec: dict, df=DF, noncentered=None):
    spec = load_spec(spec)
    if noncentered is not None:
        spec = spec.with_overrides([f"noncentered={str(noncentered).lower()}"])
    return hbm.compile(spec, df, devices=1)


def marked(err: HbmError, k: int = 0) -> str:
    p = err.problems[k]
    return p.source[p.span.start:p.span.end]


def test_names_follow_the_spec():
    df = DF.assign(x=np.linspace(-1, 1, len(DF)), f=np.resize(["u", "v", "w"], len(DF)))
    spec = spec_of(formula="response ~ p * exp(-q * dose)",
                   params={"p": "1 + x + (1 + x | plate)", "q": "0 + factor(f) + (1 | compound)"},
                   bounds={"q": "positive"}, priors={})
    model = compile_(spec, df)
    names = model.ir.parameter_names()
    assert names[:4] == ("p", "p:x", "sd(p | plate)", "sd(p:x | plate)")
    # q is positive with a richer formula than 1: exp of its linear predictor, named log(q)
    assert "cor(p, p:x | plate)" in names and "log(q):factor(f)" in names and "sd(log(q) | compound)" in names
    assert names[-1] == "sigma"
    sites = handlers.trace(handlers.seed(model.numpyro_model, 0)).get_trace(**model.data)
    assert {"p", "p:x", "r(p + p:x | plate)", "log(q):factor(f)", "r(log(q) | compound)", "sigma"} <= set(sites) | {
        s.removesuffix("_decentered") for s in sites}
    from hbm.results.outputs import build_outputs
    values = {k: np.asarray(v["value"])[None, None] for k, v in sites.items()
              if v["type"] in ("sample", "deterministic")}
    out = build_outputs(model.ir, values, model.encoding)
    from hbm.results.summary import element_names
    elements = [n for v in out.vars for n in element_names(v, out.coords, out.plate_dims)]
    assert {"p", "p:x", "sd(p | plate)", "p[plate=p0]", "p:x[plate=p3]", "log(q):factor(f)[u]",
            "q:factor(f)[u]", "log(q)[compound=c07]", "sigma"} <= set(elements)


def test_check_prints_the_expression_tree_and_the_parameters():
    text = compile_(spec_of()).describe()
    for line in ["expression", "  +", "  |-- bottom", "      `-- inv_logit",
                 "|-- hill                 parameter, positive",
                 "log(dose)        data, -inf in some rows",
                 "limit     where log(dose) = -inf (24 rows): bottom + (top - bottom)",
                 "parameter log_ic50 ~ 1 | compound/target",
                 "log_ic50: log_ic50 <- log_ic50[target] <- log_ic50[compound]",
                 "sd(top | plate)", "parameter hill ~ 1   [positive: the prior is on hill itself]"]:
        assert line in text, line


def test_unknown_name_has_a_caret_and_a_suggestion():
    with pytest.raises(HbmError) as e:
        compile_(spec_of(formula=FOUR_PL.replace("(log(dose) - log_ic50)", "(log(dose) - log_ic5)")))
    p = e.value.problems[0]
    assert "'log_ic5' is neither a column nor a parameter" in p.message
    assert marked(e.value) == "log_ic5" and "did you mean 'log_ic50'?" in p.hint and "^~~~~~~" in p.render()


def test_undeclared_parameter_and_unused_parameter():
    with pytest.raises(HbmError) as e:
        compile_(spec_of(params={k: v for k, v in PARAMS.items() if k != "hill"} | {"slope": "1"}, bounds={}))
    msgs = [p.message for p in e.value.problems]
    assert any("'hill' is neither a column nor a parameter declared under params:" in m for m in msgs)
    assert any("parameter 'slope' is declared under params: but the formula does not use it" in m for m in msgs)
    assert marked(e.value, 0) == "hill"


def test_a_parameter_cannot_share_a_column_name_or_the_response():
    with pytest.raises(HbmError, match="'plate' is both a column and a parameter") as e:
        compile_(spec_of(formula="response ~ top * plate", params={"top": "1", "plate": "1"}, bounds={},
                         priors={}))
    assert marked(e.value) == "plate"
    with pytest.raises(HbmError, match="the response 'response' cannot appear"):
        compile_(spec_of(formula="response ~ top * response", params={"top": "1"}, bounds={}, priors={}))


def test_errors_in_a_parameter_formula_name_the_parameter():
    with pytest.raises(HbmError) as e:
        compile_(spec_of(params=PARAMS | {"top": "1 + (1 | plat)"}))
    p = e.value.problems[0]
    assert p.where == "params: top" and "unknown column 'plat'" in p.message
    assert marked(e.value) == "plat" and "did you mean 'plate'?" in p.hint


def test_prior_names_are_checked_with_a_suggestion():
    with pytest.raises(HbmError) as e:
        compile_(spec_of(priors=PRIORS | {"sd(log_ic50 | compund)": "half_normal(1)"}))
    assert "did you mean 'sd(log_ic50 | compound)'?" in e.value.problems[0].hint


def test_a_limit_that_depends_on_an_unbounded_sign_is_an_error():
    with pytest.raises(HbmError) as e:
        compile_(spec_of(bounds={}, priors=PRIORS | {"hill": "normal(0, 1)"}))   # hill real: a real prior
    p = e.value.problems[0]
    assert "log(dose) = -inf (24 rows) the formula has no limit" in p.message
    assert "depends on 'hill'" in p.message and "bounds" in p.hint
    assert marked(e.value) == "hill * (log(dose) - log_ic50)"


def test_log_of_negative_data_is_an_error_with_a_caret():
    with pytest.raises(HbmError) as e:
        compile_(spec_of(), DF.assign(dose=DF["dose"] - 0.05))
    assert "'log(dose)' is undefined" in e.value.message and marked(e.value) == "log(dose)"


# ====================================================================== log density
def codes(col, df=DF):
    return hand.codes(col, df)


def hand_4pl(df=DF, noncentered=False):
    return hand.hand_4pl(df, noncentered)


@pytest.mark.parametrize("noncentered", [False, True])
def test_log_density_equals_a_hand_written_4pl(noncentered):
    compiled = compile_(spec_of(), noncentered=noncentered)
    hand = hand_4pl(noncentered=noncentered)
    args = (compiled.rows, compiled.consts)
    for seed in range(3):
        params = prior_draw(hand, seed)
        lp_hand, _ = log_density(hand, (), {}, params)
        lp_comp, tr = log_density(compiled.numpyro_model, args, {}, params)
        latent = {k for k, v in tr.items() if v["type"] == "sample" and not v.get("is_observed", False)}
        assert latent == set(params)
        assert np.isfinite(float(lp_hand))
        np.testing.assert_allclose(float(lp_comp), float(lp_hand), rtol=1e-5, atol=1e-3)


def _grad(model, args, params, kwargs=None):
    return jax.jit(jax.grad(lambda p, a: log_density(model, a, kwargs or {}, p)[0]))(params, args)


def test_controls_at_dose_zero_give_finite_values_and_gradients():
    compiled = compile_(spec_of(), noncentered=False)
    hand = hand_4pl()
    params = prior_draw(hand, 7)
    g_comp = _grad(compiled.numpyro_model, (compiled.rows, compiled.consts), params)
    g_hand = _grad(hand, (), params)
    for k in params:
        assert np.isfinite(np.asarray(g_comp[k])).all(), k
        np.testing.assert_allclose(np.asarray(g_comp[k]), np.asarray(g_hand[k]), rtol=2e-3, atol=2e-3, err_msg=k)


def test_controls_alone_have_the_top_asymptote_likelihood():
    controls = DF[DF["dose"] == 0].reset_index(drop=True)
    compiled = compile_(spec_of(), controls, noncentered=False)
    rows, consts = compiled.rows, compiled.consts
    assert np.isfinite(np.asarray(rows.data["log(dose)"])).all()  # finite stand-ins, never -inf
    params = prior_draw(hand_4pl(controls), 3)
    params["hill"] = jnp.float32(0.7)
    model = compiled.numpyro_model
    lp, _ = log_density(model, (rows, consts), {}, params)
    prior, _ = log_density(model, (rows, consts), {"mode": "latent"}, params)
    plate, _ = codes("plate", controls)
    top = params["top"] + params["r(top | plate)"][plate]
    asymptote = dist.Normal(top, params["sigma"]).log_prob(jnp.asarray(controls["response"], jnp.float32)).sum()
    np.testing.assert_allclose(float(lp - prior), float(asymptote), rtol=1e-5, atol=1e-3)
    grad = _grad(model, (rows, consts), params)
    grad_prior = _grad(model, (rows, consts), params, {"mode": "latent"})
    for k in params:
        assert np.isfinite(np.asarray(grad[k])).all(), k
    # the likelihood of controls does not depend on the slope or the IC50s
    for k in ("hill", "log_ic50", "log_ic50[compound]", "bottom"):
        np.testing.assert_allclose(np.asarray(grad[k]), np.asarray(grad_prior[k]), atol=1e-5, err_msg=k)


# ====================================================================== simulation and recovery
SIM_SPEC = spec_of(priors=PRIORS | {"sd(log_ic50 | target)": "half_normal(1)",
                                    "sd(log_ic50 | compound)": "half_normal(1)"}, simulate={
    "rows": 1200, "seed": 4,
    "columns": {"target": {"levels": 4}, "compound": {"levels": 40, "within": "target"},
                "plate": {"levels": 6},
                "dose": {"doses": [0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100],
                         "per": "compound", "count": [8, 10]}},
    "params": {"bottom": 2, "top": 100, "sd(bottom | plate)": 2, "sd(top | plate)": 3, "log_ic50": -1,
               "sd(log_ic50 | target)": 0.8, "sd(log_ic50 | compound)": 0.8, "hill": 1.1, "sigma": 5}})


def test_simulated_dose_design():
    df, truth = simulate(load_spec(SIM_SPEC))
    series = df.groupby("compound")["dose"]
    positive = df[df["dose"] > 0].groupby("compound")["dose"].nunique()
    assert positive.between(8, 10).all() and (series.min() == 0).all()       # controls for every compound
    assert (df.groupby(["compound", "dose"]).size() >= 2).all()              # replicates
    assert (df.groupby("compound")["target"].nunique() == 1).all()           # compounds within targets
    assert truth["hill"] == pytest.approx(1.1) and "log_ic50[compound=c00]" in truth


def test_nuts_recovers_compound_ic50s_and_the_run_has_curves(tmp_path):
    spec = load_spec(SIM_SPEC)
    df, truth = simulate(spec)
    result = hbm.fit(hbm.compile(spec, df), engine="nuts", chains=1, warmup=400, samples=400, seed=1)
    s = result.summary()
    names = [n for n in truth if n.startswith("log_ic50[compound=")]
    assert len(names) == 40
    t = np.array([truth[n] for n in names])
    covered = (s.loc[names, "q5"].to_numpy() <= t) & (t <= s.loc[names, "q95"].to_numpy())
    assert covered.mean() >= 0.8, covered.mean()
    assert np.corrcoef(s.loc[names, "mean"], t)[0, 1] > 0.9
    lo, hi = s.loc["hill", ["q5", "q95"]]
    assert lo - 0.05 <= truth["hill"] <= hi + 0.05

    from hbm.results.curves import curve_draws
    c = curve_draws(result, levels=["c00", "c07"], draws=50)
    assert c["by"] == "compound" and c["leaf"] == "log(dose)" and c["limit"] == "log(dose) = -inf"
    e = c["levels"]["c07"]
    assert len(e["x"]) + len(e["limit_y"]) == (df["compound"] == "c07").sum() and len(e["limit_y"]) >= 2
    assert (np.diff(e["q50"]) <= 1e-6).all()                      # an inhibition curve falls with the dose
    assert abs(e["limit_fit"] - e["q50"][0]) < 2.0                # the controls' limit continues it
    path = result.save(tmp_path / "run")                          # hbm fit writes the same directory
    assert (path / "curves.png").stat().st_size > 10_000 and (path / "summary.csv").exists()


def test_data_rich_chains_are_centred_and_group_terms_are_not():
    rich = assay(compounds=4, targets=2, reps=8)                 # 64 rows per compound
    nl = compile_(spec_of(), rich).ir
    centred = {p.name: not p.model.noncentered for p in nl.params}
    assert centred == {"bottom": False, "top": False, "log_ic50": True, "hill": False}
    assert "parameter log_ic50 ~ 1 | compound/target   [centred: data-rich levels]" in nl.pretty()
    assert not any(not p.model.noncentered for p in compile_(spec_of()).ir.params)   # 16 rows per compound
    assert all(not p.model.noncentered for p in compile_(spec_of(), rich, noncentered=False).ir.params)


def test_rows_sharded_over_two_devices_give_the_same_log_density():
    import subprocess
    import sys
    from pathlib import Path
    code = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, sys.argv[1])
import jax, numpy as np, hbm
from numpyro.infer.util import log_density
from test_nonlinear import DF, hand_4pl, prior_draw, spec_of
from hbm.spec import load_spec
spec = load_spec(spec_of()).with_overrides(["noncentered=false"])
df = DF.iloc[:-1]                                   # an odd number of rows: one padded row
one, two = (hbm.compile(spec, df, devices=d) for d in (1, 2))
p = prior_draw(hand_4pl(df), 0)
lp = [float(jax.jit(lambda q, d: log_density(m.numpyro_model, (), d, q)[0])(p, m.data)) for m in (one, two)]
g = jax.jit(jax.grad(lambda q, d: log_density(two.numpyro_model, (), d, q)[0]))(p, two.data)
assert two.n_devices == 2 and two.rows.mask.shape[0] == len(df) + 1
assert abs(lp[0] - lp[1]) < 1e-3 * abs(lp[0]), lp
assert all(np.isfinite(np.asarray(v)).all() for v in g.values())
"""
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]



# ====================================================================== bounds, priors and numbers
# A bounded parameter whose formula is `1` is sampled itself (its prior is on it); one with a richer
# formula is exp (inv_logit) of its linear predictor, whose coefficients carry the link in their names.
import scipy.stats as sps  # noqa: E402


def decay(seed=0, n=120) -> pd.DataFrame:
    """y = a exp(-b x) + noise, with a factor H and a group g."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 3.0, n)
    return pd.DataFrame({"y": 3.0 * np.exp(-0.5 * x) + rng.normal(0, 0.1, n), "x": x,
                         "z": rng.normal(size=n), "H": np.resize(["Bentazone", "Glyphosate"], n),
                         "g": [f"g{i}" for i in rng.integers(0, 4, n)]})


DECAY = decay()


def decay_spec(b="1", bounds=None, priors=None, formula="y ~ a * exp(-b * x)", **params) -> dict:
    return {"formula": formula, "params": {"a": "1", "b": b, **params},
            "bounds": {"b": "positive"} if bounds is None else bounds, "family": "normal",
            "priors": {"a": "normal(0, 5)", "sigma": "exponential(1)"} | (priors or {})}


def log_prior(model, params):
    return float(log_density(model.numpyro_model, (model.rows, model.consts), {"mode": "latent"}, params)[0])


def elements(model, params) -> dict:
    """The named outputs (element name -> value) at one value of the model's latent sites."""
    from hbm.results.outputs import build_outputs
    from hbm.results.summary import element_names
    sites = handlers.trace(handlers.substitute(handlers.seed(model.numpyro_model, 0), data=params)).get_trace(
        model.rows, model.consts, mode="latent")
    values = {k: np.asarray(v["value"])[None, None] for k, v in sites.items()
              if v["type"] in ("sample", "deterministic")}
    out = build_outputs(model.ir, values, model.encoding)
    return {n: float(x) for v in out.vars
            for n, x in zip(element_names(v, out.coords, out.plate_dims), np.asarray(v.values).reshape(-1))}


@pytest.mark.parametrize("prior, logpdf", [
    ("normal(0, 1)", lambda b: sps.halfnorm.logpdf(b, scale=1.0)),
    ("normal(0.5, 0.3)", lambda b: sps.truncnorm.logpdf(b, -0.5 / 0.3, np.inf, loc=0.5, scale=0.3)),
    ("lognormal(0, 0.5)", lambda b: sps.lognorm.logpdf(b, 0.5)),
    ("gamma(2, 4)", lambda b: sps.gamma.logpdf(b, 2.0, scale=0.25)),
])
def test_a_positive_parameter_of_formula_1_has_its_prior_on_itself(prior, logpdf):
    model = compile_(decay_spec(priors={"b": prior}), DECAY, noncentered=True)
    sites = handlers.trace(handlers.seed(model.numpyro_model, 0)).get_trace(model.rows, model.consts)
    assert "b" in sites and sites["b"]["type"] == "sample" and "b_decentered" not in sites
    for b in (0.05, 0.7, 2.5):
        params = {"a_decentered": 0.4, "b": b, "sigma": 0.3}   # a = 5 * 0.4 (a's prior is non-centred)
        expected = sps.norm.logpdf(2.0, 0, 5) + np.log(5.0) + logpdf(b) + sps.expon.logpdf(0.3)
        np.testing.assert_allclose(log_prior(model, params), expected, rtol=1e-5)


def hand_decay(df=DECAY, b_prior=None):
    x, y = (jnp.asarray(df[c].to_numpy(), jnp.float32) for c in ("x", "y"))

    def model():
        a = numpyro.sample("a", dist.Normal(0.0, 5.0))
        b = numpyro.sample("b", b_prior or dist.HalfNormal(1.0))
        sigma = numpyro.sample("sigma", dist.Exponential(1.0))
        with numpyro.plate("rows", len(y)):
            numpyro.sample("y", dist.Normal(a * jnp.exp(-b * x), sigma), obs=y)
    return model


def test_a_positive_parameter_of_formula_1_log_density_and_summary():
    model = compile_(decay_spec(priors={"b": "normal(0, 1)"}), DECAY, noncentered=False)
    hand = hand_decay()
    for seed in range(3):
        params = prior_draw(hand, seed)
        lp_hand = log_density(hand, (), {}, params)[0]
        lp = log_density(model.numpyro_model, (model.rows, model.consts), {}, params)[0]
        np.testing.assert_allclose(float(lp), float(lp_hand), rtol=1e-5, atol=1e-3)
    assert elements(model, {"a": 2.0, "b": 0.7, "sigma": 0.3}) == pytest.approx(
        {"a": 2.0, "b": 0.7, "sigma": 0.3})                    # b itself, and no log(b)
    s = hbm.fit(compile_(decay_spec(priors={"b": "normal(0, 1)"}), DECAY), engine="map", steps=3000).summary()
    assert "log(b)" not in s.index
    assert abs(s.loc["b", "mean"] - 0.5) < 0.05 and abs(s.loc["a", "mean"] - 3.0) < 0.2  # truth: 0.5, 3


def test_a_fixed_positive_parameter_is_fixed_on_its_own_scale():
    model = compile_(decay_spec(priors={"b": 0.5}), DECAY, noncentered=False)
    assert elements(model, {"a": 2.0, "sigma": 0.3})["b"] == pytest.approx(0.5)
    with pytest.raises(HbmError, match="'priors: b' is positive and cannot be fixed to -0.5"):
        compile_(decay_spec(priors={"b": -0.5}), DECAY)


def test_a_unit_parameter_of_formula_1_takes_a_prior_between_0_and_1():
    spec = decay_spec(formula="y ~ a * (b + (1 - b) * exp(-x))", bounds={"b": "unit"}, priors={"b": "beta(2, 3)"})
    model = compile_(spec, DECAY, noncentered=False)
    params = {"a": 2.0, "b": 0.3, "sigma": 0.3}
    expected = sps.norm.logpdf(2.0, 0, 5) + sps.beta.logpdf(0.3, 2, 3) + sps.expon.logpdf(0.3)
    np.testing.assert_allclose(log_prior(model, params), expected, rtol=1e-5)
    with pytest.raises(HbmError) as e:
        compile_(decay_spec(formula=spec["formula"], bounds={"b": "unit"}, priors={"b": "normal(0, 1)"}), DECAY)
    assert "is a probability (between 0 and 1)" in e.value.message and "beta" in e.value.problems[0].hint


def test_a_positive_parameter_with_a_formula_is_exp_of_its_linear_predictor():
    model = compile_(decay_spec(b="1 + z + (1 | g)", priors={
        "log(b)": "normal(-0.5, 0.5)", "log(b):z": "normal(0, 0.3)", "sd(log(b) | g)": "half_normal(0.4)"}),
                     DECAY, noncentered=False)
    names = model.ir.parameter_names()
    assert names == ("a", "log(b)", "log(b):z", "sd(log(b) | g)", "sigma")
    g, n_g = codes("g", DECAY)
    x, z, y = (jnp.asarray(DECAY[c].to_numpy(), jnp.float32) for c in ("x", "z", "y"))

    def hand():
        a = numpyro.sample("a", dist.Normal(0.0, 5.0))
        lb = numpyro.sample("log(b)", dist.Normal(-0.5, 0.5))
        bz = numpyro.sample("log(b):z", dist.Normal(0.0, 0.3))
        sd = numpyro.sample("sd(log(b) | g)", dist.HalfNormal(0.4))
        with numpyro.plate("g", n_g):
            r = numpyro.sample("r(log(b) | g)", dist.Normal(0.0, sd))
        sigma = numpyro.sample("sigma", dist.Exponential(1.0))
        b = jnp.exp(lb + bz * z + r[g])
        with numpyro.plate("rows", len(y)):
            numpyro.sample("y", dist.Normal(a * jnp.exp(-b * x), sigma), obs=y)
    for seed in range(3):
        params = prior_draw(hand, seed)
        np.testing.assert_allclose(float(log_density(model.numpyro_model, (model.rows, model.consts), {}, params)[0]),
                                   float(log_density(hand, (), {}, params)[0]), rtol=1e-5, atol=1e-3)
    out = elements(model, params)
    # natural scale: b (its value where z = 0 and the group deviations are 0) and each group's b ...
    assert out["b"] == pytest.approx(float(np.exp(params["log(b)"])), rel=1e-5)
    for k in range(n_g):
        lb_g = float(params["log(b)"] + params["r(log(b) | g)"][k])
        assert out[f"log(b)[g=g{k}]"] == pytest.approx(lb_g, rel=1e-5, abs=1e-6)
        assert out[f"b[g=g{k}]"] == pytest.approx(np.exp(lb_g), rel=1e-5)
    # ... and the link-scale coefficients under names that say so; no natural-scale slope
    assert {"log(b)", "log(b):z", "sd(log(b) | g)"} <= set(out) and "b:z" not in out


def test_a_prior_keyed_by_a_linked_parameter_is_refused_with_its_coefficients_names():
    with pytest.raises(HbmError) as e:
        compile_(decay_spec(b="1 + z", priors={"b": "normal(0, 1)"}), DECAY)
    p = e.value.problems[0]
    assert "b = exp(its linear predictor)" in p.message and "log scale" in p.message
    assert "log(b)" in p.hint and "log(b):z" in p.hint


FACTOR = "0 + factor(H)"
LEVELS = ("Bentazone", "Glyphosate")


@pytest.mark.parametrize("bounds, key, link", [({}, "b", lambda v: v), ({"b": "positive"}, "log(b)", np.exp)])
def test_a_prior_keyed_by_the_parameter_applies_to_each_coefficient(bounds, key, link):
    term = f"{key}:factor(H)"
    spec = decay_spec(b=FACTOR, bounds=bounds, priors={key: "normal(0.5, 0.25)"})
    model = compile_(spec, DECAY, noncentered=False)
    v = np.array([0.3, 0.8])
    params = {"a": 2.0, term: v, "sigma": 0.3}
    base = sps.norm.logpdf(2.0, 0, 5) + sps.expon.logpdf(0.3)
    np.testing.assert_allclose(log_prior(model, params), base + sps.norm.logpdf(v, 0.5, 0.25).sum(), rtol=1e-5)
    # a level's own key overrides the parameter's
    spec["priors"][f"{term}[Glyphosate]"] = "student_t(3, -1, 0.2)"
    model = compile_(spec, DECAY, noncentered=False)
    expected = base + sps.norm.logpdf(0.3, 0.5, 0.25) + sps.t.logpdf(0.8, 3, -1, 0.2)
    np.testing.assert_allclose(log_prior(model, params), expected, rtol=1e-5)
    assert f"[Glyphosate] student_t(3, -1, 0.2)" in model.describe()
    out = elements(model, params)
    for lev, x in zip(LEVELS, v):
        assert out[f"{term}[{lev}]"] == pytest.approx(x)
        assert out[f"b:factor(H)[{lev}]"] == pytest.approx(float(link(x)), rel=1e-6)   # b's value at the level
    # the model's log density, against a hand-written one
    h, _ = codes("H", DECAY)
    x_, y_ = (jnp.asarray(DECAY[c].to_numpy(), jnp.float32) for c in ("x", "y"))

    def hand():
        a = numpyro.sample("a", dist.Normal(0.0, 5.0))
        c0 = numpyro.sample("c0", dist.Normal(0.5, 0.25))
        c1 = numpyro.sample("c1", dist.StudentT(3.0, -1.0, 0.2))
        sigma = numpyro.sample("sigma", dist.Exponential(1.0))
        b = link(jnp.stack([c0, c1]))[h]
        with numpyro.plate("rows", len(y_)):
            numpyro.sample("y", dist.Normal(a * jnp.exp(-b * x_), sigma), obs=y_)
    lp_hand = log_density(hand, (), {}, {"a": 2.0, "c0": 0.3, "c1": 0.8, "sigma": 0.3})[0]
    lp = log_density(model.numpyro_model, (model.rows, model.consts), {}, params)[0]
    np.testing.assert_allclose(float(lp), float(lp_hand), rtol=1e-5)


def test_a_prior_keyed_by_a_bounded_cell_means_parameter_is_on_each_levels_value():
    """``b: 0 + factor(H)``, ``bounds: {b: positive}``: one b per level, so ``b: half_normal(2)`` is the
    half-normal density of each level's b (plus the log Jacobian, as b = exp(log(b)))."""
    spec = decay_spec(b=FACTOR, bounds={"b": "positive"}, priors={"b": "normal(0, 2)"})
    model = compile_(spec, DECAY, noncentered=False)
    lb = np.array([np.log(0.3), np.log(1.7)])
    params = {"a": 2.0, "log(b):factor(H)": lb, "sigma": 0.3}
    base = sps.norm.logpdf(2.0, 0, 5) + sps.expon.logpdf(0.3)
    b = np.exp(lb)
    expected = base + (sps.halfnorm.logpdf(b, scale=2.0) + lb).sum()
    np.testing.assert_allclose(log_prior(model, params), expected, rtol=1e-5)
    assert "a prior keyed 'b' is on each b itself" in model.describe()
    out = elements(model, params)
    assert out["b:factor(H)[Glyphosate]"] == pytest.approx(1.7, rel=1e-5)
    # a real-line prior whose support misses b's is refused as for b: 1
    with pytest.raises(HbmError, match="prior"):
        compile_(decay_spec(b=FACTOR, bounds={"b": "unit"}, priors={"b": "gamma(2, 1)"}), DECAY)


def test_level_keys_are_checked():
    with pytest.raises(HbmError) as e:
        compile_(decay_spec(b=FACTOR, bounds={}, priors={"b:factor(H)[Glyfosate]": "normal(0, 1)"}), DECAY)
    assert "not a parameter" in e.value.message
    assert "did you mean 'b:factor(H)[Glyphosate]'?" in e.value.problems[0].hint
    with pytest.raises(HbmError, match="a single level of 'b:factor\\(H\\)' cannot be fixed"):
        compile_(decay_spec(b=FACTOR, bounds={}, priors={"b:factor(H)[Glyphosate]": 0.5}), DECAY)


def test_check_says_which_scale_each_prior_is_on():
    text = compile_(decay_spec(b="1 + z + (1 | g)", c="1", formula="y ~ a * exp(-b * x) + c",
                               bounds={"b": "positive", "c": "positive"}, priors={"c": "normal(0, 2)"}),
                    DECAY).describe()
    assert "parameter b ~ 1 + z + (1 | g)   [positive: b = exp(its linear predictor); coefficients and " \
           "their priors on the log scale, named log(b)...]" in text
    assert "    log(b):z" in text and "sd(log(b) | g)" in text
    assert "reported on b's scale too: b = exp(log(b)); b[g=level] = exp(log(b)[g=level])" in text
    assert "parameter c ~ 1   [positive: the prior is on c itself: normal(0, 2) means half_normal(2)]" in text
    assert "parameter a ~ 1\n" in text


# numbers inside the expression: column op number, number op column, nested, inside functions
NUMBER_FORMS = [
    ("y ~ a * (x - 0.5)", lambda a, b, x: a * (x - 0.5)),
    ("y ~ a * (0.5 - x)", lambda a, b, x: a * (0.5 - x)),
    ("y ~ a * (2 * x + 1)^2 - b", lambda a, b, x: a * (2 * x + 1) ** 2 - b),
    ("y ~ a * exp(-0.5 * x) + b", lambda a, b, x: a * np.exp(-0.5 * x) + b),
    ("y ~ a * log(x + 1) + b / (x^2 + 1)", lambda a, b, x: a * np.log(x + 1) + b / (x ** 2 + 1)),
    ("y ~ a + b * (x / 2 - 1) * (3 - x)", lambda a, b, x: a + b * (x / 2 - 1) * (3 - x)),
    ("y ~ a * sqrt(abs(x - 1.5)) + 2 * b - 1", lambda a, b, x: a * np.sqrt(np.abs(x - 1.5)) + 2 * b - 1),
    ("y ~ exp(2) * a + x^-1 * b - 1e-3", lambda a, b, x: np.exp(2) * a + x ** -1.0 * b - 1e-3),
    ("y ~ a * (x - 0.5) * (x - 0.5) + b * -(1 - x)", lambda a, b, x: a * (x - 0.5) ** 2 + b * -(1 - x)),
]


@pytest.mark.parametrize("formula, fn", NUMBER_FORMS)
def test_numbers_inside_the_expression(formula, fn):
    spec = {"formula": formula, "params": {k: "1" for k in ("a", "b") if k in formula.split("~")[1]},
            "family": "normal"}
    model = compile_(spec, DECAY, noncentered=False)
    mean = handlers.substitute(handlers.seed(model.numpyro_model, 0), data={"a": 1.3, "b": -0.7, "sigma": 1.0})(
        model.rows, model.consts, mode="eta")
    np.testing.assert_allclose(np.asarray(mean), fn(1.3, -0.7, DECAY["x"].to_numpy()), rtol=1e-5, atol=1e-5)


KIDIQ = "/work/shared/validation/posteriordb/kidiq_with_mom_work-kidscore_interaction_c2/data.csv"


def test_kidiq_interaction_with_numbers_equals_a_hand_written_model():
    from pathlib import Path
    if not Path(KIDIQ).exists():
        pytest.skip("posteriordb validation data not available")
    df = pd.read_csv(KIDIQ)
    spec = {"formula": "kid_score ~ mu + b_hs * (mom_hs - 0.5) + b_iq * (mom_iq - 100) "
                       "+ b_hs_iq * (mom_hs - 0.5) * (mom_iq - 100)",
            "params": {"mu": "1", "b_hs": "1", "b_iq": "1", "b_hs_iq": "1"}, "family": "normal",
            "priors": {"mu": "normal(0, 1000)", "b_hs": "normal(0, 1000)", "b_iq": "normal(0, 1000)",
                       "b_hs_iq": "normal(0, 1000)", "sigma": "half_normal(1000)"}}
    model = compile_(spec, df, noncentered=False)
    assert "mom_hs - 0.5" in model.describe()
    hs, iq, y = (jnp.asarray(df[c].to_numpy(), jnp.float32) for c in ("mom_hs", "mom_iq", "kid_score"))

    def hand():
        beta = [numpyro.sample(n, dist.Normal(0.0, 1000.0)) for n in ("mu", "b_hs", "b_iq", "b_hs_iq")]
        sigma = numpyro.sample("sigma", dist.HalfNormal(1000.0))
        a, b = hs - 0.5, iq - 100.0
        with numpyro.plate("rows", len(y)):
            numpyro.sample("y", dist.Normal(beta[0] + beta[1] * a + beta[2] * b + beta[3] * a * b, sigma), obs=y)
    rng = np.random.default_rng(0)
    for _ in range(3):   # around the reference posterior (mu 86.8, b_hs 2.9, b_iq 0.73, b_hs_iq -0.48, sigma 18)
        params = {"mu": 86.8 + rng.normal(0, 1.2), "b_hs": 2.9 + rng.normal(0, 2.5),
                  "b_iq": 0.73 + rng.normal(0, 0.08), "b_hs_iq": -0.48 + rng.normal(0, 0.16),
                  "sigma": 18.0 + rng.normal(0, 0.6)}
        params = {k: jnp.float32(v) for k, v in params.items()}
        np.testing.assert_allclose(float(log_density(model.numpyro_model, (model.rows, model.consts), {}, params)[0]),
                                   float(log_density(hand, (), {}, params)[0]), rtol=1e-6)


@pytest.mark.parametrize("b, bound, link, inverse", [
    ("1 | g", "positive", "log", np.exp),                                   # a chain: values by level
    ("1 + (1 | g)", "unit", "logit", lambda v: 1.0 / (1.0 + np.exp(-v))),
])
def test_linked_values_on_their_own_scale(b, bound, link, inverse):
    model = compile_(decay_spec(b=b, bounds={"b": bound}, formula="y ~ a * exp(-b * x)"), DECAY, noncentered=False)
    sites = handlers.trace(handlers.seed(model.numpyro_model, 3)).get_trace(model.rows, model.consts)
    params = {k: v["value"] for k, v in sites.items() if v["type"] == "sample" and not v["is_observed"]}
    out = elements(model, params)
    assert out["b"] == pytest.approx(float(inverse(out[f"{link}(b)"])), rel=1e-5)
    for k in range(4):
        assert out[f"b[g=g{k}]"] == pytest.approx(float(inverse(out[f"{link}(b)[g=g{k}]"])), rel=1e-5)
    assert f"sd({link}(b) | g)" in out


def test_a_fixed_factor_takes_no_level_priors_and_undefined_numbers_are_errors():
    with pytest.raises(HbmError, match="'b:factor\\(H\\)' is fixed to 1, so its levels cannot have priors"):
        compile_(decay_spec(b=FACTOR, bounds={}, priors={"b": 1, "b:factor(H)[Glyphosate]": "normal(0, 1)"}), DECAY)
    with pytest.raises(HbmError) as e:
        compile_({"formula": "y ~ a * log(-1) + x", "params": {"a": "1"}}, DECAY)
    assert "'log(-1)' is undefined (not a number)" in e.value.message and marked(e.value) == "log(-1)"
