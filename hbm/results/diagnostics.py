"""Is a fit trustworthy? The verdicts of variational fits (Pareto k-hat) and samplers (R-hat, ESS)."""
from __future__ import annotations

import dataclasses
from typing import Any
import numpy as np
from hbm.errors import HbmError, did_you_mean
from hbm.engines.importance import psis
from hbm.engines.importance import systematic_resample
from hbm.vocabulary.names import CORRECTIONS

KHAT_GOOD = 0.5


KHAT_OK = 0.7


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
    if want not in CORRECTIONS:
        dym = did_you_mean(str(want), CORRECTIONS)
        raise HbmError(f"unknown correction '{want}'", where="inference.correct",
                       hint=(f"{dym} " if dym else "") + f"corrections: {', '.join(CORRECTIONS)}")
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


def report_lines(diag: dict | None) -> list[str]:
    """What ``hbm fit`` prints under the summary: a sampler's warnings, the verdict, and the correction
    when asked for (one string each; the terminal wraps them)."""
    if not diag:
        return []
    line = correction_line(diag)
    return [f"warning: {w}" for w in diag.get("warnings", ())] + [diag["verdict"]] + ([line] if line else [])


def correction_line(diag: dict) -> str | None:
    """One line on the correction, for the terminal (None when none was asked for)."""
    c = diag.get("correction") or {}
    if c.get("requested") != "psis":
        return None
    return "PSIS correction: " + (c.get("reason") or ("applied" if c.get("applied") else "not applied"))


SAMPLER_RHAT = 1.01      # Vehtari et al. (2021): R-hat below 1.01 ...


SAMPLER_ESS = 400        # ... and bulk and tail ESS of at least 400 for every element


EBFMI_LOW = 0.3          # Betancourt (2016), Stan: E-BFMI below 0.3 in a chain is a warning


def ebfmi(energy) -> np.ndarray:
    """Per chain, the energy Bayesian fraction of missing information of the Hamiltonian at each draw
    (``energy``: chains x draws): the mean squared change between draws over the energy's variance."""
    e = np.asarray(energy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.square(np.diff(e, axis=1)).mean(axis=1) / np.var(e, axis=1)


def sampler_warnings(stats: dict | None, target_accept: float | None = None,
                     max_tree_depth: int | None = None) -> list[str]:
    """NUTS's warnings, each with what to do: divergences, trees at the maximum depth, low E-BFMI
    (``stats``: the draws' ``diverging``, ``num_steps`` and ``energy``, chains x draws)."""
    stats, out = stats or {}, []
    if "diverging" in stats:
        div = np.asarray(stats["diverging"]).astype(bool)
        n = int(div.sum())
        if n:
            per = ", ".join(f"{int(k)}" for k in div.sum(axis=1))
            fixes = ["reparametrise: non-centred group-level effects (noncentered: true), predictors on a "
                     "unit scale (scale(x)), tighter priors on the group-level sds"]
            if target_accept is not None and target_accept < 0.99:
                fixes.insert(0, f"raise target_accept (now {target_accept:g}; inference.target_accept: 0.95, "
                                "or 0.99)")
            out.append(f"{n:,} of {div.size:,} draws diverged (per chain: {per}): the sampler met curvature "
                       f"it cannot follow, so those regions are under-explored. Fix: {', or '.join(fixes)}.")
    if "num_steps" in stats and max_tree_depth:
        hits = int((np.asarray(stats["num_steps"]) >= 2 ** int(max_tree_depth) - 1).sum())
        if hits:
            total = int(np.asarray(stats["num_steps"]).size)
            out.append(f"{hits:,} of {total:,} draws reached the maximum tree depth {int(max_tree_depth)} "
                       f"({2 ** int(max_tree_depth) - 1:,} leapfrog steps): the sampler stopped its "
                       f"trajectories early and mixes slowly. Fix: reparametrise (non-centred effects, "
                       f"scale(x) for predictors of very different scales), or raise max_tree_depth "
                       f"(inference.max_tree_depth: {int(max_tree_depth) + 2}).")
    if "energy" in stats and np.asarray(stats["energy"]).shape[-1] > 2:
        low = [(c + 1, b) for c, b in enumerate(ebfmi(stats["energy"])) if np.isfinite(b) and b < EBFMI_LOW]
        if low:
            which = ", ".join(f"chain {c}: {b:.2f}" for c, b in low)
            out.append(f"low E-BFMI ({which}; below {EBFMI_LOW}): the momentum draws explore the energy "
                       "poorly, typically in heavy tails or a funnel. Fix: reparametrise (non-centred "
                       "group-level effects, tighter priors on the sds), or a longer warmup "
                       "(inference.warmup: 2000).")
    return out


def sampler_check(summary, sample_stats: dict | None, chains: int, target_accept: float | None = None,
                  max_tree_depth: int | None = None) -> dict:
    """A sampler's verdict from its summary (``r_hat``, ``ess_bulk``, ``ess_tail``) and divergences,
    with its warnings (:func:`sampler_warnings`)."""
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
            "min_ess_bulk": bulk, "min_ess_tail": tail, "divergences": divergences,
            "warnings": sampler_warnings(stats, target_accept, max_tree_depth)}


def summary_columns(df, diag: dict | None):
    """``df`` with the joint diagnostics as columns ``pareto_k`` and ``psis_ess`` (same on every row)."""
    if not diag or "pareto_k" not in diag:
        return df
    df = df.copy()
    df["pareto_k"] = float(diag["pareto_k"])
    df["psis_ess"] = float(diag["ess"])
    return df

