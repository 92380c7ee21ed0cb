"""Is a variational fit trustworthy? Pareto-smoothed importance sampling of the guide.

A guide q approximates the posterior p(z | y). Draw z_s ~ q and weigh each draw by

    log w_s = log p(y, z_s) - log q(z_s)

(the model's log joint, over every row of the data, minus the guide's log density: the
ELBO's own integrand, per draw). If q were the posterior the weights would all be equal.
Pareto-smoothed importance sampling (PSIS; Vehtari et al. 2024, ``arviz.psislw``) fits a
generalized Pareto distribution to the largest weights; its shape, k-hat, says how heavy
their tail is, and so how far q is from the posterior where it matters (Yao et al. 2018,
"Yes, but did it work?"):

=============  =====================================================================
k-hat < 0.5    the guide is close to the posterior: its summaries can be trusted
0.5 to 0.7     usable; the importance-weighted (``correct: psis``) estimates are reliable
>= 0.7         the guide misses the posterior: its intervals are not to be trusted
               (typically too narrow); try another guide, more steps, or NUTS
=============  =====================================================================

with the effective sample size of the smoothed weights, ``1 / sum(w_s^2)`` (normalised
weights), as the number of posterior draws the guide's draws are worth.

``inference.correct: psis`` resamples the guide's draws by their smoothed weights
(systematic resampling, same number of draws) when k-hat < 0.7; above it the weights are
too heavy-tailed for the correction to be reliable and the draws are left as they are,
and the fit says so.

Cost: one evaluation of the log joint per draw, over all rows, computed in batches of draws
sized so that a batch's per-row intermediates stay within ``ROW_BUDGET`` numbers (one draw
at a time at a few million rows): about ``draws`` forward passes of the likelihood, a few
seconds at a million rows on a CPU. The log joint is summed in float32, so at millions of
rows each log weight carries an absolute rounding error of order 0.1, well below the spread
that moves k-hat.

Where it shows: ``summary.csv`` gets two columns, ``pareto_k`` and ``psis_ess``, the same
on every row (they describe the joint approximation, not one parameter: a footer row would
break every reader that takes the file as one row per parameter); ``fit.json`` gets a
``diagnostics`` section (k-hat, ESS, the verdict, whether the correction was applied), and
the engine's ``convergence`` section repeats k-hat, the ESS and the correction so that
``hbm show`` prints them; ``hbm fit`` prints the verdict under the summary table.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

KHAT_GOOD = 0.5
KHAT_OK = 0.7
CORRECTIONS = ("none", "psis")
ROW_BUDGET = 1 << 22     # per-row numbers held at once by a batch of draws (x a few intermediates)
WIDTH_BUDGET = 1 << 24   # latent values held at once by a batch of draws


# ---------------------------------------------------------------- drawing with weights

def guide_draws_weighted(fit, seed: int, draws: int, *, row_budget: int = ROW_BUDGET):
    """``draws`` draws of every latent site from a fitted guide, and each draw's log weight.

    ``fit`` is an :class:`hbm.engines.svi.SVIFit`. Returns ``(samples, log_w, log_q)``: samples as
    ``guide_draws`` gives them, ``(1, draws, *shape)`` NumPy arrays; ``log_w`` of shape ``(draws,)``
    (float64), ``log p(y, z) - log q(z)`` for each draw; and ``log_q``, the guide's log density of
    each draw. When the model was fitted on minibatches (``batch_size``; its arguments carry a batch
    stream), the model sees one random batch per call, not every row: ``log_w`` is then None, and
    the caller adds the log joint over all rows (:func:`model_log_joint`).
    """
    import jax
    from numpyro import handlers
    from numpyro.infer.util import log_density

    from .engines.svi import latent_names

    minibatches = []

    def fn(svi, params, kw):
        guide, model = svi.guide, svi.model
        names = latent_names(guide)
        full = not _is_minibatched(kw)
        minibatches.append(not full)
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
    return samples, (None if minibatches[0] else np.asarray(log_w, dtype=np.float64)), log_q


def _is_minibatched(kw) -> bool:
    rows = kw.get("rows") if isinstance(kw, dict) else None
    return isinstance(rows, dict) and "stream" in rows


def model_log_joint(model, model_kwargs: dict, samples: dict, *, row_budget: int = ROW_BUDGET) -> np.ndarray:
    """``log p(y, z)`` of ``model(**model_kwargs)`` at each draw of ``samples`` (latent sites,
    ``(1, draws, *shape)``), over every row, in batches of draws (float64, ``(draws,)``)."""
    import jax
    import jax.numpy as jnp
    from numpyro import handlers
    from numpyro.infer.util import log_density

    from .engines.base import split_kwargs

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


# ---------------------------------------------------------------- PSIS

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


LARGE = 1000   # latent values above which k-hat is practically never below 0.7, whatever the guide


def verdict(khat: float, ess: float, draws: int, guide: str | None = None,
            converged: bool | None = None, dim: int | None = None) -> str:
    """A plain sentence: can this fit's uncertainty be trusted, and if not, what to try."""
    head = f"Pareto k-hat {khat:.2f}, importance-sampling ESS {ess:.0f} of {draws} draws: "
    if khat < KHAT_GOOD:
        return head + "trustworthy (the guide is close to the posterior)."
    if khat < KHAT_OK:
        return head + ("trustworthy, with care: the guide is near the posterior; "
                       "`inference.correct: psis` reweights its draws toward it.")
    tries = []
    if guide in ("normal", "lowrank", "delta"):
        tries.append("guide: structured (or mvn for a small model)")
    elif guide == "structured":
        tries.append("guide: mvn if the model is small")
    if converged is False:
        tries.append("more steps (the fit stopped before converging)")
    else:
        tries.append("more steps or a smaller learning rate")
    tries.append("engine: nuts for exact intervals")
    text = head + ("NOT trustworthy: the guide misses the posterior and its intervals are likely too "
                   "narrow" + (" (k-hat > 1: the weights' mean is infinite)" if khat > 1 else "")
                   + ". Try " + "; ".join(tries) + ".")
    if dim is not None and dim > LARGE:
        text += (f" (k-hat judges all {dim:,} latent values jointly: at this size it is rarely below 0.7 "
                 "for any guide; `hbm fit --check-subset` checks the engine against NUTS on a subset "
                 "of whole groups instead.)")
    return text


# ---------------------------------------------------------------- correction

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


def check_fit(result, config: Any):
    """The diagnostics step of ``hbm.fit``: PSIS of an engine result that carries log weights.

    ``result``: an :class:`~hbm.engines.base.EngineResult` whose ``sample_stats["log_weight"]``
    is ``(1, draws)``. Returns ``(result, diagnostics)``: the result (its draws resampled when
    ``config.correct == "psis"`` and k-hat allows; the log weights dropped from sample_stats
    then, since they no longer describe the draws) and a JSON-able dict.
    """
    stats = dict(result.sample_stats or {})
    if "log_weight" not in stats:
        raise ValueError("check_fit needs sample_stats['log_weight'] (see complete_log_weights)")
    lw = np.asarray(stats["log_weight"]).reshape(-1)
    res = psis(lw)
    info = result.info or {}
    want = getattr(config, "correct", "none") or "none"
    dim = int(sum(np.prod(np.shape(v)[2:], dtype=np.int64) for v in result.samples.values()))
    diag: dict[str, Any] = {
        "method": "psis", "pareto_k": res.khat, "ess": res.ess, "ess_fraction": res.ess_fraction,
        "draws": res.draws, "finite_weights": res.finite,
        "thresholds": {"good": KHAT_GOOD, "ok": KHAT_OK},
        "trustworthy": bool(res.khat < KHAT_OK),
        "latent_values": dim,
        "verdict": verdict(res.khat, res.ess, res.draws, info.get("guide"), info.get("converged"), dim),
        "correction": {"requested": want, "applied": False, "reason": None},
    }
    if want == "psis":
        if res.khat < KHAT_OK:
            idx = systematic_resample(res.log_weights, res.draws, int(getattr(config, "seed", 0)) + 2)
            samples = {k: v[:, idx] for k, v in result.samples.items()}
            stats.pop("log_weight")
            result = dataclasses.replace(result, samples=samples, sample_stats=stats)
            diag["correction"].update(applied=True, unique_draws=int(np.unique(idx).size),
                                      reason=f"draws resampled by their Pareto-smoothed weights "
                                             f"(k-hat {res.khat:.2f} < {KHAT_OK})")
        else:
            diag["correction"]["reason"] = (f"not applied: k-hat {res.khat:.2f} >= {KHAT_OK}, the weights "
                                            "are too heavy-tailed for importance sampling to fix the guide")
    result = dataclasses.replace(result, info={
        **info, "pareto_k": res.khat, "psis_ess": res.ess,
        "psis_correction": "applied" if diag["correction"]["applied"] else
        ("not applied" if want == "psis" else "none")})
    return result, diag


def corrected(fit_result):
    """A copy of a finished :class:`hbm.fit.FitResult` with ``correct: psis`` applied to its draws.

    For comparing a fit with and without the correction without fitting twice. The copy's
    ``diagnostics`` say whether the correction was applied (not when k-hat >= 0.7: then the
    draws are the original ones). ``fit_result`` must still carry its log weights (a fit made
    with ``correct: none``).
    """
    from .fit import FitResult
    from .outputs import build_outputs, site_draws
    eng = fit_result.engine
    if "log_weight" not in (eng.sample_stats or {}):
        raise ValueError("this fit carries no importance weights (not variational, or already corrected)")
    config = dataclasses.replace(fit_result.config, correct="psis")
    res, diag = check_fit(eng, config)
    m = fit_result.model
    outputs = fit_result.outputs
    if diag["correction"]["applied"]:
        outputs = build_outputs(m.ir, site_draws(m.numpyro_model, m.rows, m.consts, res.samples, config.seed),
                                m.encoding)
    return FitResult(m, res, outputs, config, dict(fit_result.timings), diagnostics=diag)


def report_lines(diag: dict | None) -> list[str]:
    """What ``hbm fit`` prints under the summary: the verdict, and the correction when asked for."""
    if not diag:
        return []
    line = correction_line(diag)
    return [diag["verdict"]] + ([line] if line else [])


def correction_line(diag: dict) -> str | None:
    """One line on the correction, for the terminal (None when none was asked for)."""
    c = diag.get("correction") or {}
    if c.get("requested") != "psis":
        return None
    return "PSIS correction: " + (c.get("reason") or ("applied" if c.get("applied") else "not applied"))


SAMPLER_RHAT = 1.01      # Vehtari et al. (2021): R-hat below 1.01 ...
SAMPLER_ESS = 400        # ... and bulk and tail ESS of at least 400 for every element


def sampler_check(summary, sample_stats: dict | None, chains: int) -> dict:
    """A sampler's verdict from its summary (``r_hat``, ``ess_bulk``, ``ess_tail``) and divergences."""
    stats = sample_stats or {}
    divergences = int(np.asarray(stats["diverging"]).sum()) if "diverging" in stats else 0
    rhat = float(summary["r_hat"].max()) if "r_hat" in summary and chains > 1 else float("nan")
    bulk = float(summary["ess_bulk"].min()) if "ess_bulk" in summary else float("nan")
    tail = float(summary["ess_tail"].min()) if "ess_tail" in summary else float("nan")
    worst = summary["r_hat"].idxmax() if "r_hat" in summary and chains > 1 else None
    problems = []
    if chains < 2:
        problems.append("one chain: R-hat cannot be computed (run chains: 4)")
    elif not rhat < SAMPLER_RHAT:
        problems.append(f"R-hat {rhat:.3f} at {worst} (chains disagree: not converged)")
    low = min(bulk, tail)
    if not low >= SAMPLER_ESS:
        problems.append(f"smallest ESS {low:.0f} (below {SAMPLER_ESS}: more samples, or a longer warmup)")
    if divergences:
        problems.append(f"{divergences} divergent transitions (raise target_accept; the posterior "
                        "has regions the sampler cannot enter)")
    head = f"R-hat max {rhat:.3f}, ESS min {bulk:.0f} bulk / {tail:.0f} tail, {divergences} divergences: "
    text = head + ("trustworthy (the chains agree and mixed)." if not problems else
                   "NOT trustworthy: " + "; ".join(problems) + ".")
    return {"kind": "sampler", "verdict": text, "trustworthy": not problems, "max_r_hat": rhat,
            "min_ess_bulk": bulk, "min_ess_tail": tail, "divergences": divergences}


def summary_columns(df, diag: dict | None):
    """``df`` with the joint diagnostics as columns ``pareto_k`` and ``psis_ess`` (same on every row)."""
    if not diag or "pareto_k" not in diag:
        return df
    df = df.copy()
    df["pareto_k"] = float(diag["pareto_k"])
    df["psis_ess"] = float(diag["ess"])
    return df


__all__ = ["guide_draws_weighted", "model_log_joint", "complete_log_weights", "psis", "corrected", "PSIS", "verdict", "check_fit", "systematic_resample",
           "summary_columns", "sampler_check", "correction_line", "report_lines", "KHAT_GOOD", "KHAT_OK", "CORRECTIONS"]
