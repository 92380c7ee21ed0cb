"""Priors: parsing spec text, errors, and the NumPyro distributions they become."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st
from hypothesis import given, settings, strategies as hs

from hbm.errors import HbmError
from hbm.frontend.priors import FAMILIES, Fixed, PerLevel, Prior, check_fixed, parse_prior, to_distribution


# jitted with the distribution as a pytree argument: one compile per family, not one per op
_log_prob = jax.jit(lambda d, x: d.log_prob(x))
_sample = jax.jit(lambda d, key, n: d.sample(key, (n,)), static_argnums=2)


def lp(prior: str, support: str, x, dim=None):
    d = to_distribution(parse_prior(prior, "p"), support, dim)
    return np.asarray(_log_prob(d, jnp.asarray(x, dtype=jnp.float32)), dtype=float)


def err(fn, *args, **kw) -> HbmError:
    with pytest.raises(HbmError) as e:
        fn(*args, **kw)
    return e.value


X = np.array([0.05, 0.5, 1.0, 2.5, 7.0])


# ---------------------------------------------------------------- parsing
def test_parse_calls_and_numbers():
    assert parse_prior("normal(0, 1)", "p") == Prior("normal", (0.0, 1.0))
    assert parse_prior("student_t(3, -1.5, 2.5)", "p") == Prior("student_t", (3.0, -1.5, 2.5))
    assert parse_prior("lkj(2)", "p") == Prior("lkj", (2.0,))
    assert parse_prior(3, "p") == Fixed(3.0)
    assert parse_prior(0.25, "p") == Fixed(0.25)
    assert parse_prior("2.5", "p") == Fixed(2.5)
    assert parse_prior(-1, "p") == Fixed(-1.0)


def test_aliases_from_other_tools():
    assert parse_prior("HalfNormal(1)", "p") == Prior("half_normal", (1.0,))
    assert parse_prior("gaussian(0, 1)", "p").family == "normal"
    assert parse_prior("lkj_corr_cholesky(2)", "p").family == "lkj"
    assert parse_prior("half_t(3, 1)", "p").family == "half_student_t"


def test_str():
    assert str(Prior("normal", (0.0, 1.0))) == "normal(0, 1)"
    assert str(Prior("student_t", (3.0, 0.0, 2.5))) == "student_t(3, 0, 2.5)"
    assert str(Prior("normal", (-2.0, 0.1))) == "normal(-2, 0.1)"
    assert str(Fixed(3.0)) == "3" and str(Fixed(0.5)) == "0.5"


finite = hs.floats(-1e6, 1e6, allow_nan=False, width=64)
positive = hs.floats(1e-6, 1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(mu=finite, sigma=positive, nu=positive)
def test_str_round_trips(mu, sigma, nu):
    for p in (Prior("normal", (mu, sigma)), Prior("student_t", (nu, mu, sigma)), Fixed(mu)):
        assert parse_prior(str(p), "p") == p


@pytest.mark.parametrize("text, message, hint", [
    ("nromal(0, 1)", "unknown prior family 'nromal'", "did you mean 'normal'?"),
    ("halfnormal(1)", None, None),  # an alias, accepted
    ("half_nromal(1)", "unknown prior family 'half_nromal'", "did you mean 'half_normal'?"),
    ("zzz(1)", "unknown prior family 'zzz'", "prior families are normal"),
    ("normal(0)", "normal() takes 2 arguments (mu, sigma), got 1", "e.g. normal(0, 1)"),
    ("exponential(1, 2)", "exponential() takes 1 argument (rate), got 2", None),
    ("normal(0, sigma=1)", "prior arguments are positional, got 'sigma='", "write normal(mu, sigma)"),
    ("normal(0, a)", "normal(): sigma must be a number, got 'a'", None),
    ("normal(0, [1, 2])", "normal(): sigma must be a number", None),
    ("normal(0, 0)", "normal(): sigma must be positive, got 0", None),
    ("normal(0, -1)", "normal(): sigma must be positive, got -1", None),
    ("student_t(0, 0, 1)", "student_t(): nu must be positive, got 0", None),
    ("gamma(2, -1)", "gamma(): rate must be positive", None),
    ("lkj(0)", "lkj(): eta must be positive, got 0", None),
    ("beta(0, 1)", "beta(): a must be positive", None),
    ("uniform(1, 0)", "uniform(low, high) needs low < high, got uniform(1, 0)", None),
    ("uniform(1, 1)", "needs low < high", None),
    ("normal(0, 1e999)", "prior values must be finite numbers, got inf", None),
    ("normal", "prior 'normal' needs its arguments", "e.g. normal(0, 1)"),
    ("normal(0, 1", "ends too early", None),
])
def test_parse_errors(text, message, hint):
    if message is None:
        parse_prior(text, "priors: x")
        return
    e = err(parse_prior, text, "priors: x")
    assert message in e.message
    assert e.problems[0].where == "priors: x"
    if hint:
        assert hint in e.problems[0].hint


@pytest.mark.parametrize("value, message", [
    (True, "got True"), (float("nan"), "finite"), (float("inf"), "finite"),
    (None, "no value"), ([1, 2], "got a list"), ({"a": 1}, "got a mapping"),
])
def test_parse_bad_values(value, message):
    e = err(parse_prior, value, "priors: sd(1 | g)")
    assert message in e.message and e.problems[0].where == "priors: sd(1 | g)"


def test_every_family_has_an_example_that_parses():
    from hbm.frontend.priors import EXAMPLES
    assert set(EXAMPLES) == set(FAMILIES)
    for fam, ex in EXAMPLES.items():
        assert parse_prior(ex, "p").family == fam


# ---------------------------------------------------------------- densities
def test_real_densities_match_scipy():
    xs = np.array([-3.0, -0.5, 0.0, 1.2, 4.0])
    np.testing.assert_allclose(lp("normal(1, 2)", "real", xs), st.norm.logpdf(xs, 1, 2), rtol=1e-5)
    np.testing.assert_allclose(lp("student_t(3, 1, 2)", "real", xs), st.t.logpdf(xs, 3, 1, 2), rtol=1e-5)
    np.testing.assert_allclose(lp("cauchy(0, 2)", "real", xs), st.cauchy.logpdf(xs, 0, 2), rtol=1e-5)
    np.testing.assert_allclose(lp("uniform(-5, 5)", "real", xs), np.full(5, -math.log(10)), rtol=1e-6)


def test_positive_families_match_scipy():
    np.testing.assert_allclose(lp("half_normal(2)", "positive", X), st.halfnorm.logpdf(X, 0, 2), rtol=1e-5)
    np.testing.assert_allclose(lp("half_cauchy(2)", "positive", X), st.halfcauchy.logpdf(X, 0, 2), rtol=1e-5)
    np.testing.assert_allclose(lp("exponential(2)", "positive", X), st.expon.logpdf(X, scale=0.5), rtol=1e-5)
    np.testing.assert_allclose(lp("gamma(2, 0.5)", "positive", X), st.gamma.logpdf(X, 2, scale=2), rtol=1e-5)
    np.testing.assert_allclose(lp("lognormal(0.5, 1.5)", "positive", X),
                               st.lognorm.logpdf(X, 1.5, scale=math.exp(0.5)), rtol=1e-5)
    np.testing.assert_allclose(lp("half_student_t(3, 2)", "positive", X),
                               np.log(2) + st.t.logpdf(X, 3, 0, 2), rtol=1e-5)


def test_unit_families():
    u = np.array([0.05, 0.3, 0.5, 0.9])
    np.testing.assert_allclose(lp("beta(2, 3)", "unit", u), st.beta.logpdf(u, 2, 3), rtol=1e-5)
    np.testing.assert_allclose(lp("uniform(0, 1)", "unit", u), np.zeros(4), atol=1e-6)


def test_per_level_priors_are_independent_elements():
    prior = PerLevel((Prior("normal", (1.0, 2.0)), Prior("student_t", (3.0, -1.0, 0.5))), ("u", "v"))
    assert str(prior) == "[u] normal(1, 2), [v] student_t(3, -1, 0.5)"
    d = to_distribution(prior, "real")
    assert d.batch_shape == (2,) and d.expand((2,)).to_event(1).event_shape == (2,)
    x = np.array([[0.3, -0.7], [2.0, 1.5]], np.float32)
    expected = np.stack([st.norm.logpdf(x[:, 0], 1, 2), st.t.logpdf(x[:, 1], 3, -1, 0.5)], -1)
    np.testing.assert_allclose(np.asarray(_log_prob(d, jnp.asarray(x))), expected, rtol=1e-5)   # jitted: a pytree
    draws = np.asarray(_sample(d, jax.random.PRNGKey(0), 20000))
    assert draws.shape == (20000, 2)
    np.testing.assert_allclose(np.median(draws, 0), [1.0, -1.0], atol=0.07)   # 4 sd of the median of normal(1, 2)
    e = err(to_distribution, PerLevel((Prior("normal", (0.0, 1.0)), Prior("beta", (2.0, 2.0))), ("u", "v")),
            "real", where="b")
    assert "beta(2, 2) is for values between 0 and 1 but 'b[v]' is real-valued" in e.message


def test_normal_on_positive_is_half_normal():
    d = to_distribution(Prior("normal", (0.0, 2.0)), "positive")
    assert type(d).__name__ == "HalfNormal"
    np.testing.assert_allclose(lp("normal(0, 2)", "positive", X), np.log(2 * st.norm.pdf(X, 0, 2)), rtol=1e-5)
    np.testing.assert_allclose(lp("cauchy(0, 1)", "positive", X), np.log(2 * st.cauchy.pdf(X)), rtol=1e-5)


def test_nonzero_loc_on_positive_is_truncated_at_zero():
    mu, s = -1.0, 2.0
    want = st.truncnorm.logpdf(X, (0 - mu) / s, np.inf, loc=mu, scale=s)
    np.testing.assert_allclose(lp("normal(-1, 2)", "positive", X), want, rtol=1e-5)
    want = st.cauchy.logpdf(X, 1, 2) - np.log(st.cauchy.sf(0, 1, 2))
    np.testing.assert_allclose(lp("cauchy(1, 2)", "positive", X), want, rtol=1e-5)
    want = st.t.logpdf(X, 3, 1.5, 0.5) - np.log(st.t.sf(0, 3, 1.5, 0.5))
    np.testing.assert_allclose(lp("student_t(3, 1.5, 0.5)", "positive", X), want, rtol=1e-4)


def _mass_on_positive(prior: str) -> float:
    """Integral over (0, inf) of the density, by x = tan(theta) on a fine grid."""
    theta = np.linspace(0, np.pi / 2, 200_001)[1:-1]
    x = np.tan(theta)
    dens = np.exp(lp(prior, "positive", x)) / np.cos(theta) ** 2
    return float(np.trapezoid(dens, theta))


@pytest.mark.parametrize("prior", ["student_t(3, 0, 2)", "student_t(1.5, 0, 1)", "half_student_t(4, 0.5)",
                                   "student_t(3, -1, 1)", "cauchy(0, 1)", "normal(2, 1)"])
def test_positive_densities_integrate_to_one(prior):
    assert _mass_on_positive(prior) == pytest.approx(1.0, abs=2e-3)


def test_samples_are_float32_and_positive():
    key = jax.random.PRNGKey(0)  # the distributions built here rather than taken from numpyro as is
    for prior in ["normal(-1, 1)", "cauchy(1, 1)", "student_t(3, -2, 1)"]:
        x = _sample(to_distribution(parse_prior(prior, "p"), "positive"), key, 4000)
        assert x.dtype == jnp.float32 and x.shape == (4000,)
        assert bool(jnp.all(x >= 0)) and bool(jnp.all(jnp.isfinite(x))), prior


def test_truncated_student_t_samples_follow_its_distribution():
    d = to_distribution(parse_prior("student_t(3, -2, 1)", "p"), "positive")
    x = np.asarray(_sample(d, jax.random.PRNGKey(3), 4000), dtype=float)
    cdf = lambda v: (st.t.cdf(v, 3, -2, 1) - st.t.cdf(0, 3, -2, 1)) / st.t.sf(0, 3, -2, 1)  # noqa: E731
    assert st.kstest(x, cdf).pvalue > 1e-3


def test_lkj_cholesky():
    d = to_distribution(Prior("lkj", (2.0,)), "corr_cholesky", dim=3)
    assert type(d).__name__ == "LKJCholesky"
    L = _sample(d, jax.random.PRNGKey(0), 5)
    assert L.shape == (5, 3, 3) and L.dtype == jnp.float32
    np.testing.assert_allclose(np.triu(np.asarray(L), 1), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(L), axis=-1), 1.0, atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(_log_prob(d, L))))
    with pytest.raises(ValueError):
        to_distribution(Prior("lkj", (2.0,)), "corr_cholesky")


# ---------------------------------------------------------------- support mismatches
@pytest.mark.parametrize("prior, support, message", [
    ("exponential(1)", "real", "prior exponential(1) is for positive values but 'b' is real-valued"),
    ("half_normal(1)", "real", "prior half_normal(1) is for positive values but 'b' is real-valued"),
    ("beta(2, 2)", "real", "prior beta(2, 2) is for values between 0 and 1 but 'b' is real-valued"),
    ("normal(0, 1)", "unit", "prior normal(0, 1) is for real values but 'b' is a probability"),
    ("gamma(2, 1)", "unit", "is for positive values but 'b' is a probability"),
    ("beta(2, 2)", "positive", "is for values between 0 and 1 but 'b' is positive"),
    ("lkj(2)", "real", "prior lkj(2) is for correlation matrices but 'b' is real-valued"),
    ("lkj(2)", "positive", "is for correlation matrices"),
    ("normal(0, 1)", "corr_cholesky", "'b' is a correlation matrix: its prior must be lkj(eta), got normal(0, 1)"),
    ("uniform(-1, 1)", "positive", "prior uniform(-1, 1) allows negative values but 'b' is positive"),
    ("uniform(0, 2)", "unit", "prior uniform(0, 2) allows values outside [0, 1]"),
])
def test_support_mismatch(prior, support, message):
    e = err(to_distribution, parse_prior(prior, "b"), support, 2, where="b")
    assert message in e.message
    assert e.problems[0].where == "b" and e.problems[0].hint


def test_uniform_fits_any_support_holding_its_bounds():
    for support in ("real", "positive", "unit"):
        assert type(to_distribution(Prior("uniform", (0.0, 1.0)), support)).__name__ == "Uniform"
    assert type(to_distribution(Prior("uniform", (-1.0, 1.0)), "real")).__name__ == "Uniform"


def test_mismatch_without_where_and_bad_calls():
    assert "this parameter is real-valued" in err(to_distribution, Prior("exponential", (1.0,)), "real").message
    with pytest.raises(ValueError):
        to_distribution(Prior("normal", (0.0, 1.0)), "complex")
    with pytest.raises(TypeError):
        to_distribution(Fixed(1.0), "real")


def test_check_fixed():
    check_fixed(Fixed(-1.0), "real", "b")
    check_fixed(Fixed(2.0), "positive", "sd(1 | g)")
    check_fixed(Fixed(0.5), "unit", "p")
    assert "'sd(1 | g)' is positive and cannot be fixed to 0" in err(
        check_fixed, Fixed(0.0), "positive", "sd(1 | g)").message
    assert "cannot be fixed to 1.5" in err(check_fixed, Fixed(1.5), "unit", "p").message
    assert "correlation matrix" in err(check_fixed, Fixed(0.5), "corr_cholesky", "cor(1, x | g)").message
