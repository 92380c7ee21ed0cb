"""The population block, centred and whitened: an exact change of coordinates.

Uncentred predictors (``mom_iq`` around 100, ``height`` around 66, a year around 2000)
make the intercept and the slopes of a regression nearly collinear a posteriori
(correlations of -0.99 to -0.99999), and predictors of very different scales give
coefficients whose posterior sds differ a thousandfold. NUTS then needs its deepest trees
and a mean-field guide cannot represent the posterior at all. brms answers this by centring
the design and, optionally, a QR decomposition of it; hbm does both, always, as a change of
coordinates that leaves the model exactly as written:

    x = (alpha, b)                    the intercept and the free population coefficients
    w = B (x - c)                     the latent vector the engines see (site ``z(population)``)

with ``B`` built from the data so that the linear predictor's population part is
``s * (w_0 + Q w_1:) + mu`` for a design ``Q`` with identity covariance: ``w_0`` is the
(scaled) intercept at the predictors' means, ``w_1:`` the (scaled) coefficients of the
whitened, centred design (``R`` of its QR decomposition, here the Cholesky factor of its
covariance), ``mu`` and ``s`` a location and scale of the response on the link scale.
The priors stay on ``alpha`` and ``b`` as the user wrote them: the site's density is the
priors at ``x(w)`` times the constant Jacobian ``|det B^-1|``, so every engine sees the same
posterior in better coordinates, and prior draws (``hbm simulate``) are draws of the priors.

Chain tops (``log(price) | product/category``) enter the block with their chain's column,
so the intercept is centred at the mean of every slope's predictor, not only of ``X``'s.

Everything here is computed once from all the rows (a process of a multi-host fit passes
a view of the whole table), so every process builds the same ``B``.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from hbm.frontend import ast as A
from hbm.ir import model as ir
from hbm.frontend.priors import Prior, to_distribution
from hbm.data.encode import column_values

SITE = "z(population)"
DENSE_MAX = 256          # above this many coefficients the whitening is diagonal (scale only)


@dataclass(frozen=True)
class Member:
    """One element of the block: a population term's column (``index`` within the term)."""

    term: str
    index: int
    column: ir.DesignColumn
    prior: Prior


def block_members(model: ir.ModelIR) -> list[Member]:
    """The free population coefficients, intercept first, then the terms in formula order.

    A chain top stands for its chain's column. Fixed coefficients (a number in ``priors:``)
    stay out of the block."""
    chain_column = {c.top: c.column for c in model.chains if c.top}
    members, intercept = [], []
    for t in model.population:
        if not isinstance(t.prior, Prior):
            continue
        cols = (chain_column[t.name],) if t.in_chain else t.columns
        for k, col in enumerate(cols):
            m = Member(t.name, k, col, t.prior)
            (intercept if col.is_intercept else members).append(m)
    return intercept[:1] + members if len(intercept) <= 1 else []


def _link_location_scale(model: ir.ModelIR, y: np.ndarray, trials, offset) -> tuple[float, float]:
    """A location and a scale of the response on the link scale (only a change of coordinates:
    a rough value costs a few steps, never correctness)."""
    y = y[np.isfinite(y)]
    if y.size == 0:
        return 0.0, 1.0
    fam, link = model.family.name, model.family.link
    shift = float(np.mean(offset)) if offset is not None else 0.0
    if fam in ("normal", "student_t") and link == "identity":
        return float(np.mean(y)) - shift, float(np.std(y)) or 1.0
    if fam == "lognormal" and np.all(y > 0):
        ly = np.log(y)
        return float(np.mean(ly)) - shift, float(np.std(ly)) or 1.0
    mean = float(np.mean(y))
    if trials is not None:
        mean = mean / max(float(np.mean(trials)), 1e-12)
    if link == "log":
        return float(np.log(max(mean, 1e-3))) - shift, 1.0
    if link in ("logit", "probit"):
        p = min(max(mean, 1e-3), 1 - 1e-3)
        return float(np.log(p / (1 - p)) if link == "logit" else 0.0) - shift, 1.0
    if link == "inverse" and mean > 0:
        return 1.0 / mean - shift, 1.0 / mean
    return -shift, 1.0


def whitening(model: ir.ModelIR, columns: np.ndarray, y: np.ndarray, trials=None, offset=None) -> dict | None:
    """The block's constants: ``B_inv`` (maps ``w`` to ``x - c``), ``c``, and ``log_det``
    (``log |det B_inv|``). ``columns``: the non-intercept members' values, (rows, K)."""
    members = block_members(model)
    if not members:
        return None
    has_intercept = members[0].column.is_intercept
    K = len(members) - has_intercept
    mu, s = _link_location_scale(model, np.asarray(y, np.float64), trials, offset)
    if not np.isfinite(mu) or not np.isfinite(s) or s <= 0:
        mu, s = 0.0, 1.0
    R = np.eye(K)
    m = np.zeros(K)
    if K:
        X = np.asarray(columns, np.float64)
        mean = X.mean(axis=0)
        sd = X.std(axis=0)
        live = (sd > 1e-9 * np.maximum(1.0, np.abs(mean))) & np.isfinite(sd)
        if has_intercept:
            m = np.where(live, mean, 0.0)
            scale = np.where(live, sd, 1.0)
        else:   # no intercept to absorb a shift: whiten by the raw second moment
            scale = np.sqrt(np.mean(X * X, axis=0))
            scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        L = np.eye(K)
        if K <= DENSE_MAX:
            Xc = (X - m) / scale
            corr = (Xc.T @ Xc) / X.shape[0]
            corr[~live, :] = 0.0
            corr[:, ~live] = 0.0
            corr[np.diag_indices(K)] = np.where(live, np.diag(corr), 1.0)
            corr += 1e-6 * np.eye(K)
            try:
                L = np.linalg.cholesky(corr)
            except np.linalg.LinAlgError:
                L = np.eye(K)
        R = L.T * scale[None, :]          # upper triangular: Cov(X - m) ~= R^T R
    # x - c = B_inv w:  b = s R^-1 w_1: ;  alpha = s w_0 + mu - m . b
    R_inv = np.linalg.inv(R) if K else np.zeros((0, 0))
    if has_intercept:
        B_inv = np.zeros((K + 1, K + 1))
        B_inv[0, 0] = s
        B_inv[1:, 1:] = s * R_inv
        B_inv[0, 1:] = -(m @ (s * R_inv))
        c = np.zeros(K + 1)
        c[0] = mu
    else:
        B_inv = s * R_inv
        c = np.zeros(K)
    sign, log_det = np.linalg.slogdet(B_inv)
    if not np.isfinite(B_inv).all() or sign == 0 or not np.isfinite(log_det):
        return None
    return {"B_inv": B_inv.astype(np.float32), "c": c.astype(np.float32),
            "log_det": np.float32(log_det)}


class WhitenedPrior(dist.Distribution):
    """The population priors seen through ``w = B (x - c)``: ``log_prob(w)`` is the priors' log
    density at ``x = B_inv w + c`` plus ``log |det B_inv|``; ``sample`` draws the priors."""

    arg_constraints = {}
    support = constraints.real_vector
    reparametrized_params = []

    def __init__(self, priors: tuple[tuple[Prior, int], ...], B_inv, c, log_det, *, validate_args=None):
        self.priors = tuple(priors)                      # (prior, how many consecutive elements)
        self.B_inv, self.c, self.log_det = B_inv, c, log_det
        super().__init__(batch_shape=(), event_shape=(int(np.shape(c)[0]),), validate_args=validate_args)

    @property
    def init_value(self):
        """Where engines start (``hbm.engines.base.hbm_init``): ``w = 0``, the intercept at the
        response's location and every slope 0."""
        return jnp.zeros(self.event_shape)

    def _dists(self):
        return [(to_distribution(p, "real"), n) for p, n in self.priors]

    def log_prob(self, value):
        x = value @ self.B_inv.T + self.c
        total, k = 0.0, 0
        for d, n in self._dists():
            total = total + jnp.sum(d.log_prob(x[..., k:k + n]), axis=-1)
            k += n
        return total + self.log_det

    def sample(self, key, sample_shape=()):
        import jax
        keys = jax.random.split(key, len(self.priors))
        parts = [d.sample(kk, tuple(sample_shape) + (n,)) for kk, (d, n) in zip(keys, self._dists())]
        x = jnp.concatenate(parts, axis=-1)
        return jnp.linalg.solve(self.B_inv, (x - self.c)[..., None])[..., 0]

    def tree_flatten(self):
        return (self.B_inv, self.c, self.log_det), self.priors

    @classmethod
    def tree_unflatten(cls, aux, params):
        return cls(aux, *params)


def prior_runs(members: list[Member]) -> tuple[tuple[Prior, int], ...]:
    """Consecutive members with the same prior, as (prior, count) runs."""
    runs: list[tuple[Prior, int]] = []
    for m in members:
        if runs and runs[-1][0] == m.prior:
            runs[-1] = (m.prior, runs[-1][1] + 1)
        else:
            runs.append((m.prior, 1))
    return tuple(runs)


def population_whitening(model: ir.ModelIR, info) -> dict | None:
    """:func:`whitening` of ``model``'s block over the rows of ``info`` (a ``TableInfo``)."""
    members = block_members(model)
    if not members:
        return None
    cols = [column_values(m.column, info) for m in members if not m.column.is_intercept]
    X = np.stack(cols, axis=1) if cols else np.zeros((info.n, 0))
    resp = model.response
    y = info.numeric(A.Var(resp.column))
    trials = info.numeric(A.Var(resp.trials)) if resp.trials else None
    offset = np.sum([info.numeric(o) for o in model.offsets], axis=0) if model.offsets else None
    return whitening(model, X, y, trials, offset)


# ---------------------------------------------------------------- group-level shear
@dataclass(frozen=True)
class Shear:
    """A plate's varying intercept drawn sheared by its varying slopes (see :func:`shear_plan`).

    ``intercept``: the intercept's site (a chain's innermost ``Intercept[g]`` or a ``r(1 | g)``
    block); ``slopes``: for each slope, ``(kind, name, column)`` with kind ``"chain"`` (its
    deviation is the chain's value minus its top) or ``"block"`` (a single-term block)."""

    plate: str
    intercept: str
    slopes: tuple[tuple[str, str, ir.DesignColumn], ...]


def shear_plan(model: ir.ModelIR) -> dict[str, Shear]:
    """Per plate, the shear of its varying intercept by its varying slopes.

    With a slope ``b_g`` on an uncentred predictor (mean ``m_g`` in group g), the data pin
    ``a_g + b_g m_g``, not ``a_g``: a_g and b_g are nearly collinear a posteriori in every group,
    as the population intercept and slope are without centring. The intercept is therefore drawn
    as ``a'_g = a_g + m_g . d_g`` (``d_g``: the slopes' deviations from their population values,
    drawn first) with the density that makes ``a_g`` follow its prior exactly; the map has unit
    Jacobian, so the model is unchanged. Correlated blocks are left as they are."""
    plan: dict[str, Shear] = {}
    for p in model.plates:
        icept_chain = [c for c in model.chains if c.plates[0] == p.name and c.column.is_intercept]
        icept_block = [b for b in model.groups if b.plate == p.name and b.cor_prior is None
                       and b.columns[0].is_intercept]
        if len(icept_chain) + len(icept_block) != 1:
            continue
        slopes = [("chain", c.site(p.name), c.column) for c in model.chains
                  if c.plates[0] == p.name and not c.column.is_intercept]
        if icept_block:   # single-term slope blocks are drawn before it too
            slopes += [("block", b.site, b.columns[0]) for b in model.groups
                       if b.plate == p.name and b.cor_prior is None and not b.columns[0].is_intercept]
        if slopes:
            site = icept_chain[0].site(p.name) if icept_chain else icept_block[0].site
            plan[p.name] = Shear(p.name, site, tuple(slopes))
    return plan


def shear_means(model: ir.ModelIR, info) -> dict[str, np.ndarray]:
    """Per sheared plate, the mean of each slope's column in each level, (levels, slopes)."""
    out = {}
    for plate, sh in shear_plan(model).items():
        codes = info.levels(model.plate(plate).columns)[0]
        size = model.plate(plate).size
        count = np.bincount(codes, minlength=size).astype(np.float64)
        cols = []
        for _, _, col in sh.slopes:
            total = np.bincount(codes, weights=column_values(col, info), minlength=size)
            cols.append(np.where(count > 0, total / np.maximum(count, 1.0), 0.0))
        m = np.stack(cols, axis=1)
        if np.isfinite(m).all() and np.abs(m).max() > 0:
            out[plate] = m.astype(np.float32)
    return out
