"""Lower a non-linear IR to a NumPyro model."""
from __future__ import annotations

from typing import Callable
import jax.numpy as jnp
import numpy as np
import numpyro
from hbm.vocabulary.families import FAMILIES
from hbm.lowering.model import make_model, sample_param
from hbm.ir.nonlinear import NonlinearIR
from hbm.ir.nonlinear import Param
from hbm.ir.nonlinear import evaluate
from hbm.vocabulary.functions import BOUNDS
from hbm.vocabulary.functions import JAX_OPS

# ---------------------------------------------------------------------- lower
def make_nonlinear_model(model: NonlinearIR, mesh=None) -> Callable:
    """The NumPyro model of a non-linear IR; its modes are those of :func:`hbm.lowering.model.make_model`,
    plus ``mode="params"``, which returns each parameter's per-row values (curves, predictions).

    With several devices the rows are sharded and XLA partitions the sums (no ``shard_map``)."""
    subs = {p.name: make_model(p.model) for p in model.params if not p.direct}
    family = FAMILIES[model.family.name]
    one = np.zeros(1, np.float32)

    def model_fn(rows, consts, mode="fit", scale=None):
        values = {}
        for p in model.params:
            if p.direct:   # the parameter itself, on its own scale
                t = p.model.population[0]
                values[p.name] = jnp.reshape(sample_param(t.name, t.prior, p.bound), (1,))
                continue
            sub_rows = dict(rows["params"][p.name], y=rows["y"] if p.per_row else one)
            eta = subs[p.name](sub_rows, consts["params"][p.name], mode="latent" if mode == "latent" else "eta")
            if eta is not None:
                values[p.name] = BOUNDS[p.bound](eta)
        aux = {fp.name: sample_param(fp.name, fp.prior, "positive") for fp in model.family.params}
        if mode == "latent":
            return None
        if mode == "params":
            return values
        mean = predictor(model, values, rows)
        extra = {k: rows[k] for k in ("trials", "se") if k in rows}
        d = family.make(mean, model.family.link, aux, extra)
        if mode == "simulate":
            with numpyro.plate("obs", rows["y"].shape[0]):
                numpyro.sample("y", d)
        elif mode == "fit":
            ll = d.log_prob(rows["y"])
            if "weights" in rows:
                ll = ll * rows["weights"]
            if "mask" in rows:
                ll = jnp.where(rows["mask"], ll, 0.0)
            ll = jnp.sum(ll)
            numpyro.factor("loglik", ll if scale is None else ll * scale)
        return mean
    return model_fn


def predictor(model: NonlinearIR, values: dict, rows: dict):
    """The expression of every row (on the link scale), its limits where data leaves are infinite."""
    def leaf(e):
        return values[e.name] if isinstance(e, Param) else rows["data"][e.text]
    out = evaluate(model.expr, JAX_OPS, leaf)
    for lim in model.limits:
        out = jnp.where(rows["limits"][lim.key], evaluate(lim.expr, JAX_OPS, leaf), out)
    return out

