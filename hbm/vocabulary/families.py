"""Response families and link functions: one registry entry each.

A family maps the linear predictor ``eta`` (on the link scale) and its own
parameters (sigma, nu, phi) to a NumPyro distribution of the response. Adding a
family is one new :class:`FamilySpec` in ``FAMILIES`` (and any other names for it in
``FAMILY_ALIASES``); a link is one entry in ``INVERSE_LINKS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import numpyro.distributions as dist
import math
from typing import NamedTuple
import jax
from jax.scipy.special import gammaln

INVERSE_LINKS: dict[str, Callable] = {
    "identity": lambda eta: eta,
    "log": jnp.exp,
    "logit": jsp.expit,
    "probit": lambda eta: jsp.ndtr(eta),
    "inverse": lambda eta: 1.0 / eta,
}


@dataclass(frozen=True)
class FamilySpec:
    name: str
    links: tuple[str, ...]                 # allowed links, the default first
    params: tuple[str, ...]                # family parameters, all positive
    support: str                           # "real", "count", "binary", "trials", "positive", "unit"
    make: Callable                         # make(mean_or_eta, link, aux: dict, extra: dict) -> Distribution

    @property
    def default_link(self) -> str:
        return self.links[0]


def _mean(eta, link):
    return INVERSE_LINKS[link](eta)


def _normal(eta, link, aux, extra):
    sigma = extra["se"] if "se" in extra else aux["sigma"]
    return dist.Normal(_mean(eta, link), sigma)


def _student_t(eta, link, aux, extra):
    sigma = extra["se"] if "se" in extra else aux["sigma"]
    return dist.StudentT(aux["nu"], _mean(eta, link), sigma)


def _poisson(eta, link, aux, extra):
    return dist.Poisson(_mean(eta, link))


def _negbin(eta, link, aux, extra):
    return dist.NegativeBinomial2(_mean(eta, link), aux["phi"])


def _bernoulli(eta, link, aux, extra):
    if link == "logit":
        return dist.BernoulliLogits(eta)
    return dist.BernoulliProbs(jnp.clip(_mean(eta, link), 1e-7, 1 - 1e-7))


def _binomial(eta, link, aux, extra):
    n = jnp.asarray(extra["trials"]).astype(jnp.int32)
    if link == "logit":
        return dist.BinomialLogits(eta, total_count=n)
    return dist.BinomialProbs(jnp.clip(_mean(eta, link), 1e-7, 1 - 1e-7), total_count=n)


def _gamma(eta, link, aux, extra):
    mu, phi = _mean(eta, link), aux["phi"]
    return dist.Gamma(phi, phi / mu)


def _lognormal(eta, link, aux, extra):
    # the linear predictor is the location of log(y), whichever of identity/log is written
    return dist.LogNormal(eta, aux["sigma"])


def _beta(eta, link, aux, extra):
    mu, phi = _mean(eta, link), aux["phi"]
    mu = jnp.clip(mu, 1e-6, 1 - 1e-6)
    return dist.Beta(mu * phi, (1 - mu) * phi)


FAMILIES: dict[str, FamilySpec] = {f.name: f for f in [
    FamilySpec("normal", ("identity", "inverse"), ("sigma",), "real", _normal),
    FamilySpec("student_t", ("identity", "inverse"), ("sigma", "nu"), "real", _student_t),
    FamilySpec("poisson", ("log", "identity"), (), "count", _poisson),
    FamilySpec("negative_binomial", ("log", "identity"), ("phi",), "count", _negbin),
    FamilySpec("bernoulli", ("logit", "probit"), (), "binary", _bernoulli),
    FamilySpec("binomial", ("logit", "probit"), (), "trials", _binomial),
    FamilySpec("gamma", ("log", "inverse", "identity"), ("phi",), "positive", _gamma),
    FamilySpec("lognormal", ("identity", "log"), ("sigma",), "positive", _lognormal),
    FamilySpec("beta", ("logit", "probit"), ("phi",), "unit", _beta),
]}

# other names a spec may give a family
FAMILY_ALIASES: dict[str, str] = {"gaussian": "normal", "student": "student_t", "t": "student_t",
                                  "negbinomial": "negative_binomial", "negativebinomial": "negative_binomial",
                                  "neg_binomial": "negative_binomial"}


def check_response(support: str, y: np.ndarray, trials: np.ndarray | None = None) -> str | None:
    """Why ``y`` is not valid data for a family with this support, or None if it is."""
    def count(mask):
        return int(np.count_nonzero(mask))
    if support == "count":
        if (y < 0).any():
            return f"has {count(y < 0)} negative values; a count family needs counts >= 0"
        if (y != np.round(y)).any():
            return f"has {count(y != np.round(y))} non-integer values; a count family needs whole numbers"
    elif support == "binary":
        if not np.isin(y, (0, 1)).all():
            return f"has {count(~np.isin(y, (0, 1)))} values other than 0 and 1; bernoulli needs 0/1"
    elif support == "trials":
        if (y < 0).any() or (y != np.round(y)).any():
            return "must hold whole numbers >= 0 (successes) for binomial"
        if trials is not None and (y > trials).any():
            return f"exceeds its number of trials in {count(y > trials)} rows"
    elif support == "positive":
        if (y <= 0).any():
            return f"has {count(y <= 0)} values <= 0; this family needs positive values"
    elif support == "unit":
        if ((y <= 0) | (y >= 1)).any():
            return f"has {count((y <= 0) | (y >= 1))} values outside (0, 1); beta needs values strictly between 0 and 1"
    return None


def infer_family(link: str | None, y: np.ndarray, has_trials: bool) -> str:
    """The family a user most likely means, from the link written and the data (SPEC section 1)."""
    if has_trials:
        return "binomial"
    integer = bool(np.all(y == np.round(y)))
    if link == "logit" or link == "probit":
        if np.isin(y, (0, 1)).all():
            return "bernoulli"
        if ((y > 0) & (y < 1)).all():
            return "beta"
    if link == "log" and integer and (y >= 0).all():
        return "poisson"
    if link == "log" and (y > 0).all():
        return "lognormal"  # log(y) of positive measurements: a normal model of log(y)
    return "normal"

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Fused(NamedTuple):
    """``logp(eta, y, aux, extra)`` without the data-only constant ``const(y, extra)`` (NumPy or JAX)."""

    logp: Callable
    const: Callable | None


def _poisson_log(eta, y, aux, extra):
    return y * eta - jnp.exp(eta)


def _poisson_log_const(y, extra, xp=jnp):
    return -_gammaln(xp, y + 1.0)


def _bernoulli_logit(eta, y, aux, extra):
    return y * eta - jax.nn.softplus(eta)


def _binomial_logit(eta, y, aux, extra):
    return y * eta - extra["trials"] * jax.nn.softplus(eta)


def _binomial_logit_const(y, extra, xp=jnp):
    n = extra["trials"]
    return _gammaln(xp, n + 1.0) - _gammaln(xp, y + 1.0) - _gammaln(xp, n - y + 1.0)


def _normal_identity(eta, y, aux, extra):
    sigma = extra["se"] if "se" in extra else aux["sigma"]
    z = (y - eta) / sigma
    return -0.5 * z * z - jnp.log(sigma) - _HALF_LOG_2PI


def _gammaln(xp, v):
    if xp is np:
        from scipy.special import gammaln as sp_gammaln
        return sp_gammaln(v)
    return gammaln(v)


FUSED: dict[tuple[str, str], Fused] = {
    ("poisson", "log"): Fused(_poisson_log, _poisson_log_const),
    ("bernoulli", "logit"): Fused(_bernoulli_logit, None),
    ("binomial", "logit"): Fused(_binomial_logit, _binomial_logit_const),
    ("normal", "identity"): Fused(_normal_identity, None),
}

