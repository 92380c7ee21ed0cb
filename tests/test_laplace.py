"""map and laplace with group-level effects integrated out (hbm/engines/marginal.py).

Every number is checked against an independent computation: the exact Gaussian
marginal likelihood (NumPy), its maximum found by scipy, a hand-written Laplace
approximation for a Poisson model, finite differences for the gradient.
"""
from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import gammaln

import hbm
from hbm.engines import FitProblem, get_engine
from hbm.engines.marginal import MarginalOptions, MarginalProblem, split_sites
from hbm.errors import HbmError
from hbm.spec import InferenceSpec


def mvn_logpdf(y, mean, cov):
    chol = np.linalg.cholesky(cov)
    r = np.linalg.solve(chol, y - mean)
    return -0.5 * r @ r - np.log(np.diag(chol)).sum() - 0.5 * len(y) * np.log(2 * np.pi)


def problem_at(model, kwargs, objective="likelihood", jacobian=False):
    """A MarginalProblem (float64) and its jitted evaluate."""
    split = split_sites(model, kwargs)
    mp = MarginalProblem(FitProblem(model, kwargs), split, MarginalOptions(objective=objective, jacobian=jacobian), 0)
    return mp, jax.jit(mp.evaluate)


# ------------------------------------------------------------------ crossed normal effects: the marginal is exact
RNG = np.random.default_rng(3)
N, G1, G2 = 60, 6, 4
G1_IDX, G2_IDX = RNG.integers(0, G1, N), RNG.integers(0, G2, N)
XC = RNG.normal(size=N)
YC = 1.0 + 0.5 * XC + RNG.normal(0, 0.8, G1)[G1_IDX] + RNG.normal(0, 0.5, G2)[G2_IDX] + RNG.normal(0, 0.6, N)


def crossed(x, g1, g2, y):
    a = numpyro.sample("a", dist.Normal(0.0, 10.0))
    b = numpyro.sample("b", dist.Normal(0.0, 10.0))
    s1 = numpyro.sample("s1", dist.HalfNormal(2.0))
    s2 = numpyro.sample("s2", dist.HalfNormal(2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("g1", G1):
        z1 = numpyro.sample("z1", dist.Normal(0.0, 1.0))
    with numpyro.plate("g2", G2):
        z2 = numpyro.sample("z2", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * x + s1 * z1[g1] + s2 * z2[g2], sigma), obs=y)


CROSSED_KW = {"x": jnp.asarray(XC), "g1": jnp.asarray(G1_IDX), "g2": jnp.asarray(G2_IDX), "y": jnp.asarray(YC)}
XC, YC = (np.asarray(CROSSED_KW[k], np.float64) for k in ("x", "y"))   # the model sees float32 data


def test_sites_split_by_plate():
    split = split_sites(crossed, CROSSED_KW)
    assert split.theta == ("a", "b", "s1", "s2", "sigma") and split.u == ("z1", "z2") and split.n_u == G1 + G2


@pytest.mark.parametrize("objective,jacobian", [("likelihood", False), ("posterior", False), ("posterior", True)])
def test_normal_marginal_equals_exact_gaussian_marginal(objective, jacobian):
    a, b, s1, s2, sigma = 0.7, 0.4, 1.3, 0.6, 0.9
    z1, z2 = np.eye(G1)[G1_IDX], np.eye(G2)[G2_IDX]
    cov = s1**2 * z1 @ z1.T + s2**2 * z2 @ z2.T + sigma**2 * np.eye(N)
    exact = mvn_logpdf(YC, a + b * XC, cov)
    if objective == "posterior":
        exact += -0.5 * (a / 10) ** 2 - np.log(10 * np.sqrt(2 * np.pi)) - 0.5 * (b / 10) ** 2 - np.log(10 * np.sqrt(2 * np.pi))
        exact += sum(np.log(2 / (2 * np.sqrt(2 * np.pi))) - 0.5 * (s / 2) ** 2 for s in (s1, s2, sigma))
        if jacobian:   # unconstrained log sd: d sd / d log sd = sd
            exact += np.log(s1) + np.log(s2) + np.log(sigma)
    with jax.enable_x64(True):
        mp, ev = problem_at(crossed, CROSSED_KW, objective, jacobian)
        theta = jnp.array([a, b, np.log(s1), np.log(s2), np.log(sigma)])
        value, grad, u, chol, ok, conv, it = ev(theta, mp.u0, mp.dyn)
    assert bool(ok) and bool(conv) and int(it) <= 2   # a quadratic in u: one Newton step
    np.testing.assert_allclose(float(value), exact, rtol=1e-10)


def test_normal_marginal_gradient_matches_exact_gradient():
    z1, z2 = np.eye(G1)[G1_IDX], np.eye(G2)[G2_IDX]

    def exact(t):
        cov = np.exp(2 * t[2]) * z1 @ z1.T + np.exp(2 * t[3]) * z2 @ z2.T + np.exp(2 * t[4]) * np.eye(N)
        return mvn_logpdf(YC, t[0] + t[1] * XC, cov)

    t = np.array([0.7, 0.4, np.log(1.3), np.log(0.6), np.log(0.9)])
    fd = np.array([(exact(t + e) - exact(t - e)) / 2e-6 for e in np.eye(5) * 1e-6])
    with jax.enable_x64(True):
        mp, ev = problem_at(crossed, CROSSED_KW)
        grad = np.asarray(ev(jnp.asarray(t), mp.u0, mp.dyn)[1])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ Poisson: the Laplace approximation by hand
GP, NP_ = 8, 80
GP_IDX = np.arange(NP_) % GP
XP = np.random.default_rng(5).normal(size=NP_)
YP = np.random.default_rng(6).poisson(np.exp(0.4 + 0.3 * XP + np.random.default_rng(7).normal(0, 0.6, GP)[GP_IDX]))


def poisson_glmm(x, g, y):
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("g", GP):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(a + b * x + s * z[g])), obs=y)


POIS_KW = {"x": jnp.asarray(XP), "g": jnp.asarray(GP_IDX), "y": jnp.asarray(YP)}
XP = np.asarray(POIS_KW["x"], np.float64)


def laplace_by_hand(t):
    """Sum over groups of the 1-d Laplace approximation of log int p(y_g | z) N(z; 0, 1) dz."""
    a, b, s = t[0], t[1], np.exp(t[2])
    total = 0.0
    for j in range(GP):
        sel = GP_IDX == j
        eta0, y = a + b * XP[sel], YP[sel]
        z = 0.0
        for _ in range(50):   # Newton in one dimension
            mu = np.exp(eta0 + s * z)
            z -= (s * (y - mu).sum() - z) / (-(s**2) * mu.sum() - 1.0)
        mu = np.exp(eta0 + s * z)
        f = (y * np.log(mu) - mu - gammaln(y + 1)).sum() - 0.5 * z**2 - 0.5 * np.log(2 * np.pi)
        total += f + 0.5 * np.log(2 * np.pi) - 0.5 * np.log(s**2 * mu.sum() + 1.0)
    return total


def test_poisson_laplace_matches_hand_computation_and_finite_differences():
    t = np.array([0.3, 0.2, np.log(0.5)])
    with jax.enable_x64(True):
        mp, ev = problem_at(poisson_glmm, POIS_KW)
        value, grad, u, chol, ok, conv, it = ev(jnp.asarray(t), mp.u0, mp.dyn)
        assert bool(ok) and bool(conv) and int(it) > 1
        np.testing.assert_allclose(float(value), laplace_by_hand(t), rtol=1e-9)
        # the gradient (implicit function theorem, with the log det's third derivatives) against differences
        fd = np.array([(float(ev(jnp.asarray(t + e), mp.u0, mp.dyn)[0]) - float(ev(jnp.asarray(t - e), mp.u0, mp.dyn)[0]))
                       / 2e-5 for e in np.eye(3) * 1e-5])
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-5, atol=1e-6)


def test_map_poisson_maximises_the_hand_laplace():
    ref = minimize(lambda t: -laplace_by_hand(t), np.array([0.0, 0.0, np.log(0.3)]), method="Nelder-Mead",
                   options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    cfg = InferenceSpec(engine="map", options=(("objective", "likelihood"),))
    r = get_engine("map").fit(FitProblem(poisson_glmm, POIS_KW), cfg)
    assert r.info["converged"] and r.info["group_dim"] == GP and r.samples["z"].shape == (1, 1, GP)
    got = np.array([r.samples["a"][0, 0], r.samples["b"][0, 0], np.log(r.samples["s"][0, 0])])
    np.testing.assert_allclose(got, ref.x, atol=2e-4)
    assert abs(-r.info["final_loss"] - (-ref.fun)) < 1e-6


# ------------------------------------------------------------------ hbm model, sleepstudy-sized: ML and laplace
G, PER = 18, 10
_rng = np.random.default_rng(11)
_days = np.tile(np.arange(PER, dtype=float), G)
_g = np.repeat(np.arange(G), PER)
_b = _rng.multivariate_normal([0, 0], [[24.0**2, 0.1 * 24 * 6], [0.1 * 24 * 6, 6.0**2]], G)
SLEEP = pd.DataFrame({"y": 250 + 10 * _days + _b[_g, 0] + _b[_g, 1] * _days + _rng.normal(0, 25, G * PER),
                      "days": _days, "subject": [f"s{i}" for i in _g]})


def exact_ml():
    """Maximum of the exact Gaussian marginal likelihood of y ~ days + (days | subject), by scipy."""
    y, x = SLEEP["y"].to_numpy(), SLEEP["days"].to_numpy()
    X = np.stack([np.ones_like(x), x], 1)
    Z = np.zeros((len(y), 2 * G))
    Z[np.arange(len(y)), 2 * _g], Z[np.arange(len(y)), 2 * _g + 1] = 1.0, x

    def nll(t):
        s0, s1, rho, sig = np.exp(t[2]), np.exp(t[3]), np.tanh(t[4]), np.exp(t[5])
        block = np.array([[s0**2, rho * s0 * s1], [rho * s0 * s1, s1**2]])
        cov = Z @ np.kron(np.eye(G), block) @ Z.T + sig**2 * np.eye(len(y))
        return -mvn_logpdf(y, X @ t[:2], cov)

    start = np.array([250.0, 10.0, np.log(20.0), np.log(5.0), 0.0, np.log(20.0)])
    res = minimize(nll, start, method="BFGS", options={"gtol": 1e-7})
    return res, nll


@pytest.fixture(scope="module")
def sleep_model():
    return hbm.compile({"formula": "y ~ days + (days | subject)"}, SLEEP)


@pytest.fixture(scope="module")
def reference():
    return exact_ml()


def test_map_matches_the_exact_maximum_likelihood(sleep_model, reference):
    res, _ = reference
    fit = hbm.fit(sleep_model, engine="map", options=(("objective", "likelihood"),))
    s = fit.summary()["mean"]
    want = {"Intercept": res.x[0], "days": res.x[1], "sd(1 | subject)": np.exp(res.x[2]),
            "sd(days | subject)": np.exp(res.x[3]), "cor(1, days | subject)": np.tanh(res.x[4]),
            "sigma": np.exp(res.x[5])}
    for k, v in want.items():
        assert abs(s[k] - v) <= 2e-3 * max(abs(v), 1.0), (k, s[k], v)
    assert fit.engine.info["converged"] and abs(fit.engine.info["final_loss"] - res.fun) < 1e-4


def test_laplace_with_a_correlated_block_matches_the_exact_curvature(sleep_model, reference):
    """Draws of theta: centred at the ML estimate, covariance the inverse Hessian of the exact marginal."""
    res, nll = reference
    t, h = res.x, 1e-4
    hess = np.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            ei, ej = np.eye(6)[i] * h, np.eye(6)[j] * h
            hess[i, j] = (nll(t + ei + ej) - nll(t + ei - ej) - nll(t - ei + ej) + nll(t - ei - ej)) / (4 * h * h)
    cov = np.linalg.inv(hess)   # the beta block and the log-sd entries do not depend on the other coordinates
    draws = 4000
    fit = hbm.fit(sleep_model, engine="laplace", draws=draws, options=(("objective", "likelihood"),))
    smp = fit.engine.samples
    assert all(v.shape[:2] == (1, draws) and np.isfinite(v).all() for v in smp.values())
    out = {(v.base, v.dims): v.values for v in fit.outputs.vars}
    out = {f"{b}[{','.join(d)}]" if d else b: v for (b, d), v in out.items()}
    checks = {"Intercept": (out["Intercept"], 0), "days": (out["days"], 1),
              "log sd(1 | subject)": (np.log(out["sd(1 | subject)"]), 2),
              "log sd(days | subject)": (np.log(out["sd(days | subject)"]), 3)}
    for name, (d, i) in checks.items():
        sd = np.sqrt(cov[i, i])
        assert abs(d.mean() - t[i]) < 4 * sd / np.sqrt(draws), name
        assert abs(d.std() / sd - 1) < 0.06, (name, d.std(), sd)   # MC error of an sd: 1.1% at 4000 draws
    assert fit.engine.info["conditional"] == "exact"
    # group-level values: every level has draws that vary
    assert out["days[subject]"].shape[-1] == G and (out["days[subject]"].std(axis=(0, 1)) > 0).all()


def test_default_laplace_on_a_correlated_block_runs_near_the_ml_estimate(sleep_model, reference):
    """The default (posterior, unconstrained mode) no longer stops on a non positive definite Hessian,
    and its weak default priors move the sds by much less than their posterior sd (the joint mode was 3-6x off)."""
    res, _ = reference
    fit = hbm.fit(sleep_model, engine="laplace", draws=500)
    out = {v.base: v.values for v in fit.outputs.vars if not v.dims}
    for name, i in (("sd(1 | subject)", 2), ("sd(days | subject)", 3)):
        d = np.log(out[name])
        assert abs(np.median(d) - res.x[i]) < 0.5 * d.std(), name
    assert fit.engine.info["objective"] == "posterior" and fit.engine.info["jacobian"] is True


# ------------------------------------------------------------------ refusals
def test_refuses_too_many_group_effects(sleep_model):
    with pytest.raises(HbmError, match="36 group-level values") as e:
        hbm.fit(sleep_model, engine="map", options=(("max_group_effects", 20),))
    assert "svi" in e.value.problems[0].hint and "nuts" in e.value.problems[0].hint


def test_unknown_option_is_named(sleep_model):
    with pytest.raises(HbmError, match="unknown option 'objetive'") as e:
        hbm.fit(sleep_model, engine="laplace", options=(("objetive", "likelihood"),))
    assert "objective" in e.value.problems[0].hint
    with pytest.raises(HbmError, match="objective must be one of"):
        hbm.fit(sleep_model, engine="map", options=(("objective", "ml"),))


def test_flat_marginal_is_refused_in_plain_words():
    """No group variation at all: the ML sd goes to zero, where the marginal is flat in log sd."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.normal(size=60), "g": [f"g{i % 6}" for i in range(60)]})
    df["y"] -= df.groupby("g")["y"].transform("mean")   # group means exactly equal
    m = hbm.compile({"formula": "y ~ 1 + (1 | g)"}, df)
    with pytest.raises(HbmError, match="not positive definite") as e:
        hbm.fit(m, engine="laplace", draws=10, options=(("objective", "likelihood"),))
    assert "sd(1 | g)" in e.value.problems[0].message and "zero" in e.value.problems[0].hint


def test_centred_and_noncentred_chains_have_the_same_marginal():
    """A coefficient chain plus an intercept block, Poisson: the Laplace approximation is invariant
    to the affine reparameterisation u = loc + sd z, so both parameterisations give one optimum."""
    rng = np.random.default_rng(1)
    cat, prod = np.repeat(np.arange(4), 40), np.repeat(np.arange(20), 8)
    x = rng.normal(size=160)
    bc = -1 + rng.normal(0, 0.3, 4)
    bp = bc[np.arange(20) // 5] + rng.normal(0, 0.2, 20)
    df = pd.DataFrame({"y": rng.poisson(np.exp(1 + bp[prod] * x + rng.normal(0, 0.3, 20)[prod])), "x": x,
                       "product": [f"p{i}" for i in prod], "category": [f"c{i}" for i in cat]})
    fits = []
    for nc in (True, False):
        m = hbm.compile({"formula": "y ~ x | product/category + (1 | product)", "family": "poisson",
                         "noncentered": nc}, df)
        fits.append(hbm.fit(m, engine="map", options=(("objective", "likelihood"),)))
    a, b = (f.engine.info for f in fits)
    assert a["group_dim"] == b["group_dim"] == 4 + 20 + 20 and a["converged"] and b["converged"]
    assert any(s.endswith("_decentered") for s in a["integrated_sites"])
    assert not any(s.endswith("_decentered") for s in b["integrated_sites"])
    assert abs(a["log_marginal"] - b["log_marginal"]) < 1e-6
    sa, sb = (f.summary()["mean"] for f in fits)
    for k in ("x", "sd(x | product)", "sd(x | category)", "sd(1 | product)"):
        assert abs(sa[k] - sb[k]) < 1e-3 * max(1.0, abs(sa[k])), k


def test_minibatches_are_refused():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.normal(size=200), "x": rng.normal(size=200), "g": [f"g{i % 10}" for i in range(200)]})
    m = hbm.compile({"formula": "y ~ x + (1 | g)", "batch_size": 50, "inference": {"engine": "map"}}, df)
    with pytest.raises(HbmError, match="needs every row at once") as e:
        hbm.fit(m, engine="map")
    assert "group_effects: joint" in e.value.problems[0].hint
