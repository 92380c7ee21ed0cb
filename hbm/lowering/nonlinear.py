"""Lower a non-linear IR to a NumPyro model.

The parameters' sites are sampled as their formulas' models sample them
(``hbm.lowering.model``, ``mode="params"``); the likelihood is the linear
model's tail (``hbm.lowering.likelihood.NonlinearLikelihood``): fused families
with ``lp0``, masks, weights, the minibatch scale and ``shard_map`` over a mesh.
"""
from __future__ import annotations

from typing import Callable
import jax.numpy as jnp
import numpyro
from hbm.vocabulary.families import FAMILIES
from hbm.lowering.likelihood import NonlinearLikelihood
from hbm.lowering.model import ETA_SITE, POINTWISE_SITE, make_model, sample_param
from hbm.ir.nonlinear import NonlinearIR


# ---------------------------------------------------------------------- lower
def make_nonlinear_model(model: NonlinearIR, mesh=None) -> Callable:
    """The NumPyro model of a non-linear IR; its modes are those of :func:`hbm.lowering.model.make_model`
    (``"eta"`` returns the expression, on the link scale), plus ``mode="params"``, which returns each
    parameter's per-row values (curves, predictions). ``mesh`` shards the likelihood over its
    ``data`` axis (``shard_map``)."""
    subs = {p.name: make_model(p.model) for p in model.params if not p.direct}
    family = FAMILIES[model.family.name]
    lik = NonlinearLikelihood(model, mesh)

    def model_fn(rows, consts, mode="fit", scale=None):
        params = {"direct": {}, "params": {}}
        for p in model.params:
            if p.direct:   # the parameter itself, on its own scale
                t = p.model.population[0]
                params["direct"][p.name] = jnp.reshape(sample_param(t.name, t.prior, p.bound), (1,))
            else:
                params["params"][p.name] = subs[p.name](rows.params[p.name], consts.params[p.name], mode="params")
        params["aux"] = {fp.name: sample_param(fp.name, fp.prior, "positive") for fp in model.family.params}
        if mode == "latent":
            return None
        if mode == "params":
            return lik.values(params, rows)
        if mode == "simulate":
            eta = lik.eta(params, rows)
            with numpyro.plate("obs", rows.y.shape[0]):
                numpyro.sample("y", family.make(eta, model.family.link, params["aux"], rows.extra))
            return eta
        if mode == "fit":
            numpyro.factor("loglik", lik.total(params, rows, scale, consts))
            return None
        if mode == "pointwise":
            numpyro.deterministic(ETA_SITE, lik.eta(params, rows, consts))
            numpyro.deterministic(POINTWISE_SITE, lik.pointwise(params, rows, consts))
            return None
        return lik.eta(params, rows, consts)   # "eta": the expression
    return model_fn
