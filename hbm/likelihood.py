"""The fused likelihood: linear predictor and log density of every row, summed.

With one device it is a plain function of the per-row arrays. With a mesh it
runs under ``jax.shard_map``: rows split on the ``data`` axis, parameters
replicated, padded rows masked, the sum reduced across devices with ``psum``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from . import ir
from .families import FAMILIES


class Likelihood:
    """Computes ``eta`` and the summed log-likelihood for one model layout."""

    def __init__(self, model: ir.ModelIR, effects: dict, mesh=None):
        self.family = FAMILIES[model.family.name]
        self.link = model.family.link
        self.n_intercepts = {p: sum(e.column.is_intercept for e in effs) for p, effs in effects.items()}
        self.mesh = mesh

    def eta(self, params: dict, rows: dict) -> jnp.ndarray:
        """The linear predictor of every row."""
        n = rows["y"].shape[0]
        eta = jnp.zeros((n,), jnp.float32)
        if params["intercept"] is not None:
            eta = eta + params["intercept"]
        if params["b"] is not None:
            eta = eta + rows["X"] @ params["b"]
        if "offset" in rows:
            eta = eta + rows["offset"]
        for plate, table in params["tables"].items():
            g = table[rows["idx"][plate]]
            k = self.n_intercepts[plate]
            if k:
                eta = eta + jnp.sum(g[:, :k], axis=1)
            if k < table.shape[1]:
                eta = eta + jnp.sum(g[:, k:] * rows["Z"][plate], axis=1)
        return eta

    def rowwise(self, params: dict, rows: dict) -> jnp.ndarray:
        """Log-likelihood of every row (weighted, padded rows zero)."""
        eta = self.eta(params, rows)
        extra = {k: rows[k] for k in ("trials", "se") if k in rows}
        ll = self.family.make(eta, self.link, params["aux"], extra).log_prob(rows["y"])
        if "weights" in rows:
            ll = ll * rows["weights"]
        if "mask" in rows:
            ll = jnp.where(rows["mask"], ll, 0.0)
        return ll

    def total(self, params: dict, rows: dict, scale=None) -> jnp.ndarray:
        """The summed log-likelihood (times ``scale`` for minibatches)."""
        if self.mesh is None:
            s = jnp.sum(self.rowwise(params, rows))
        else:
            row_specs = jax.tree_util.tree_map(lambda _: P("data"), rows)
            param_specs = jax.tree_util.tree_map(lambda _: P(), params)

            def local(p, r):
                return jax.lax.psum(jnp.sum(self.rowwise(p, r)), "data")

            s = jax.shard_map(local, mesh=self.mesh, in_specs=(param_specs, row_specs),
                              out_specs=P())(params, rows)
        return s if scale is None else s * scale
