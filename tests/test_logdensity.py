"""Log-density equality: the compiler's main correctness test (DESIGN.md, "Testing habits").

For every term type and every family, the compiled model's log joint at random
parameter values equals a hand-written NumPyro model's, to float32 tolerance.

The hand-written models are plain NumPyro: explicit prior distributions, the
likelihood as ``numpyro.sample("y", Dist(...), obs=y)`` in a plate, and level
indices computed here with ``np.unique`` (or the categories of a pandas
Categorical), never read back from the compiler. Parameter values are drawn
from the hand-written model's prior and substituted into both models, so the
site names, shapes, level orders, design columns, links and likelihoods must
all agree.

Priors are passed explicitly through ``resolve(priors=...)`` (every parameter,
checked), except in the tests of the default priors, which rebuild the defaults
from the rule in ``hbm.resolve.linear._LinkScale``.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from jax.scipy.special import expit, ndtr
from numpyro import handlers
from numpyro.infer.util import log_density

from hbm import ir
from hbm.data.encode import encode
from hbm.errors import HbmError
from hbm.lowering.model import make_model
from hbm.frontend.parse import parse_formula
from hbm.frontend.priors import Fixed, Prior
from hbm.resolve.linear import resolve
from hbm.data.table import TableInfo

RTOL, ATOL = 1e-5, 1e-3
N = 240


@pytest.fixture(autouse=True, scope="module")
def _no_eager_validation():
    """numpyro validates distribution arguments eagerly by default, one compiled check per shape;
    here every density is asserted finite instead, which keeps this file fast."""
    from numpyro.distributions import distribution as _d
    before = _d._VALIDATION_ENABLED
    numpyro.enable_validation(False)
    yield
    numpyro.enable_validation(before)


# ---------------------------------------------------------------------- data
def _make_data(seed: int = 0) -> pd.DataFrame:
    """Small data with every kind of column; every level of every grouping column appears."""
    rng = np.random.default_rng(seed)

    def balanced(levels):
        return rng.permutation(np.resize(np.asarray(levels), N))

    # products nested in categories nested in regions; labels shuffled against the nesting
    prod_labels = np.array([f"p{i:02d}" for i in rng.permutation(12)])
    prod_cat = np.array([f"c{k}" for k in rng.permutation(np.repeat(np.arange(4), 3))])
    cat_region = {"c0": "r1", "c1": "r0", "c2": "r1", "c3": "r0"}
    pi = balanced(np.arange(12))
    n_trials = rng.integers(5, 21, N)
    df = pd.DataFrame({
        "x": rng.normal(size=N),
        "z": rng.normal(1.0, 2.0, N),
        "u": rng.uniform(0.0, 1.0, N),
        "price": np.exp(rng.normal(0.0, 0.5, N)),
        "exposure": rng.uniform(0.5, 2.0, N),
        "g": balanced(["gamma", "alpha", "delta", "beta", "eps"]),   # text, 5 levels (sorted != written)
        "h": balanced(["q", "p", "r"]),                             # text, 3 levels
        "f": balanced([30, 10, 40, 20]),                            # integers, for factor(f)
        "period": balanced([1, 2, 3, 4, 5]),
        "product": prod_labels[pi],
        "category": prod_cat[pi],
        "w": rng.uniform(0.2, 2.0, N),
        "s": rng.uniform(0.5, 1.5, N),
        "n": n_trials,
        # responses, one per kind of support
        "y": rng.normal(3.0, 1.0, N),
        "cnt": rng.poisson(4.0, N),
        "units": rng.poisson(3.0, N),
        "bin": rng.integers(0, 2, N),
        "succ": rng.binomial(n_trials, 0.4),
        "pos": rng.gamma(2.0, 1.0, N) + 0.05,
        "unit": np.clip(rng.beta(2.0, 3.0, N), 0.01, 0.99),
    })
    df["region"] = df["category"].map(cat_region)
    # a Categorical whose categories are not in sorted order: "zeta" is the reference level
    df["k"] = pd.Categorical(balanced(["alpha", "mid", "zeta"]), categories=["zeta", "alpha", "mid"])
    return df


DF = _make_data()


def col(name: str, df: pd.DataFrame = DF) -> jnp.ndarray:
    return jnp.asarray(df[name].to_numpy(), jnp.float32)


def codes(*cols: str, df: pd.DataFrame = DF) -> tuple[np.ndarray, int]:
    """Per-row level index and number of levels of a grouping factor (the pairs of several columns).

    Levels are sorted unique values (categories order for a pandas Categorical); pairs are the
    sorted distinct tuples of the columns' level indices.
    """
    per = []
    for c in cols:
        s = df[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            per.append(s.cat.codes.to_numpy().astype(np.int64))
        else:
            per.append(np.unique(s.to_numpy(), return_inverse=True)[1].reshape(-1))
    if len(per) == 1:
        idx = per[0]
    else:
        idx = np.unique(np.stack(per, 1), axis=0, return_inverse=True)[1].reshape(-1)
    return idx, int(idx.max()) + 1


def parent_map(child: str, parent: str, df: pd.DataFrame = DF) -> np.ndarray:
    ci, nc = codes(child, df=df)
    pi, _ = codes(parent, df=df)
    m = np.full(nc, -1)
    m[ci] = pi
    assert (m >= 0).all()
    return m


def indicator(name: str, level: str, df: pd.DataFrame = DF) -> jnp.ndarray:
    return jnp.asarray((df[name].astype(str).to_numpy() == level).astype(np.float32))


# ---------------------------------------------------------------------- priors (both sides)
def N_(loc=0.0, scale=1.0) -> Prior:
    return Prior("normal", (float(loc), float(scale)))


def HN(scale=1.0) -> Prior:
    return Prior("half_normal", (float(scale),))


SIGMA = Prior("lognormal", (0.0, 0.3))
NU = Prior("lognormal", (2.5, 0.3))
PHI = Prior("lognormal", (1.5, 0.3))


# ---------------------------------------------------------------------- hand-written model pieces
def b_(name, loc=0.0, scale=1.0, size=None):
    d = dist.Normal(loc, scale)
    if size is not None:
        d = d.expand((size,)).to_event(1)
    return numpyro.sample(name, d)


def bz_(name, loc=0.0, scale=1.0):
    """A population coefficient standardised as the compiler does: loc + scale * z, z ~ N(0, 1)."""
    return loc + scale * numpyro.sample(f"{name}_decentered", dist.Normal(0.0, 1.0))


def sd_(name, scale=1.0):
    return numpyro.sample(name, dist.HalfNormal(scale))


def levels_(name, size, loc, scale):
    """One value per level: ``name ~ Normal(loc, scale)`` in a plate of ``size``."""
    with numpyro.plate(f"levels of {name}", size):
        return numpyro.sample(name, dist.Normal(loc, scale))


def observe(d, y, weights=None):
    with numpyro.plate("rows", y.shape[0]):
        if weights is None:
            numpyro.sample("y", d, obs=y)
        else:
            with handlers.scale(scale=weights):
                numpyro.sample("y", d, obs=y)


def normal_obs(eta, y=None, weights=None):
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 0.3))
    observe(dist.Normal(eta, sigma), col("y") if y is None else y, weights)


def mvn_block(name, size, sds, chol_name, eta_lkj):
    """A correlated block: L ~ LKJCholesky, r[level] ~ MVN(0, diag(sd) L L' diag(sd))."""
    k = len(sds)
    chol = numpyro.sample(chol_name, dist.LKJCholesky(k, concentration=eta_lkj))
    tril = jnp.stack(sds)[:, None] * chol
    with numpyro.plate(f"levels of {name}", size):
        return numpyro.sample(name, dist.MultivariateNormal(jnp.zeros(k), scale_tril=tril))


# ---------------------------------------------------------------------- compile and compare
@dataclass
class Compiled:
    ir: ir.ModelIR
    model: object
    rows: dict
    consts: dict
    enc: object


def _norm(s: str) -> str:
    return s.replace(" ", "")


def compile_(text, priors, family=None, noncentered=False, df=DF, check_priors=True) -> Compiled:
    f = parse_formula(text)
    info = TableInfo(df, f.source)
    m = resolve(f, info, family=family, priors=tuple(priors.items()), noncentered=noncentered)
    if check_priors:  # every parameter's prior is given here, so no test leans on the defaults
        given = {_norm(k) for k in priors}
        missing = [n for n in m.parameter_names() if _norm(n) not in given]
        assert not missing, f"test gives no prior for {missing}"
    rows, consts, enc = encode(m, info)
    return Compiled(m, make_model(m), rows, consts, enc)


def _trace(model, *args, seed=0, params=None):
    fn = handlers.seed(model, seed)
    if params is not None:
        fn = handlers.substitute(fn, data=params)
    return handlers.trace(fn).get_trace(*args)


def latent_shapes(model, *args, params=None) -> dict[str, tuple]:
    """Latent sample sites and their shapes (``params`` substituted where names match, so that only
    sites the hand-written model lacks are drawn)."""
    tr = _trace(model, *args, params=params)
    return {k: tuple(jnp.shape(v["value"])) for k, v in tr.items()
            if v["type"] == "sample" and not v["is_observed"]}


def _numpy_draw(site, rng: np.random.Generator):
    """A draw from the site's distribution made with numpy for the common families (jax's samplers
    compile once per shape, which dominates this file's run time); None: let numpyro sample it.
    LKJCholesky gets a random correlation Cholesky factor: any valid factor serves, the test
    compares densities, not draws."""
    if site["type"] != "sample" or site.get("is_observed"):
        return None
    fn = site["fn"]
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    base = fn
    while isinstance(base, (dist.ExpandedDistribution, dist.Independent)):
        base = base.base_dist

    def arr(v):
        return np.asarray(v, np.float64)

    if isinstance(base, dist.LKJCholesky):
        k = base.dimension
        a = rng.normal(size=(k, k + 2))
        cov = a @ a.T
        d = 1.0 / np.sqrt(np.diag(cov))
        out = np.broadcast_to(np.linalg.cholesky(cov * d[:, None] * d[None, :]), shape)
    elif type(base) is dist.Normal:
        out = arr(base.loc) + arr(base.scale) * rng.normal(size=shape)
    elif type(base) is dist.HalfNormal:
        out = arr(base.scale) * np.abs(rng.normal(size=shape))
    elif type(base) is dist.LogNormal:
        out = np.exp(arr(base.base_dist.loc) + arr(base.base_dist.scale) * rng.normal(size=shape))
    elif type(base) is dist.MultivariateNormal:
        z = rng.normal(size=shape)
        out = arr(base.loc) + np.einsum("...ij,...j->...i", arr(base.scale_tril), z)
    else:
        return None
    return jnp.asarray(np.broadcast_to(out, shape), jnp.float32)


def prior_draw(hand, seed) -> dict:
    """Random parameter values: a draw from the hand-written model's prior."""
    rng = np.random.default_rng(seed)
    fn = handlers.substitute(handlers.seed(hand, seed), substitute_fn=lambda site: _numpy_draw(site, rng))
    tr = handlers.trace(fn).get_trace()
    return {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}


def assert_same_logdensity(c: Compiled, hand, draws: int = 3) -> dict:
    """Same latent sites and shapes, and the same log joint at ``draws`` prior draws of ``hand``."""
    comp = None
    for s in range(draws):
        params = prior_draw(hand, s)
        if comp is None:
            comp = latent_shapes(c.model, c.rows, c.consts, params=params)
        assert {k: tuple(jnp.shape(v)) for k, v in params.items()} == comp, \
            f"sites differ:\n hand     {sorted(params)}\n compiled {sorted(comp)}\n{c.ir.pretty()}"
        lp_hand, _ = log_density(hand, (), {}, params)
        lp_comp, _ = log_density(c.model, (c.rows, c.consts), {}, params)
        assert np.isfinite(float(lp_hand)), "hand-written model gave a non-finite log density"
        np.testing.assert_allclose(float(lp_comp), float(lp_hand), rtol=RTOL, atol=ATOL,
                                   err_msg=f"draw {s}\n{c.ir.pretty()}")
    return params


def obs_logp(model, args, params, y=None) -> float:
    """Summed log-probability of site "y" at the data; when simulating, "y" is substituted by the data
    (which also spares sampling it)."""
    data = params if y is None else {**params, "y": y}
    tr = _trace(model, *args, params=data)
    site = tr["y"]
    lp = site["fn"].log_prob(site["value"])
    if site.get("scale") is not None:
        lp = lp * site["scale"]
    return float(jnp.sum(lp))


# ====================================================================== families
INV = {"identity": lambda e: e, "log": jnp.exp, "inverse": lambda e: 1.0 / e,
       "logit": expit, "probit": ndtr}
DEFAULT_LINK = {"normal": "identity", "student_t": "identity", "poisson": "log",
                "negative_binomial": "log", "bernoulli": "logit", "binomial": "logit",
                "gamma": "log", "lognormal": "identity", "beta": "logit"}
RESPONSE = {"normal": "y", "student_t": "y", "poisson": "cnt", "negative_binomial": "cnt",
            "bernoulli": "bin", "binomial": "succ", "gamma": "pos", "lognormal": "pos", "beta": "unit"}
# the intercept's prior location on the link scale keeps the mean inside its domain
LOC = {"identity": 3.0, "log": 1.0, "inverse": 1.5, "logit": 0.0, "probit": 0.0}

FAMILY_CASES = [
    ("normal", None), ("normal", "identity"), ("normal", "inverse"),
    ("student_t", None), ("student_t", "identity"), ("student_t", "inverse"),
    ("poisson", None), ("poisson", "log"), ("poisson", "identity"),
    ("negative_binomial", None), ("negative_binomial", "identity"),
    ("bernoulli", None), ("bernoulli", "logit"), ("bernoulli", "probit"),
    ("binomial", None), ("binomial", "probit"),
    ("gamma", None), ("gamma", "inverse"), ("gamma", "identity"),
    ("lognormal", None), ("lognormal", "log"),
    ("beta", None), ("beta", "probit"),
]


def _family_hand(family, link):
    """Hand-written likelihood of ``family`` with mean inv_link(eta)."""
    mean = INV[link]

    def lik(eta):
        if family == "normal":
            return dist.Normal(mean(eta), numpyro.sample("sigma", dist.LogNormal(0.0, 0.3)))
        if family == "student_t":
            sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 0.3))
            nu = numpyro.sample("nu", dist.LogNormal(2.5, 0.3))
            return dist.StudentT(nu, mean(eta), sigma)
        if family == "poisson":
            return dist.Poisson(mean(eta))
        if family == "negative_binomial":   # NB2: var = mu + mu^2 / phi, as a gamma-Poisson mixture
            phi = numpyro.sample("phi", dist.LogNormal(1.5, 0.3))
            return dist.GammaPoisson(phi, phi / mean(eta))
        if family == "bernoulli":
            return dist.Bernoulli(logits=eta) if link == "logit" else dist.Bernoulli(probs=mean(eta))
        if family == "binomial":
            n = col("n")
            return (dist.Binomial(n, logits=eta) if link == "logit"
                    else dist.Binomial(n, probs=mean(eta)))
        if family == "gamma":               # shape phi, mean mu
            phi = numpyro.sample("phi", dist.LogNormal(1.5, 0.3))
            return dist.Gamma(phi, phi / mean(eta))
        if family == "lognormal":           # eta is the mean of log(y) whichever link is written
            return dist.LogNormal(eta, numpyro.sample("sigma", dist.LogNormal(0.0, 0.3)))
        if family == "beta":                # mean mu, precision phi
            phi = numpyro.sample("phi", dist.LogNormal(1.5, 0.3))
            mu = mean(eta)
            return dist.Beta(mu * phi, (1.0 - mu) * phi)
        raise AssertionError(family)
    return lik


def _family_case(family, written_link):
    link = written_link or DEFAULT_LINK[family]
    resp = RESPONSE[family]
    lhs = f"{written_link}({resp})" if written_link else resp
    if family == "binomial":
        lhs += " | trials(n)"
    text = f"{lhs} ~ x + (1 | g)"
    priors = {"Intercept": N_(LOC[link], 0.1), "x": N_(0, 0.1), "sd(1 | g)": HN(0.1)}
    priors.update({"sigma": SIGMA, "nu": NU, "phi": PHI})
    fam_params = {"normal": ("sigma",), "student_t": ("sigma", "nu"), "lognormal": ("sigma",),
                  "negative_binomial": ("phi",), "gamma": ("phi",), "beta": ("phi",)}.get(family, ())
    priors = {k: v for k, v in priors.items() if k not in ("sigma", "nu", "phi") or k in fam_params}
    c = compile_(text, priors, family=family)
    assert c.ir.family.name == family
    if family != "lognormal":  # lognormal: eta is the mean of log(y) whichever link is written
        assert c.ir.family.link == link

    ig, G = codes("g")
    x, y = col("x"), col(resp)
    lik = _family_hand(family, link)

    def hand():
        b0 = b_("Intercept", LOC[link], 0.1)
        bx = b_("x", 0.0, 0.1)
        r = levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)", 0.1))
        observe(lik(b0 + bx * x + r[ig]), y)
    return c, hand


@pytest.mark.parametrize("family,link", FAMILY_CASES, ids=[f"{f}-{l or 'default'}" for f, l in FAMILY_CASES])
def test_family(family, link):
    c, hand = _family_case(family, link)
    params = assert_same_logdensity(c, hand)
    # the simulation path (posterior predictive) uses the same per-row distribution
    got = obs_logp(lambda rows, consts: c.model(rows, consts, mode="simulate"), (c.rows, c.consts), params,
                   y=c.rows.y)
    want = obs_logp(hand, (), params)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # the latent-only path is the prior: the log joint less the likelihood
    lp_latent, _ = log_density(c.model, (c.rows, c.consts), {"mode": "latent"}, params)
    lp_hand, _ = log_density(hand, (), {}, params)
    np.testing.assert_allclose(float(lp_latent), float(lp_hand) - want, rtol=RTOL, atol=ATOL)


def test_binomial_simulate_samples():
    """Posterior predictive draws of a binomial model: whole numbers within the trials."""
    c, hand = _family_case("binomial", None)
    params = prior_draw(hand, 0)
    tr = _trace(lambda rows, consts: c.model(rows, consts, mode="simulate"), c.rows, c.consts, params=params)
    y = np.asarray(tr["y"]["value"])
    assert y.shape == (N,) and (y >= 0).all() and (y <= DF["n"].to_numpy()).all()


# ====================================================================== population-level terms
def test_intercept_only():
    c = compile_("y ~ 1", {"Intercept": N_(), "sigma": SIGMA})

    def hand():
        normal_obs(b_("Intercept") * jnp.ones(N))
    assert_same_logdensity(c, hand)


def test_numeric_predictor():
    c = compile_("y ~ x + z", {"Intercept": N_(), "x": N_(), "z": N_(0, 0.5), "sigma": SIGMA})

    def hand():
        normal_obs(b_("Intercept") + b_("x") * col("x") + b_("z", 0, 0.5) * col("z"))
    assert_same_logdensity(c, hand)


@pytest.mark.parametrize("text", ["y ~ 0 + x", "y ~ x - 1", "y ~ -1 + x", "y ~ x + 0"])
def test_no_intercept(text):
    c = compile_(text, {"x": N_(), "sigma": SIGMA})
    assert [t.name for t in c.ir.population] == ["x"]

    def hand():
        normal_obs(b_("x") * col("x"))
    assert_same_logdensity(c, hand)


def test_transforms():
    text = "y ~ log(price) + exp(u) + sqrt(exposure) + center(z) + scale(x)"
    names = ["log(price)", "exp(u)", "sqrt(exposure)", "center(z)", "scale(x)"]
    c = compile_(text, {"Intercept": N_(), "sigma": SIGMA, **{n: N_() for n in names}})
    z, x = DF["z"].to_numpy(), DF["x"].to_numpy()
    data = {  # computed once at compile time from the data; scale() divides by the sd with ddof=0
        "log(price)": np.log(DF["price"].to_numpy()),
        "exp(u)": np.exp(DF["u"].to_numpy()),
        "sqrt(exposure)": np.sqrt(DF["exposure"].to_numpy()),
        "center(z)": z - z.mean(),
        "scale(x)": (x - x.mean()) / x.std(),
    }
    data = {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}

    def hand():
        eta = b_("Intercept")
        for n in names:
            eta = eta + b_(n) * data[n]
        normal_obs(eta)
    assert_same_logdensity(c, hand)
    assert c.enc.stats["center(z)"] == pytest.approx((z.mean(), z.std()))
    assert c.enc.stats["scale(x)"] == pytest.approx((x.mean(), x.std()))


def _check_levels(c, term, expected):
    t = next(t for t in c.ir.population if t.name == term)
    assert list(t.levels) == list(expected), f"{term}: levels {t.levels}, expected {expected}"


@pytest.mark.parametrize("term,column,levels", [
    ("factor(f)", "f", ["10", "20", "30", "40"]),             # integers: sorted numerically
    ("g", "g", ["alpha", "beta", "delta", "eps", "gamma"]),    # a text column: sorted
    ("factor(g)", "g", ["alpha", "beta", "delta", "eps", "gamma"]),
    ("k", "k", ["zeta", "alpha", "mid"]),                      # a Categorical: its categories' order
])
def test_factor_treatment_coding(term, column, levels):
    """Treatment coding: one coefficient per level but the first (the reference)."""
    c = compile_(f"y ~ x + {term}", {"Intercept": N_(), "x": N_(), term: N_(), "sigma": SIGMA})
    _check_levels(c, term, levels[1:])
    dummies = jnp.stack([indicator(column, lev) for lev in levels[1:]], 1)

    def hand():
        eta = b_("Intercept") + b_("x") * col("x") + dummies @ b_(term, size=len(levels) - 1)
        normal_obs(eta)
    assert_same_logdensity(c, hand)


@pytest.mark.parametrize("text", ["y ~ 0 + factor(g)", "y ~ factor(g) - 1", "y ~ 0 + factor(g) + x"])
def test_factor_full_coding_without_intercept(text):
    levels = ["alpha", "beta", "delta", "eps", "gamma"]
    has_x = "x" in text.split("~")[1]
    priors = {"factor(g)": N_(), "sigma": SIGMA, **({"x": N_()} if has_x else {})}
    c = compile_(text, priors)
    _check_levels(c, "factor(g)", levels)
    dummies = jnp.stack([indicator("g", lev) for lev in levels], 1)

    def hand():
        eta = dummies @ b_("factor(g)", size=5)
        if has_x:
            eta = eta + b_("x") * col("x")
        normal_obs(eta)
    assert_same_logdensity(c, hand)


def test_second_factor_without_intercept_is_treatment_coded():
    """As in R: without an intercept only the first factor is coded fully, later ones drop their reference."""
    c = compile_("y ~ 0 + factor(g) + factor(h)", {"factor(g)": N_(), "factor(h)": N_(), "sigma": SIGMA})
    g_levels = ["alpha", "beta", "delta", "eps", "gamma"]
    _check_levels(c, "factor(g)", g_levels)
    _check_levels(c, "factor(h)", ["q", "r"])
    Xg = jnp.stack([indicator("g", lev) for lev in g_levels], 1)
    Xh = jnp.stack([indicator("h", lev) for lev in ["q", "r"]], 1)

    def hand():
        normal_obs(Xg @ b_("factor(g)", size=5) + Xh @ b_("factor(h)", size=2))
    assert_same_logdensity(c, hand)


def test_numeric_interactions():
    c = compile_("y ~ x*z + log(price):u",
                 {"Intercept": N_(), "x": N_(), "z": N_(), "x:z": N_(), "log(price):u": N_(), "sigma": SIGMA})
    assert [t.name for t in c.ir.population] == ["Intercept", "x", "z", "x:z", "log(price):u"]
    x, z, u, lp = col("x"), col("z"), col("u"), jnp.log(col("price"))

    def hand():
        eta = b_("Intercept") + b_("x") * x + b_("z") * z + b_("x:z") * x * z + b_("log(price):u") * lp * u
        normal_obs(eta)
    assert_same_logdensity(c, hand)


def test_interaction_only():
    c = compile_("y ~ x:z", {"Intercept": N_(), "x:z": N_(), "sigma": SIGMA})

    def hand():
        normal_obs(b_("Intercept") + b_("x:z") * col("x") * col("z"))
    assert_same_logdensity(c, hand)


def _vector_term_columns(c, term, parts):
    """Columns of a vector term built from its level labels ("20:q"), by the data alone."""
    t = next(t for t in c.ir.population if t.name == term)
    cols = []
    for label in t.levels:
        labs = label.split(":")
        v = jnp.ones(N)
        li = 0
        for p in parts:
            if p[0] == "level":
                v = v * indicator(p[1], labs[li])
                li += 1
            else:
                v = v * col(p[1])
        cols.append(v)
    return t.levels, jnp.stack(cols, 1)


@pytest.mark.parametrize("text,terms", [
    # factor:numeric with no numeric main effect: a slope per level (all levels), as in R
    ("y ~ factor(f):x", {"factor(f):x": (["10", "20", "30", "40"], [("level", "f"), ("num", "x")])}),
    # with the main effect present the interaction drops the reference level
    ("y ~ x + factor(f):x", {"x": None, "factor(f):x": (["20", "30", "40"], [("level", "f"), ("num", "x")])}),
    ("y ~ factor(f)*x", {"factor(f)": (["20", "30", "40"], [("level", "f")]), "x": None,
                         "factor(f):x": (["20", "30", "40"], [("level", "f"), ("num", "x")])}),
    ("y ~ factor(f)*h", {"factor(f)": (["20", "30", "40"], [("level", "f")]), "h": (["q", "r"], [("level", "h")]),
                         "factor(f):h": ({"20:q", "20:r", "30:q", "30:r", "40:q", "40:r"},
                                         [("level", "f"), ("level", "h")])}),
])
def test_factor_interactions(text, terms):
    priors = {"Intercept": N_(), "sigma": SIGMA, **{t: N_() for t in terms}}
    c = compile_(text, priors)
    built = {}
    for term, spec in terms.items():
        if spec is None:
            built[term] = (None, col(term))
            continue
        want, parts = spec
        labels, X = _vector_term_columns(c, term, parts)
        assert (set(labels) if isinstance(want, set) else list(labels)) == want
        built[term] = (len(labels), X)

    def hand():
        eta = b_("Intercept")
        for term, (size, X) in built.items():
            eta = eta + (X * b_(term) if size is None else X @ b_(term, size=size))
        normal_obs(eta)
    assert_same_logdensity(c, hand)


def test_offset():
    c = compile_("cnt ~ x + offset(log(exposure))", {"Intercept": N_(0, 0.5), "x": N_(0, 0.3)},
                 family="poisson")
    x, y, off = col("x"), col("cnt"), jnp.log(col("exposure"))

    def hand():
        eta = b_("Intercept", 0, 0.5) + b_("x", 0, 0.3) * x + off
        observe(dist.Poisson(jnp.exp(eta)), y)
    assert_same_logdensity(c, hand)


def test_two_offsets_add():
    c = compile_("y ~ offset(z) + x + offset(log(exposure))", {"Intercept": N_(), "x": N_(), "sigma": SIGMA})

    def hand():
        normal_obs(b_("Intercept") + b_("x") * col("x") + col("z") + jnp.log(col("exposure")))
    assert_same_logdensity(c, hand)


# ====================================================================== group-level terms
def test_varying_intercept():
    c = compile_("y ~ x + (1 | g)", {"Intercept": N_(), "x": N_(), "sd(1 | g)": HN(), "sigma": SIGMA})
    ig, G = codes("g")

    def hand():
        r = levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)"))
        normal_obs(b_("Intercept") + b_("x") * col("x") + r[ig])
    assert_same_logdensity(c, hand)


def test_varying_intercept_categorical_order():
    """Levels of a Categorical grouping column follow its categories, not sorted order."""
    c = compile_("y ~ (1 | k)", {"Intercept": N_(), "sd(1 | k)": HN(), "sigma": SIGMA})
    ik = np.select([DF["k"] == "zeta", DF["k"] == "alpha", DF["k"] == "mid"], [0, 1, 2])
    assert c.enc.labels["k"] == ["zeta", "alpha", "mid"]

    def hand():
        r = levels_("r(1 | k)", 3, 0.0, sd_("sd(1 | k)"))
        normal_obs(b_("Intercept") + r[ik])
    assert_same_logdensity(c, hand)


@pytest.mark.parametrize("text", ["y ~ x + (x | g)", "y ~ x + (1 + x | g)"])
def test_correlated_intercept_and_slope(text):
    priors = {"Intercept": N_(), "x": N_(), "sd(1 | g)": HN(), "sd(x | g)": HN(0.5),
              "cor(1, x | g)": Prior("lkj", (2.0,)), "sigma": SIGMA}
    c = compile_(text, priors)
    ig, G = codes("g")
    x = col("x")

    def hand():
        sds = [sd_("sd(1 | g)"), sd_("sd(x | g)", 0.5)]
        r = mvn_block("r(1 + x | g)", G, sds, "L(1 + x | g)", 2.0)
        normal_obs(b_("Intercept") + b_("x") * x + r[ig, 0] + r[ig, 1] * x)
    assert_same_logdensity(c, hand)


def test_correlated_three_terms_poisson():
    priors = {"Intercept": N_(1, 0.3), "x": N_(0, 0.2), "sd(1 | h)": HN(0.3), "sd(x | h)": HN(0.2),
              "sd(u | h)": HN(0.2), "cor(1, x, u | h)": Prior("lkj", (1.5,))}
    c = compile_("cnt ~ x + (1 + x + u | h)", priors, family="poisson")
    ih, H = codes("h")
    x, u = col("x"), col("u")

    def hand():
        sds = [sd_("sd(1 | h)", 0.3), sd_("sd(x | h)", 0.2), sd_("sd(u | h)", 0.2)]
        r = mvn_block("r(1 + x + u | h)", H, sds, "L(1 + x + u | h)", 1.5)
        eta = b_("Intercept", 1, 0.3) + b_("x", 0, 0.2) * x + r[ih, 0] + r[ih, 1] * x + r[ih, 2] * u
        observe(dist.Poisson(jnp.exp(eta)), col("cnt"))
    assert_same_logdensity(c, hand)


def test_correlated_factor_slopes():
    """A factor inside a group term: treatment-coded after the group intercept."""
    cols = ["factor(h)[q]", "factor(h)[r]"]
    label = "1 + factor(h)[q] + factor(h)[r] | g"
    priors = {"Intercept": N_(), "sd(1 | g)": HN(), "sd(factor(h)[q] | g)": HN(), "sd(factor(h)[r] | g)": HN(),
              "cor(1, factor(h)[q], factor(h)[r] | g)": Prior("lkj", (2.0,)), "sigma": SIGMA}
    c = compile_("y ~ (1 + factor(h) | g)", priors)
    ig, G = codes("g")
    dq, dr = indicator("h", "q"), indicator("h", "r")
    assert c.ir.groups[0].label == label and [cc.name for cc in c.ir.groups[0].columns[1:]] == cols

    def hand():
        sds = [sd_("sd(1 | g)"), sd_("sd(factor(h)[q] | g)"), sd_("sd(factor(h)[r] | g)")]
        r = mvn_block(f"r({label})", G, sds, f"L({label})", 2.0)
        normal_obs(b_("Intercept") + r[ig, 0] + r[ig, 1] * dq + r[ig, 2] * dr)
    assert_same_logdensity(c, hand)


def test_uncorrelated():
    priors = {"Intercept": N_(), "x": N_(), "sd(1 | g)": HN(), "sd(x | g)": HN(0.5), "sigma": SIGMA}
    c = compile_("y ~ x + (1 + x || g)", priors)
    ig, G = codes("g")
    x = col("x")

    def hand():
        r0 = levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)"))
        r1 = levels_("r(x | g)", G, 0.0, sd_("sd(x | g)", 0.5))
        normal_obs(b_("Intercept") + b_("x") * x + r0[ig] + r1[ig] * x)
    assert_same_logdensity(c, hand)


def test_slope_only_group_term():
    c = compile_("y ~ x + (0 + x | g)", {"Intercept": N_(), "x": N_(), "sd(x | g)": HN(), "sigma": SIGMA})
    ig, G = codes("g")

    def hand():
        r = levels_("r(x | g)", G, 0.0, sd_("sd(x | g)"))
        normal_obs(b_("Intercept") + b_("x") * col("x") + r[ig] * col("x"))
    assert_same_logdensity(c, hand)


def test_nesting_slash():
    """(1 | g/h) = (1 | g) + (1 | g:h)."""
    priors = {"Intercept": N_(), "sd(1 | g)": HN(), "sd(1 | g:h)": HN(0.5), "sigma": SIGMA}
    c = compile_("y ~ (1 | g/h)", priors)
    ig, G = codes("g")
    igh, GH = codes("g", "h")
    assert GH == 15 and c.ir.plate("g:h").size == GH

    def hand():
        r1 = levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)"))
        r2 = levels_("r(1 | g:h)", GH, 0.0, sd_("sd(1 | g:h)", 0.5))
        normal_obs(b_("Intercept") + r1[ig] + r2[igh])
    assert_same_logdensity(c, hand)


def test_pair_grouping_factor():
    """(1 | h:period): one level per distinct pair, in sorted order of the pairs."""
    c = compile_("y ~ x + (1 | h:period)", {"Intercept": N_(), "x": N_(), "sd(1 | h:period)": HN(),
                                            "sigma": SIGMA})
    ip, P = codes("h", "period")
    pairs = sorted({(h, int(p)) for h, p in zip(DF["h"], DF["period"])})
    assert c.enc.labels["h:period"] == [f"{h}:{p}" for h, p in pairs]

    def hand():
        r = levels_("r(1 | h:period)", P, 0.0, sd_("sd(1 | h:period)"))
        normal_obs(b_("Intercept") + b_("x") * col("x") + r[ip])
    assert_same_logdensity(c, hand)


def test_crossed():
    priors = {"Intercept": N_(), "sd(1 | g)": HN(), "sd(1 | h)": HN(0.5), "sd(x | f)": HN(0.3),
              "sigma": SIGMA}
    c = compile_("y ~ (1 | g) + (1 | h) + (0 + x | f)", priors)
    ig, G = codes("g")
    ih, H = codes("h")
    i_f, F = codes("f")

    def hand():
        rg = levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)"))
        rh = levels_("r(1 | h)", H, 0.0, sd_("sd(1 | h)", 0.5))
        rf = levels_("r(x | f)", F, 0.0, sd_("sd(x | f)", 0.3))
        normal_obs(b_("Intercept") + rg[ig] + rh[ih] + rf[i_f] * col("x"))
    assert_same_logdensity(c, hand)


def test_two_blocks_on_one_plate():
    """A correlated block and a single slope on the same plate: the effects stack consistently."""
    priors = {"Intercept": N_(), "sd(1 | g)": HN(), "sd(x | g)": HN(0.5), "cor(1, x | g)": Prior("lkj", (2.0,)),
              "sd(z | g)": HN(0.3), "sigma": SIGMA}
    c = compile_("y ~ (0 + z | g) + (1 + x | g)", priors)
    ig, G = codes("g")
    x, z = col("x"), col("z")

    def hand():
        rz = levels_("r(z | g)", G, 0.0, sd_("sd(z | g)", 0.3))
        r = mvn_block("r(1 + x | g)", G, [sd_("sd(1 | g)"), sd_("sd(x | g)", 0.5)], "L(1 + x | g)", 2.0)
        normal_obs(b_("Intercept") + r[ig, 0] + r[ig, 1] * x + rz[ig] * z)
    assert_same_logdensity(c, hand)


# ====================================================================== chains
def test_chain_two_levels():
    """x | product/category: x[category] ~ N(x, sd_c), x[product] ~ N(x[category][parent], sd_p)."""
    priors = {"Intercept": N_(), "x": N_(), "sd(x | category)": HN(0.5), "sd(x | product)": HN(0.3),
              "sigma": SIGMA}
    c = compile_("y ~ x | product/category", priors)
    ip, P = codes("product")
    _, C = codes("category")
    parent = parent_map("product", "category")
    x = col("x")

    def hand():
        bx = b_("x")
        xc = levels_("x[category]", C, bx, sd_("sd(x | category)", 0.5))
        xp = levels_("x[product]", P, xc[parent], sd_("sd(x | product)", 0.3))
        normal_obs(b_("Intercept") + xp[ip] * x)
    assert_same_logdensity(c, hand)


def test_chain_three_levels_and_population_term():
    """The chain's term also written as a population term: it enters once, through the chain."""
    priors = {"Intercept": N_(1, 0.3), "log(price)": N_(-1, 0.3), "sd(log(price) | region)": HN(0.3),
              "sd(log(price) | category)": HN(0.3), "sd(log(price) | product)": HN(0.2)}
    c = compile_("log(cnt) ~ log(price) + log(price) | product/category/region", priors, family="poisson")
    ip, P = codes("product")
    _, C = codes("category")
    _, R = codes("region")
    p_pc, p_cr = parent_map("product", "category"), parent_map("category", "region")
    lp = jnp.log(col("price"))

    def hand():
        top = b_("log(price)", -1, 0.3)
        vr = levels_("log(price)[region]", R, top, sd_("sd(log(price) | region)", 0.3))
        vc = levels_("log(price)[category]", C, vr[p_cr], sd_("sd(log(price) | category)", 0.3))
        vp = levels_("log(price)[product]", P, vc[p_pc], sd_("sd(log(price) | product)", 0.2))
        eta = b_("Intercept", 1, 0.3) + vp[ip] * lp
        observe(dist.Poisson(jnp.exp(eta)), col("cnt"))
    assert_same_logdensity(c, hand)


@pytest.mark.parametrize("text", ["y ~ x + 1 | g", "y ~ 1 | g"])
def test_bare_varying_intercept_with_population_intercept(text):
    """1 | g with a population intercept: Intercept[g] ~ N(Intercept, sd)."""
    has_x = "x +" in text
    priors = {"Intercept": N_(3, 1), "sd(1 | g)": HN(), "sigma": SIGMA, **({"x": N_()} if has_x else {})}
    c = compile_(text, priors)
    ig, G = codes("g")

    def hand():
        a = levels_("Intercept[g]", G, b_("Intercept", 3, 1), sd_("sd(1 | g)"))
        eta = a[ig] + (b_("x") * col("x") if has_x else 0.0)
        normal_obs(eta)
    assert_same_logdensity(c, hand)


@pytest.mark.parametrize("text", ["y ~ 0 + x + 1 | g", "y ~ 1 | g - 1"])
def test_bare_varying_intercept_without_population_intercept(text):
    """1 | g without a population intercept: Intercept[g] ~ N(0, sd)."""
    has_x = "x +" in text
    priors = {"sd(1 | g)": HN(3.0), "sigma": SIGMA, **({"x": N_()} if has_x else {})}
    c = compile_(text, priors)
    assert not c.ir.population or [t.name for t in c.ir.population] == ["x"]
    ig, G = codes("g")

    def hand():
        a = levels_("Intercept[g]", G, 0.0, sd_("sd(1 | g)", 3.0))
        normal_obs(a[ig] + (b_("x") * col("x") if has_x else 0.0))
    assert_same_logdensity(c, hand)


@pytest.mark.parametrize("text", ["y ~ x | g + (1 | g)", "y ~ 1 | g + (0 + x | g)"])
def test_chain_and_group_term_on_one_plate(text):
    """A chain and a group term on the same plate: intercept-like effects and slopes stack consistently."""
    chain_x = text.startswith("y ~ x")
    priors = {"Intercept": N_(), "sd(1 | g)": HN(), "sd(x | g)": HN(0.5), "sigma": SIGMA}
    if chain_x:
        priors["x"] = N_()
    c = compile_(text, priors)
    ig, G = codes("g")
    x = col("x")

    def hand():
        b0 = b_("Intercept")
        if chain_x:   # x[g] ~ N(x, sd), plus a varying intercept r(1 | g) ~ N(0, sd)
            slope = levels_("x[g]", G, b_("x"), sd_("sd(x | g)", 0.5))
            icpt = b0 + levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)"))
        else:         # Intercept[g] ~ N(Intercept, sd), plus a varying slope r(x | g) ~ N(0, sd)
            icpt = levels_("Intercept[g]", G, b0, sd_("sd(1 | g)"))
            slope = levels_("r(x | g)", G, 0.0, sd_("sd(x | g)", 0.5))
        normal_obs(icpt[ig] + slope[ig] * x)
    assert_same_logdensity(c, hand)


SEED = "log(units) ~ log(price) | product/category + 1 | product + (1 | category:period)"
SEED_PRIORS = {"Intercept": N_(1, 0.5), "log(price)": N_(-1, 0.3), "sd(log(price) | category)": HN(0.3),
               "sd(log(price) | product)": HN(0.2), "sd(1 | product)": HN(0.3), "sd(1 | category:period)": HN(0.3)}


def _seed_data():
    ip, P = codes("product")
    _, C = codes("category")
    icp, CP = codes("category", "period")
    return ip, P, C, icp, CP, parent_map("product", "category"), jnp.log(col("price")), col("units")


def test_seed_formula_poisson():
    c = compile_(SEED, SEED_PRIORS, family="poisson")
    ip, P, C, icp, CP, parent, lp, y = _seed_data()

    def hand():
        top = b_("log(price)", -1, 0.3)
        vc = levels_("log(price)[category]", C, top, sd_("sd(log(price) | category)", 0.3))
        vp = levels_("log(price)[product]", P, vc[parent], sd_("sd(log(price) | product)", 0.2))
        a = levels_("Intercept[product]", P, b_("Intercept", 1, 0.5), sd_("sd(1 | product)", 0.3))
        r = levels_("r(1 | category:period)", CP, 0.0, sd_("sd(1 | category:period)", 0.3))
        observe(dist.Poisson(jnp.exp(a[ip] + vp[ip] * lp + r[icp])), y)
    assert_same_logdensity(c, hand)


# ====================================================================== addition terms
def test_known_se():
    """y | se(s): the known sd replaces sigma, which is not a parameter."""
    c = compile_("y | se(s) ~ x + (1 | g)", {"Intercept": N_(), "x": N_(), "sd(1 | g)": HN()})
    assert "sigma" not in c.ir.parameter_names()
    ig, G = codes("g")

    def hand():
        r = levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)"))
        observe(dist.Normal(b_("Intercept") + b_("x") * col("x") + r[ig], col("s")), col("y"))
    assert_same_logdensity(c, hand)


def test_known_se_student_t():
    c = compile_("y | se(s) ~ x", {"Intercept": N_(), "x": N_(), "nu": NU}, family="student_t")

    def hand():
        eta = b_("Intercept") + b_("x") * col("x")
        observe(dist.StudentT(numpyro.sample("nu", dist.LogNormal(2.5, 0.3)), eta, col("s")), col("y"))
    assert_same_logdensity(c, hand)


@pytest.mark.parametrize("family,resp", [("poisson", "cnt"), ("gamma", "pos"), ("lognormal", "pos")])
def test_known_se_rejected_for_other_families(family, resp):
    with pytest.raises(HbmError):
        resolve(parse_formula(f"{resp} | se(s) ~ x"), TableInfo(DF), family=family)


@pytest.mark.parametrize("family", ["normal", "poisson"])
def test_weights(family):
    """y | weights(w): each row's log-likelihood times its weight."""
    resp = RESPONSE[family]
    priors = {"Intercept": N_(LOC[DEFAULT_LINK[family]], 0.3), "x": N_(0, 0.3), "sd(1 | g)": HN(0.3)}
    if family == "normal":
        priors["sigma"] = SIGMA
    c = compile_(f"{resp} | weights(w) ~ x + (1 | g)", priors, family=family)
    ig, G = codes("g")
    w = col("w")

    def hand():
        r = levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)", 0.3))
        eta = b_("Intercept", LOC[DEFAULT_LINK[family]], 0.3) + b_("x", 0, 0.3) * col("x") + r[ig]
        if family == "normal":
            normal_obs(eta, weights=w)
        else:
            observe(dist.Poisson(jnp.exp(eta)), col(resp), weights=w)
    assert_same_logdensity(c, hand)


def test_weights_with_trials():
    c = compile_("succ | trials(n) + weights(w) ~ x", {"Intercept": N_(0, 0.5), "x": N_(0, 0.5)},
                 family="binomial")

    def hand():
        eta = b_("Intercept", 0, 0.5) + b_("x", 0, 0.5) * col("x")
        observe(dist.Binomial(col("n"), logits=eta), col("succ"), weights=col("w"))
    assert_same_logdensity(c, hand)


# ====================================================================== priors as written
def test_fixed_priors_are_deterministic():
    """A number as a prior fixes the value: a deterministic site, not a sampled one."""
    priors = {"Intercept": N_(), "x": Fixed(0.5), "factor(f)": Fixed(0.25), "sd(1 | g)": Fixed(0.7),
              "sigma": Fixed(1.3)}
    c = compile_("y ~ x + factor(f) + (1 | g)", priors)
    ig, G = codes("g")
    not_ref = 1.0 - indicator("f", "10")

    def hand():
        r = levels_("r(1 | g)", G, 0.0, 0.7)
        eta = b_("Intercept") + 0.5 * col("x") + 0.25 * not_ref + r[ig]
        observe(dist.Normal(eta, 1.3), col("y"))
    params = assert_same_logdensity(c, hand)
    tr = _trace(c.model, c.rows, c.consts, params=params)
    for name, value, shape in [("x", 0.5, ()), ("factor(f)", 0.25, (3,)), ("sd(1 | g)", 0.7, ()),
                               ("sigma", 1.3, ())]:
        assert tr[name]["type"] == "deterministic", name
        assert jnp.shape(tr[name]["value"]) == shape
        np.testing.assert_allclose(np.asarray(tr[name]["value"]), value, rtol=1e-6)


def test_fixed_sd_in_chain_and_block():
    """The SPEC's example 'sd(log(price) | category): 1', and a fixed sd in a correlated block."""
    priors = {**SEED_PRIORS, "sd(log(price) | category)": Fixed(1.0)}
    text = SEED.replace("(1 | category:period)", "(1 + x | category:period)")
    priors.pop("sd(1 | category:period)")
    priors.update({"sd(1 | category:period)": HN(0.3), "sd(x | category:period)": Fixed(0.2),
                   "cor(1, x | category:period)": Prior("lkj", (2.0,))})
    c = compile_(text, priors, family="poisson")
    ip, P, C, icp, CP, parent, lp, y = _seed_data()
    x = col("x")

    def hand():
        top = b_("log(price)", -1, 0.3)
        vc = levels_("log(price)[category]", C, top, 1.0)
        vp = levels_("log(price)[product]", P, vc[parent], sd_("sd(log(price) | product)", 0.2))
        a = levels_("Intercept[product]", P, b_("Intercept", 1, 0.5), sd_("sd(1 | product)", 0.3))
        r = mvn_block("r(1 + x | category:period)", CP, [sd_("sd(1 | category:period)", 0.3), jnp.asarray(0.2)],
                      "L(1 + x | category:period)", 2.0)
        observe(dist.Poisson(jnp.exp(a[ip] + vp[ip] * lp + r[icp, 0] + r[icp, 1] * x)), y)
    assert_same_logdensity(c, hand)


def test_location_scale_priors_on_positive_parameters():
    """normal/cauchy on a standard deviation mean their half (loc 0) or zero-truncated distribution."""
    priors = {"Intercept": N_(), "x": N_(), "sd(1 | g)": N_(0, 2), "sd(x | g)": Prior("cauchy", (0.0, 1.0)),
              "sigma": N_(1, 0.5)}
    c = compile_("y ~ x + (1 + x || g)", priors)
    ig, G = codes("g")
    x = col("x")

    def hand():
        r0 = levels_("r(1 | g)", G, 0.0, numpyro.sample("sd(1 | g)", dist.HalfNormal(2.0)))
        r1 = levels_("r(x | g)", G, 0.0, numpyro.sample("sd(x | g)", dist.HalfCauchy(1.0)))
        sigma = numpyro.sample("sigma", dist.TruncatedNormal(1.0, 0.5, low=0.0))
        observe(dist.Normal(b_("Intercept") + b_("x") * x + r0[ig] + r1[ig] * x, sigma), col("y"))
    assert_same_logdensity(c, hand)


# ====================================================================== default priors
def _nice(v: float) -> float:
    return float(f"{v:.3g}")


def test_default_priors_normal():
    """Defaults (resolve._LinkScale, identity link): Intercept student_t(3, mean(y), 2.5 sd(y)),
    coefficients normal(0, 2.5 sd(y) / sd(x)) (median sd of a factor's dummies), group sds
    half_normal(2.5 sd(y) / sd(x)) (sd(x) = 1 for intercepts), lkj(1), sigma exponential(1 / sd(y)),
    all rounded to 3 significant digits."""
    c = compile_("y ~ x + factor(f) + (1 + x | g)", {}, check_priors=False)
    y, x = DF["y"].to_numpy(), DF["x"].to_numpy()
    m, s = y.mean(), y.std()
    dummies = [(DF["f"].astype(str) == lev).to_numpy().astype(float) for lev in ["20", "30", "40"]]
    sd_f = float(np.median([d.std() for d in dummies]))
    want = {
        "Intercept": Prior("student_t", (3.0, _nice(m), _nice(2.5 * s))),
        "x": Prior("normal", (0.0, _nice(2.5 * s / x.std()))),
        "factor(f)": Prior("normal", (0.0, _nice(2.5 * s / sd_f))),
        "sd(1 | g)": Prior("half_normal", (_nice(2.5 * s),)),
        "sd(x | g)": Prior("half_normal", (_nice(2.5 * s / x.std()),)),
        "cor(1, x | g)": Prior("lkj", (1.0,)),
        "sigma": Prior("exponential", (_nice(1.0 / s),)),
    }
    assert _ir_priors(c.ir) == want
    ig, G = codes("g")
    X = jnp.stack([jnp.asarray(d, jnp.float32) for d in dummies], 1)
    a = {k: v.args for k, v in want.items()}
    xj = col("x")

    def hand():
        b0 = numpyro.sample("Intercept", dist.StudentT(*a["Intercept"]))
        bx = b_("x", *a["x"])
        bf = b_("factor(f)", *a["factor(f)"], size=3)
        sds = [sd_("sd(1 | g)", *a["sd(1 | g)"]), sd_("sd(x | g)", *a["sd(x | g)"])]
        r = mvn_block("r(1 + x | g)", G, sds, "L(1 + x | g)", 1.0)
        sigma = numpyro.sample("sigma", dist.Exponential(*a["sigma"]))
        observe(dist.Normal(b0 + bx * xj + X @ bf + r[ig, 0] + r[ig, 1] * xj, sigma), col("y"))
    assert_same_logdensity(c, hand)


def _ir_priors(m: ir.ModelIR) -> dict:
    out = {t.name: t.prior for t in m.population}
    for b in m.groups:
        out.update({b.sd_name(k): p for k, p in enumerate(b.sd_priors)})
        if b.cor_prior is not None:
            out[b.cor_name] = b.cor_prior
    for ch in m.chains:
        out.update({ch.sd_name(k): p for k, p in enumerate(ch.sd_priors)})
    out.update({p.name: p.prior for p in m.family.params})
    return out


def _default_cases():
    x = DF["x"].to_numpy()
    cnt, pos = DF["cnt"].to_numpy(), DF["pos"].to_numpy()
    sx = x.std()
    ly = np.log(pos)
    y = DF["y"].to_numpy()
    return [
        # log link: m = log(mean y), s = 1
        ("log(cnt) ~ x + (1 | g)", "poisson", {
            "Intercept": Prior("student_t", (3.0, _nice(np.log(cnt.mean())), 2.5)),
            "x": Prior("normal", (0.0, _nice(2.5 / sx))), "sd(1 | g)": Prior("half_normal", (2.5,))}),
        ("cnt ~ x", "negative_binomial", {
            "Intercept": Prior("student_t", (3.0, _nice(np.log(cnt.mean())), 2.5)),
            "x": Prior("normal", (0.0, _nice(2.5 / sx))), "phi": Prior("gamma", (2.0, 0.1))}),
        # logit: m = 0, s = 1
        ("bin ~ x", "bernoulli", {
            "Intercept": Prior("student_t", (3.0, 0.0, 2.5)), "x": Prior("normal", (0.0, _nice(2.5 / sx)))}),
        ("pos ~ x", "gamma", {
            "Intercept": Prior("student_t", (3.0, _nice(np.log(pos.mean())), 2.5)),
            "x": Prior("normal", (0.0, _nice(2.5 / sx))), "phi": Prior("gamma", (2.0, 0.1))}),
        # lognormal: the scale of log(y)
        ("pos ~ x", "lognormal", {
            "Intercept": Prior("student_t", (3.0, _nice(ly.mean()), _nice(2.5 * ly.std()))),
            "x": Prior("normal", (0.0, _nice(2.5 * ly.std() / sx))),
            "sigma": Prior("exponential", (_nice(1.0 / ly.std()),))}),
        ("y ~ x", "student_t", {
            "Intercept": Prior("student_t", (3.0, _nice(y.mean()), _nice(2.5 * y.std()))),
            "x": Prior("normal", (0.0, _nice(2.5 * y.std() / sx))),
            "sigma": Prior("exponential", (_nice(1.0 / y.std()),)), "nu": Prior("gamma", (2.0, 0.1))}),
        # a chain: the top and every level's sd scaled by sd(x)
        ("y ~ x | product/category", "normal", {
            "Intercept": Prior("student_t", (3.0, _nice(y.mean()), _nice(2.5 * y.std()))),
            "x": Prior("normal", (0.0, _nice(2.5 * y.std() / sx))),
            "sd(x | product)": Prior("half_normal", (_nice(2.5 * y.std() / sx),)),
            "sd(x | category)": Prior("half_normal", (_nice(2.5 * y.std() / sx),)),
            "sigma": Prior("exponential", (_nice(1.0 / y.std()),))}),
    ]


@pytest.mark.parametrize("text,family,want", _default_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_default_priors_rule(text, family, want):
    m = resolve(parse_formula(text), TableInfo(DF), family=family)
    assert _ir_priors(m) == want


# ====================================================================== non-centred parameterisation
def test_noncentered_chain_and_blocks():
    """Non-centred: z ~ N(0, 1) per level, value = loc + sd * z (a hand-written non-centred model)."""
    c = compile_(SEED, SEED_PRIORS, family="poisson", noncentered=True)
    ip, P, C, icp, CP, parent, lp, y = _seed_data()

    def std(name, size):
        with numpyro.plate(f"levels of {name}", size):
            return numpyro.sample(f"{name}_decentered", dist.Normal(0.0, 1.0))

    def hand():
        top = bz_("log(price)", -1, 0.3)
        vc = top + sd_("sd(log(price) | category)", 0.3) * std("log(price)[category]", C)
        vp = vc[parent] + sd_("sd(log(price) | product)", 0.2) * std("log(price)[product]", P)
        a = bz_("Intercept", 1, 0.5) + sd_("sd(1 | product)", 0.3) * std("Intercept[product]", P)
        r = sd_("sd(1 | category:period)", 0.3) * std("r(1 | category:period)", CP)
        observe(dist.Poisson(jnp.exp(a[ip] + vp[ip] * lp + r[icp])), y)
    params = assert_same_logdensity(c, hand)
    # the centred values are reported as deterministic sites
    tr = _trace(c.model, c.rows, c.consts, params=params)
    top = -1 + 0.3 * params["log(price)_decentered"]
    want = top + params["sd(log(price) | category)"] * params["log(price)[category]_decentered"]
    assert tr["log(price)[category]"]["type"] == "deterministic"
    np.testing.assert_allclose(np.asarray(tr["log(price)[category]"]["value"]), np.asarray(want), rtol=1e-5,
                               atol=1e-6)


def test_noncentered_correlated_block():
    """Correlated block, non-centred by its Cholesky factor: r = z (diag(sd) L)'."""
    priors = {"Intercept": N_(), "x": N_(), "sd(1 | g)": HN(), "sd(x | g)": HN(0.5),
              "cor(1, x | g)": Prior("lkj", (2.0,)), "sigma": SIGMA}
    c = compile_("y ~ x + (1 + x | g)", priors, noncentered=True)
    ig, G = codes("g")
    x = col("x")

    def hand():
        sds = jnp.stack([sd_("sd(1 | g)"), sd_("sd(x | g)", 0.5)])
        chol = numpyro.sample("L(1 + x | g)", dist.LKJCholesky(2, concentration=2.0))
        with numpyro.plate("levels", G):
            z = numpyro.sample("r(1 + x | g)_base", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        r = z @ (sds[:, None] * chol).T
        normal_obs(bz_("Intercept") + bz_("x") * x + r[ig, 0] + r[ig, 1] * x)
    assert_same_logdensity(c, hand)


def test_noncentered_differs_from_centred_by_the_log_jacobian():
    """Same chain values pushed through both parameterisations: the log densities differ by
    exactly sum over plates of (levels * log sd), the Jacobian of z -> loc + sd * z."""
    priors = {"Intercept": N_(), "x": N_(), "sd(x | category)": HN(0.5), "sd(x | product)": HN(0.3),
              "sigma": SIGMA}
    text = "y ~ x | product/category"
    cen = compile_(text, priors)
    non = compile_(text, priors, noncentered=True)
    parent = parent_map("product", "category")
    rng = np.random.default_rng(1)
    for _ in range(3):
        p = {"Intercept": 0.3, "x": -0.4, "sd(x | category)": 0.6, "sd(x | product)": 0.25, "sigma": 1.1}
        p = {k: jnp.float32(v) for k, v in p.items()}
        zc, zp = jnp.asarray(rng.normal(size=4), jnp.float32), jnp.asarray(rng.normal(size=12), jnp.float32)
        vc = p["x"] + p["sd(x | category)"] * zc
        vp = vc[parent] + p["sd(x | product)"] * zp
        lp_c, _ = log_density(cen.model, (cen.rows, cen.consts), {}, {**p, "x[category]": vc, "x[product]": vp})
        std = {"Intercept_decentered": p["Intercept"], "x_decentered": p["x"]}  # N(0, 1) priors: z = value
        rest = {k: v for k, v in p.items() if k not in ("Intercept", "x")}
        lp_n, _ = log_density(non.model, (non.rows, non.consts), {},
                              {**rest, **std, "x[category]_decentered": zc, "x[product]_decentered": zp})
        jac = 4 * jnp.log(p["sd(x | category)"]) + 12 * jnp.log(p["sd(x | product)"])
        np.testing.assert_allclose(float(lp_n), float(lp_c + jac), rtol=RTOL, atol=ATOL)


# ====================================================================== the harness itself
def test_harness_detects_a_wrong_level_order():
    """Negative control: a hand-written model with the levels of g reversed must not match."""
    c = compile_("y ~ (1 | g)", {"Intercept": N_(), "sd(1 | g)": HN(2.0), "sigma": SIGMA})
    ig, G = codes("g")

    def hand():
        r = levels_("r(1 | g)", G, 0.0, sd_("sd(1 | g)", 2.0))
        normal_obs(b_("Intercept") + r[G - 1 - ig])
    with pytest.raises(AssertionError):
        assert_same_logdensity(c, hand)


@pytest.mark.parametrize("family", ["normal", "student_t"])
def test_log_link_on_a_real_family_is_an_error(family):
    """SPEC 1: with family normal, log(y) is an error that suggests family lognormal."""
    with pytest.raises(HbmError, match="lognormal"):
        resolve(parse_formula("log(y) ~ x"), TableInfo(DF), family=family)
