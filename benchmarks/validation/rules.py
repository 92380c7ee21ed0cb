"""The validation suite's pass rules: a fit's posterior against a reference, element by element.

For an element with reference mean m, sd s and Monte Carlo error mcse_ref, and a fit's mean m',
sd s' and Monte Carlo error mcse_fit (s' / sqrt(ESS): bulk ESS for a sampler, the number of
draws for a fast engine, whose draws are independent):

- mean: |m' - m| <= tol * s + 3 * sqrt(mcse_ref^2 + mcse_fit^2)
- sd:   s' / s within [lo, hi]

with tol 0.15, [0.8, 1.2] for a sampler (NUTS) and tol 0.5, [0.5, 2] for a fast engine (SVI, MAP,
Laplace). An element passes when both clauses hold; a case passes when every element passes.
An element the fit does not report fails, with the reason saying so. A sampler's element must
also have converged (R-hat < 1.01, bulk ESS >= 400: Vehtari et al. 2021): the Monte Carlo
allowance uses the fit's own ESS, so without this gate a stuck chain (ESS 8) earns an allowance
of a whole posterior sd.

Pure functions on numbers, dicts and DataFrames; no hbm import.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

SAMPLER_ENGINES = ("nuts",)


@dataclass(frozen=True)
class Rule:
    """One pass rule: the mean tolerance in reference sds and the accepted sd ratio range."""

    name: str
    mean_tol: float
    sd_lo: float
    sd_hi: float
    mc_z: float = 3.0      # Monte Carlo allowance: this many combined standard errors
    max_rhat: float | None = None   # convergence gate (samplers)
    min_ess: float | None = None

    def describe(self) -> str:
        return (f"|mean - ref| <= {self.mean_tol:g} ref_sd + {self.mc_z:g} sqrt(mcse_ref^2 + mcse_fit^2); "
                f"sd / ref_sd in [{self.sd_lo:g}, {self.sd_hi:g}]")


SAMPLER = Rule("sampler", 0.15, 0.8, 1.2, max_rhat=1.01, min_ess=400.0)
FAST = Rule("fast", 0.5, 0.5, 2.0)


def rule_for(engine: str) -> Rule:
    """The sampler rule for NUTS, the fast-engine rule for every other engine."""
    return SAMPLER if engine in SAMPLER_ENGINES else FAST


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def reference_stats(param: dict) -> dict:
    """mean, sd and mcse of one ``reference.json`` entry on hbm's scale (``hbm_scale`` where present);
    mcse falls back to sd / sqrt(ess_bulk)."""
    src = param.get("hbm_scale") or param
    mean, sd = float(src["mean"]), float(src["sd"])
    mcse = src.get("mcse_mean")
    if mcse is None:
        ess = param.get("ess_bulk")
        mcse = sd / math.sqrt(float(ess)) if _finite(ess) and float(ess) > 0 else float("nan")
    if not (_finite(mean) and _finite(sd) and sd > 0 and _finite(mcse) and float(mcse) >= 0):
        raise ValueError(f"reference element {param.get('hbm_name')!r}: mean, sd > 0 and mcse must be finite "
                         f"(got mean={mean}, sd={sd}, mcse={mcse})")
    return {"mean": mean, "sd": sd, "mcse": float(mcse), "rescaled": "hbm_scale" in param}


def check_element(fit_mean, fit_sd, fit_n, ref_mean: float, ref_sd: float, ref_mcse: float,
                  rule: Rule) -> dict:
    """Judge one element. ``fit_n``: the fit's ESS (sampler) or its number of draws (fast engine).

    Returns mean_err (|m' - m| / s), mean_allow (the allowance, in ref sds), sd_ratio, mean_ok,
    sd_ok, passed and reason ("" when it passes; otherwise every clause that failed).
    """
    reasons = []
    m, s, n = (float(x) if _finite(x) else float("nan") for x in (fit_mean, fit_sd, fit_n))
    if not _finite(m):
        reasons.append("the fit's mean is not finite")
    sd_given = _finite(s) and s >= 0
    if sd_given and not (_finite(n) and n > 0):
        mcse_fit = float("nan")
        reasons.append("the fit gives no effective sample size, so no Monte Carlo error")
    else:
        mcse_fit = s / math.sqrt(n) if sd_given else 0.0   # a point estimate carries no Monte Carlo error
    allow = rule.mean_tol * ref_sd + rule.mc_z * math.hypot(ref_mcse, mcse_fit)
    err = abs(m - ref_mean) if _finite(m) else float("nan")
    mean_ok = _finite(err) and _finite(allow) and err <= allow
    if _finite(err) and _finite(allow) and not mean_ok:
        reasons.append(f"mean {m:.6g} is {err / ref_sd:.3g} ref sd from {ref_mean:.6g} "
                       f"(allowed {allow / ref_sd:.3g})")
    ratio = s / ref_sd if sd_given else float("nan")
    sd_ok = _finite(ratio) and rule.sd_lo <= ratio <= rule.sd_hi
    if not sd_given:
        reasons.append("the fit gives no sd (a point estimate, or non-finite draws)")
    elif not sd_ok:
        reasons.append(f"sd ratio {ratio:.3g} outside [{rule.sd_lo:g}, {rule.sd_hi:g}]")
    return {"mean_err": err / ref_sd if _finite(err) else float("nan"), "mean_allow": allow / ref_sd,
            "sd_ratio": ratio, "mean_ok": bool(mean_ok), "sd_ok": bool(sd_ok),
            "passed": bool(mean_ok and sd_ok and not reasons), "reason": "; ".join(reasons)}


def compare(summary: pd.DataFrame, reference: list[dict], rule: Rule, n_draws: int | None = None) -> pd.DataFrame:
    """Every reference element against the fit's summary (index: element names; columns mean, sd
    and, for the sampler rule, ess_bulk). ``n_draws``: the fit's draw count (the fast rule's ESS).
    One row per reference element, in reference order, indexed by hbm name."""
    rows = []
    for param in reference:
        name = param["hbm_name"]
        ref = reference_stats(param)
        row = {"element": name, "ref_mean": ref["mean"], "ref_sd": ref["sd"], "ref_mcse": ref["mcse"],
               "rescaled": ref["rescaled"]}
        if name not in summary.index:
            row.update(fit_mean=float("nan"), fit_sd=float("nan"), fit_n=float("nan"),
                       mean_err=float("nan"), mean_allow=float("nan"), sd_ratio=float("nan"),
                       mean_ok=False, sd_ok=False, passed=False,
                       reason="missing from the fit (no summary row of that name)")
        else:
            r = summary.loc[name]
            if rule.name == "sampler":
                n = r["ess_bulk"] if "ess_bulk" in summary.columns else float("nan")
            else:
                n = n_draws if n_draws is not None else float("nan")
            row.update(fit_mean=float(r["mean"]), fit_sd=float(r["sd"]), fit_n=float(n))
            row.update(check_element(r["mean"], r["sd"], n, ref["mean"], ref["sd"], ref["mcse"], rule))
            gate = convergence_gate(r.get("r_hat"), n, rule)
            if gate:
                row.update(passed=False, reason="; ".join(x for x in (row["reason"], gate) if x))
        rows.append(row)
    return pd.DataFrame(rows).set_index("element")


def convergence_gate(r_hat, ess, rule: Rule) -> str:
    """Why a sampler's element has not converged ("" when it has, or the rule has no gate)."""
    reasons = []
    if rule.max_rhat is not None and not (_finite(r_hat) and float(r_hat) < rule.max_rhat):
        reasons.append(f"R-hat {float(r_hat) if _finite(r_hat) else float('nan'):.3g} not below {rule.max_rhat:g}")
    if rule.min_ess is not None and not (_finite(ess) and float(ess) >= rule.min_ess):
        reasons.append(f"bulk ESS {float(ess) if _finite(ess) else float('nan'):.3g} below {rule.min_ess:g}")
    return "; ".join(reasons)


def _sd_badness(ratio: float) -> float:
    """How far an sd ratio is from 1, symmetric in ratio and 1/ratio (a missing ratio is worst)."""
    return abs(math.log(ratio)) if _finite(ratio) and ratio > 0 else math.inf


def case_summary(elements: pd.DataFrame) -> dict:
    """A case's verdict from :func:`compare`'s table: passed, n elements, the worst mean error and the
    worst sd ratio (farthest from 1 on the log scale) with their elements, and the failures."""
    if elements.empty:
        raise ValueError("a case needs at least one reference element")
    err = elements["mean_err"].astype(float).fillna(math.inf)
    worst_mean = str(err.idxmax())
    bad = elements["sd_ratio"].astype(float).map(_sd_badness)
    worst_sd = str(bad.idxmax())
    failed = elements[~elements["passed"].astype(bool)]
    return {
        "n_elements": int(len(elements)),
        "passed": bool(failed.empty),
        "worst_mean_err": _num(elements.loc[worst_mean, "mean_err"]),
        "worst_mean_element": worst_mean,
        "worst_sd_ratio": _num(elements.loc[worst_sd, "sd_ratio"]),
        "worst_sd_element": worst_sd,
        "n_failed": int(len(failed)),
        "failures": {str(k): str(v) for k, v in failed["reason"].items()},
    }


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def crosstab(cases: list[dict]) -> dict:
    """The 2x2 table verdict x rule: counts keyed "trusted" / "not trusted" / "no verdict", then
    "pass" / "fail". ``cases``: dicts with ``trusted`` (True, False or None) and ``passed``."""
    table = {k: {"pass": 0, "fail": 0} for k in ("trusted", "not trusted", "no verdict")}
    for c in cases:
        row = "no verdict" if c.get("trusted") is None else ("trusted" if c["trusted"] else "not trusted")
        table[row]["pass" if c.get("passed") else "fail"] += 1
    return table
