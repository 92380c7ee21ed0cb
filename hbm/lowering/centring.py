"""Which group-level sites are drawn centred: the data decide, level by level.

Non-centred group effects (``r = sd * z``, ``z ~ N(0, 1)``) suit levels the data say little
about: the prior holds ``z`` and the sampler moves ``sd`` freely. Where the data pin every level
(two casks of paste measured twice with a residual sd of 0.8 against a cask sd of 3; a product
with 52 weeks of sales), the non-centred posterior is a narrow ridge: ``z`` must move with ``sd``
and with the population value, which NUTS crosses with tiny steps and divergences (pastes: 127
divergences in 4,000 draws) and which confounds the Intercept with the mean of the levels (the
seed model's Intercept: 27 effective draws of 300). There the centred form, ``r ~ N(0, sd)``
drawn directly, is the well-conditioned one (Papaspiliopoulos, Roberts and Skold 2007; Betancourt
and Girolami 2015).

The choice needs the ratio of a level's data precision to its prior precision, ``n_j tau^2 /
sigma^2`` for a varying intercept with ``n_j`` rows, residual sd ``sigma`` and group sd ``tau``.
Both sds are estimated before the fit by the method of moments on a working response (the
response, its log, or the empirical link of a count or a proportion, with its Fisher weights),
after a weighted least-squares fit of the population design: only the parameterisation depends
on the estimate, never the model, so a rough value costs efficiency, not correctness. A site is
centred when the median level's ratio is at least :data:`CENTRE_RATIO`.
"""
from __future__ import annotations

import numpy as np

from hbm.frontend import ast as A
from hbm.ir import model as ir
from hbm.data.encode import column_values
from hbm.lowering.whiten import block_members

CENTRE_RATIO = 2.0     # centre where the median level's data precision is twice its prior's
_SWEEPS = 3          # backfitting sweeps over the group terms
_MAX_POP = 256         # population columns in the working fit (beyond: the mean only)


def _working_response(model: ir.ModelIR, info):
    """(z, w, sigma2_known): a working response on the link scale, its weights (variance of
    ``z_i`` ~ sigma^2 / w_i) and sigma^2 where the family fixes it (None: estimate it); None where
    the family has no cheap working response (the sites stay non-centred)."""
    resp, fam = model.response, model.family
    y = info.numeric(A.Var(resp.column)).astype(np.float64)
    offset = np.sum([info.numeric(o) for o in model.offsets], axis=0) if model.offsets else 0.0
    if resp.weights or resp.se:
        return None
    if fam.name in ("normal", "student_t") and fam.link == "identity":
        return y - offset, np.ones_like(y), None
    if fam.name == "lognormal" and np.all(y > 0):
        return np.log(y) - offset, np.ones_like(y), None
    if fam.name in ("poisson", "negative_binomial") and fam.link == "log" and np.all(y >= 0):
        mu = y + 0.5
        return np.log(mu) - offset, mu, (1.0 if fam.name == "poisson" else None)
    if fam.name == "binomial" and fam.link == "logit" and resp.trials:
        n = info.numeric(A.Var(resp.trials)).astype(np.float64)
        p = (y + 0.5) / (n + 1.0)
        return np.log(p / (1 - p)) - offset, (y + 0.5) * (n - y + 0.5) / (n + 1.0), 1.0
    return None


def _population_residual(z, w, model: ir.ModelIR, info) -> np.ndarray:
    """``z`` less its weighted least-squares fit on the population design."""
    cols = [column_values(m.column, info) for m in block_members(model) if not m.column.is_intercept]
    cols = cols if len(cols) <= _MAX_POP else []
    X = np.column_stack([np.ones_like(z)] + cols)
    sw = np.sqrt(w)
    beta = np.linalg.lstsq(X * sw[:, None], z * sw, rcond=None)[0]
    return z - X @ beta


def precision_ratio(e, w, x, codes, size, sigma2=None) -> tuple[np.ndarray, np.ndarray]:
    """Per level: (data precision of its coefficient on ``x``) / (prior precision), i.e.
    ``sum_j w x^2 * tau^2 / sigma^2``, tau and (unless given) sigma by the method of moments; and
    the levels' shrunken estimates (what the term explains of ``e``)."""
    sxx = np.bincount(codes, w * x * x, minlength=size)
    sxe = np.bincount(codes, w * x * e, minlength=size)
    seen = sxx > 1e-12
    if seen.sum() < 2:
        return np.zeros(size), np.zeros(size)
    b = np.where(seen, sxe / np.where(seen, sxx, 1.0), 0.0)
    dof = len(e) - int(seen.sum())
    within = np.sum(w * (e - b[codes] * x) ** 2) / dof if dof > 0 else None
    if sigma2 is None:
        sigma2 = within if within is not None else np.sum(w * e * e) / len(e)
    elif within is not None:   # a count's overdispersion (an observation-level effect) adds to it
        sigma2 = max(sigma2, within)
    sigma2 = max(float(sigma2), 1e-12)
    tau2 = max(float(np.var(b[seen], ddof=1) - np.mean(sigma2 / sxx[seen])), 0.0)
    ratio = np.where(seen, sxx * tau2 / sigma2, 0.0)
    return ratio, b * ratio / (1.0 + ratio)


def centred_sites(model: ir.ModelIR, info) -> tuple[str, ...]:
    """The group-level sites to draw centred (see the module's docstring): single-term and
    correlated blocks, and the innermost level of each chain."""
    if not model.noncentered:
        return ()
    return tuple(site for site, r in precision_ratios(model, info).items() if r >= CENTRE_RATIO)


def precision_ratios(model: ir.ModelIR, info) -> dict[str, float]:
    """Per group-level site, the median level's ratio of data precision to prior precision
    (empty where the family has no working response)."""
    if not (model.groups or model.chains):
        return {}
    work = _working_response(model, info)
    if work is None:
        return {}
    z, w, sigma2 = work
    ok = np.isfinite(z) & np.isfinite(w) & (w > 0)
    if ok.sum() < 3:
        return {}
    try:
        e = np.where(ok, _population_residual(np.where(ok, z, 0.0), np.where(ok, w, 0.0), model, info), 0.0)
    except np.linalg.LinAlgError:
        return {}
    w = np.where(ok, w, 0.0)

    terms = [(b.site, b.plate, b.columns) for b in model.groups] + \
            [(c.site(c.plates[0]), c.plates[0], (c.column,)) for c in model.chains]
    design = {}
    for site, plate, columns in terms:
        codes = info.levels(model.plate(plate).columns)[0]
        design[site] = (codes, model.plate(plate).size, [column_values(col, info) for col in columns])
    # backfitting: each term's ratio on the residual of the others' shrunken estimates, so that
    # crossed and nested terms do not count each other's variance as their own
    fitted = {site: [np.zeros_like(e) for _ in columns] for site, _, columns in terms}
    total = np.zeros_like(e)       # the sum of every term's fitted values
    ratio = {}
    for _ in range(_SWEEPS):
        for site, _, _ in terms:
            codes, size, xs = design[site]
            ratios = []
            for k, x in enumerate(xs):
                others = total - fitted[site][k]
                r, shrunk = precision_ratio(e - others, w, x, codes, size, sigma2)
                fitted[site][k] = shrunk[codes] * x
                total = others + fitted[site][k]
                ratios.append(float(np.median(r)))
            ratio[site] = min(ratios)
    return ratio
