"""Importance weights of a variational fit: the guide's draws weighted by the model, and PSIS."""
from __future__ import annotations

from hbm.engines.base import latent_names, split_kwargs

import dataclasses
import numpy as np

ROW_BUDGET = 1 << 22     # per-row numbers held at once by a batch of draws (x a few intermediates)


WIDTH_BUDGET = 1 << 24   # latent values held at once by a batch of draws


def guide_draws_weighted(fit, seed: int, draws: int, *, row_budget: int = ROW_BUDGET):
    """``draws`` draws of every latent site from a fitted guide, and each draw's log weight.

    ``fit`` is an :class:`hbm.engines.svi.SVIFit`. Returns ``(samples, log_w, log_q)``: samples as
    ``guide_draws`` gives them, ``(1, draws, *shape)`` NumPy arrays; ``log_w`` of shape ``(draws,)``
    (float64), ``log p(y, z) - log q(z)`` for each draw; and ``log_q``, the guide's log density of
    each draw. When the model was fitted on minibatches (``batch_size``; ``fit.minibatches``), the
    model sees one random batch per call, not every row: ``log_w`` is then None, and
    the caller adds the log joint over all rows (:func:`model_log_joint`).
    """
    import jax
    from numpyro import handlers
    from numpyro.infer.util import log_density


    def fn(svi, params, kw):
        guide, model = svi.guide, svi.model
        names = latent_names(guide)
        full = not fit.minibatches
        rows = _row_count(kw) if full else 1
        width = sum(int(np.prod(np.shape(guide.prototype_trace[n]["value"]))) for n in names)
        batch = int(max(1, min(draws, row_budget // max(rows, 1), WIDTH_BUDGET // max(width, 1))))

        def one(key):
            g_ld, g_tr = log_density(handlers.seed(guide, key), (), kw, params)
            if full:
                m_ld, _ = log_density(handlers.replay(model, g_tr), (), kw, params)
            else:
                m_ld = g_ld
            return {n: g_tr[n]["value"] for n in names}, m_ld - g_ld, g_ld

        keys = jax.random.split(jax.random.PRNGKey(seed), draws)
        return jax.lax.map(one, keys, batch_size=batch if batch < draws else None)

    values, log_w, log_q = fit.in_trace(fn, fast=True)(fit.state)
    samples = {k: np.asarray(v)[None] for k, v in values.items()}
    log_q = np.asarray(log_q, dtype=np.float64)
    return samples, (None if fit.minibatches else np.asarray(log_w, dtype=np.float64)), log_q


def model_log_joint(model, model_kwargs: dict, samples: dict, *, row_budget: int = ROW_BUDGET) -> np.ndarray:
    """``log p(y, z)`` of ``model(**model_kwargs)`` at each draw of ``samples`` (latent sites,
    ``(1, draws, *shape)``), over every row, in batches of draws (float64, ``(draws,)``)."""
    import jax
    import jax.numpy as jnp
    from numpyro import handlers
    from numpyro.infer.util import log_density


    dyn, rebuild = split_kwargs(model_kwargs)
    flat = {k: jnp.asarray(np.asarray(v)[0]) for k, v in samples.items()}
    draws = next(iter(flat.values())).shape[0]
    rows = _row_count(model_kwargs)
    width = sum(int(np.prod(v.shape[1:])) for v in flat.values())
    batch = int(max(1, min(draws, row_budget // max(rows, 1), WIDTH_BUDGET // max(width, 1))))

    def run(flat_, dyn_):
        kw = rebuild(dyn_)

        def one(z):
            return log_density(handlers.seed(handlers.substitute(model, data=z), 0), (), kw, {})[0]
        return jax.lax.map(one, flat_, batch_size=batch if batch < draws else None)

    return np.asarray(jax.jit(run)(flat, dyn), dtype=np.float64)


def _row_count(kw) -> int:
    """The number of data rows in a model's keyword arguments (the longest leading axis)."""
    import jax
    sizes = [int(x.shape[0]) for x in jax.tree.leaves(kw) if hasattr(x, "shape") and len(x.shape) >= 1]
    return max(sizes, default=1)


@dataclasses.dataclass(frozen=True)
class PSIS:
    """The result of Pareto-smoothing a set of log importance weights."""

    khat: float              # the generalized Pareto shape of the weights' tail
    ess: float               # effective sample size of the smoothed weights
    draws: int
    log_weights: np.ndarray  # smoothed, normalised (logsumexp = 0)
    finite: int              # draws whose raw weight was finite

    @property
    def ess_fraction(self) -> float:
        return self.ess / self.draws if self.draws else float("nan")


def psis(log_w) -> PSIS:
    """Pareto-smooth ``log_w`` (one weight per draw): k-hat, ESS and the smoothed weights.

    A draw whose log weight is not finite (the model's density is zero or overflows there)
    gets weight zero; if none is finite, k-hat is infinite.
    """
    import warnings

    import arviz as az

    lw = np.asarray(log_w, dtype=np.float64).reshape(-1)
    n = lw.size
    ok = np.isfinite(lw)
    if ok.sum() < 5:
        return PSIS(float("inf"), 0.0, n, np.full(n, -np.inf), int(ok.sum()))
    lw = np.where(ok, lw, -np.inf)
    x = lw[ok] - lw[ok].max()
    if np.ptp(x) < 1e-9:  # equal weights: the guide is the posterior (a Pareto fit to a flat tail fails)
        out = np.where(ok, -np.log(ok.sum()), -np.inf)
        return PSIS(0.0, float(ok.sum()), n, out, int(ok.sum()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smoothed, k = az.psislw(x, reff=1.0)
    out = np.full(n, -np.inf)
    out[ok] = smoothed
    out = out - _logsumexp(out)
    w = np.exp(out)
    return PSIS(float(k), float(1.0 / np.sum(w * w)), n, out, int(ok.sum()))


def _logsumexp(a) -> float:
    m = np.max(a)
    return float(m + np.log(np.sum(np.exp(a - m)))) if np.isfinite(m) else float(m)


def systematic_resample(log_w, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices drawn in proportion to ``exp(log_w)`` by systematic resampling (sorted)."""
    lw = np.asarray(log_w, dtype=np.float64)
    w = np.exp(lw - _logsumexp(lw))
    cdf = np.cumsum(w)
    cdf[-1] = 1.0
    u = (np.random.default_rng(seed).uniform() + np.arange(n)) / n
    return np.minimum(np.searchsorted(cdf, u, side="right"), lw.size - 1)


def complete_log_weights(result, model, model_kwargs: dict):
    """An engine result whose guide gave only ``log_q`` (a minibatch fit): add ``log_weight``, the
    log joint over all rows (``model(**model_kwargs)``) minus ``log_q``."""
    stats = dict(result.sample_stats or {})
    log_q = np.asarray(stats.pop("log_q")).reshape(-1)
    log_p = model_log_joint(model, model_kwargs, result.samples)
    stats["log_weight"] = (log_p - log_q)[None]
    return dataclasses.replace(result, sample_stats=stats)

