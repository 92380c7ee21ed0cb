"""The fused likelihood: linear predictor and log density of every row, summed.

One function of the parameters and the row arrays, whatever their layout
(``hbm.data.layout``): the layout is told by the arrays' shapes and keys, so the
same model runs on the flat rows of ``hbm.data.encode`` and on a fit layout.

- flat: every row array has the rows on axis 0; a plate's ``idx`` is a code
  per row, gathered with one scalar gather per group-level column (a gather
  of stacked ``(levels, k)`` rows is 2-3x slower on CPU, in value and grad).
- panel: row arrays are ``(F, T)`` blocks, one block row per level of the
  finest plate. A plate's values enter as ``idx`` of shape ``(F,)`` (constant
  along a block row, broadcast: the gradient is a sum over T, not a scatter),
  as a pattern ``consts.pattern[plate][rows.pattern[plate]]`` (block
  rows share a few rows of codes, e.g. category-by-period for products of one
  category), or as ``(F, T)`` codes (a plain gather).

Families with a closed form in the linear predictor (Poisson/log,
Bernoulli/logit, binomial/logit, normal/identity) are evaluated fused, with
the data-only constant (``-lgamma(y + 1)`` ...) read from ``rows.lp0`` when
the layout precomputed it (summed, already weighted) and computed otherwise.
Other families use the NumPyro distribution's ``log_prob``.

With a mesh the sum runs under ``jax.shard_map``: row arrays split on the
``data`` axis (axis 0), parameters and constants replicated, padded rows
masked, the sum reduced across devices with ``psum``. With one device there
is no ``shard_map``.

A non-linear formula (``hbm.ir.nonlinear``) has the same tail:
:class:`NonlinearLikelihood` computes each parameter's linear predictor with a
:class:`Likelihood` of its own formula, its bound's transform, then the
expression (its limits where data leaves are infinite); that is its ``eta``,
and the log density, ``lp0``, masks, weights, scale and ``shard_map`` are
those of the linear model. A linear formula is the special case whose
expression is its one predictor.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dataclasses import replace

from hbm.data.arrays import Consts, NonlinearRows, Rows
from hbm.ir import model as ir
from hbm.ir.model import plate_effects
from hbm.ir.nonlinear import NonlinearIR, Param, evaluate
from hbm.vocabulary.families import FAMILIES
from hbm.vocabulary.families import FUSED
from hbm.vocabulary.functions import BOUNDS, JAX_OPS


def gather(values: jnp.ndarray, codes: jnp.ndarray) -> jnp.ndarray:
    """``values[codes]`` without bounds handling: codes are valid by construction (encode/layout)."""
    return values.at[codes].get(mode="promise_in_bounds")


class Likelihood:
    """Computes ``eta`` and the summed log-likelihood for one model (any row layout)."""

    def __init__(self, model: ir.ModelIR, effects: dict, mesh=None, fused: bool = True):
        self._family(model, mesh, fused)
        self.n_intercepts = {p: sum(e.column.is_intercept for e in effs) for p, effs in effects.items()}

    def _family(self, model, mesh, fused: bool) -> None:
        self.family = FAMILIES[model.family.name]
        self.link = model.family.link
        self.fused = FUSED.get((model.family.name, self.link)) if fused else None
        self.mesh = mesh

    # ---- linear predictor
    def group_values(self, values: jnp.ndarray, plate: str, rows: Rows, consts: Consts | None) -> jnp.ndarray:
        """One group-level column's value at every row, broadcastable to the rows' shape."""
        pattern = consts.pattern if consts is not None else {}
        if plate in pattern:
            block = gather(values, pattern[plate])              # (G, T): the distinct block rows
            if plate in rows.pattern:
                return gather(block, rows.pattern[plate])       # (F, T)
            return block                                        # (1, T): one pattern for all
        codes = rows.idx[plate]
        g = gather(values, codes)
        if codes.ndim < rows.y.ndim:                            # a code per block row
            g = g[..., None]
        return g

    def eta(self, params: dict, rows: Rows, consts: Consts | None = None) -> jnp.ndarray:
        """The linear predictor of every row (the rows' shape)."""
        shape = rows.y.shape
        eta = jnp.zeros(shape, jnp.float32)
        if params["intercept"] is not None:
            eta = eta + params["intercept"]
        if params["b"] is not None:
            eta = eta + rows.X @ params["b"]
        if rows.offset is not None:
            eta = eta + rows.offset
        for plate, table in params["tables"].items():
            k = self.n_intercepts[plate]
            for j in range(table.shape[1]):
                v = self.group_values(table[:, j], plate, rows, consts)
                eta = eta + (v if j < k else v * rows.Z[plate][..., j - k])
        return eta

    # ---- log density
    def rowwise(self, params: dict, rows, consts: Consts | None = None) -> jnp.ndarray:
        """Log-likelihood of every row (weighted, padded rows zero), without ``rows.lp0``
        when the layout precomputed the constant part."""
        eta = self.eta(params, rows, consts)
        extra = rows.extra
        y = rows.y
        if self.fused is not None:
            ll = self.fused.logp(eta, y, params["aux"], extra)
            if self.fused.const is not None and rows.lp0 is None:
                ll = ll + self.fused.const(y, extra)
        else:
            ll = self.family.make(eta, self.link, params["aux"], extra).log_prob(y)
        if rows.weights is not None:
            ll = ll * rows.weights
        if rows.mask is not None:
            ll = jnp.where(rows.mask, ll, 0.0)
        return ll

    def _constant_aside(self, rows) -> bool:
        """Whether the family's data-only constant was left out of :meth:`rowwise` (the layout keeps it
        in ``rows.lp0``)."""
        return rows.lp0 is not None and self.fused is not None and self.fused.const is not None

    def pointwise(self, params: dict, rows, consts: Consts | None = None) -> jnp.ndarray:
        """Log-likelihood of every row of flat rows, its data-only constant included (``rows.lp0`` of a
        flat layout is per row): what ``log_likelihood`` in posterior.nc holds."""
        ll = self.rowwise(params, rows, consts)
        if self._constant_aside(rows):
            ll = ll + rows.lp0
        return ll

    def local_total(self, params: dict, rows, consts: Consts | None = None) -> jnp.ndarray:
        s = jnp.sum(self.rowwise(params, rows, consts))
        if self._constant_aside(rows):
            s = s + jnp.sum(rows.lp0)
        return s

    def total(self, params: dict, rows, scale=None, consts: Consts | None = None) -> jnp.ndarray:
        """The summed log-likelihood (times ``scale`` for minibatches)."""
        consts = Consts(pattern=consts.pattern if consts is not None else {})   # what the rows read
        if self.mesh is None:
            s = self.local_total(params, rows, consts)
        else:
            row_specs = jax.tree_util.tree_map(lambda _: P("data"), rows)
            rep = jax.tree_util.tree_map(lambda _: P(), (params, consts))

            def local(p, c, r):
                return jax.lax.psum(self.local_total(p, r, c), "data")

            s = jax.shard_map(local, mesh=self.mesh, in_specs=(rep[0], rep[1], row_specs),
                              out_specs=P())(params, consts, rows)
        return s if scale is None else s * scale


class NonlinearLikelihood(Likelihood):
    """The likelihood of a non-linear formula: ``eta`` is its expression (link scale) of the
    parameters' values; everything after ``eta`` is :class:`Likelihood`'s.

    ``params``: ``{"direct": {name: value}, "params": {name: a Likelihood params dict of its
    formula}, "aux": family parameters}``; ``rows``: :class:`hbm.data.arrays.NonlinearRows`."""

    def __init__(self, model: NonlinearIR, mesh=None, fused: bool = True):
        self._family(model, mesh, fused)
        self.model = model
        self.subs = {p.name: Likelihood(p.model, plate_effects(p.model), fused=False)
                     for p in model.params if not p.direct}

    def values(self, params: dict, rows: NonlinearRows, consts: Consts | None = None) -> dict:
        """Each parameter's value at every row (shape ``(1,)`` where it is one for all rows)."""
        out = {}
        one = jnp.zeros((1,), jnp.float32)
        for p in self.model.params:
            if p.direct:
                out[p.name] = params["direct"][p.name]
                continue
            sub = replace(rows.params[p.name], y=rows.y if p.per_row else one)
            out[p.name] = BOUNDS[p.bound](self.subs[p.name].eta(params["params"][p.name], sub, consts))
        return out

    def eta(self, params: dict, rows: NonlinearRows, consts: Consts | None = None) -> jnp.ndarray:
        """The expression at every row, its limits where data leaves are infinite."""
        return expression(self.model, self.values(params, rows, consts), rows)


def expression(model: NonlinearIR, values: dict, rows: NonlinearRows):
    """The expression of every row (on the link scale) from the parameters' ``values``, its limits
    where data leaves are infinite."""
    def leaf(e):
        return values[e.name] if isinstance(e, Param) else rows.data[e.text]
    out = evaluate(model.expr, JAX_OPS, leaf)
    for lim in model.limits:
        out = jnp.where(rows.limits[lim.key], evaluate(lim.expr, JAX_OPS, leaf), out)
    return out
