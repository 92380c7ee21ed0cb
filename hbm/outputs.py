"""From posterior draws of the model's sites to the named parameters users read.

Group values are reported as the coefficient itself (population value plus the
group's deviation), correlations from the Cholesky factors, and every name is
the formula's own text (SPEC section 2, "Parameter names").
"""
from __future__ import annotations

import jax
import numpy as np
from numpyro.infer import Predictive

from . import ir
from .encode import Encoding
from .results import Outputs, OutputVar


def site_draws(model_fn, rows, consts, latent: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Every sample and deterministic site of the model (no likelihood) at each draw.

    ``latent`` maps latent sites to (chains, draws, *shape); so does the result.
    """
    first = next(iter(latent.values()))
    chains, draws = first.shape[:2]
    flat = {k: np.asarray(v).reshape((chains * draws,) + v.shape[2:]) for k, v in latent.items()}
    pred = Predictive(model_fn, posterior_samples=flat, batch_ndims=1)
    out = pred(jax.random.PRNGKey(seed), rows, consts, mode="latent")
    merged = dict(flat)
    merged.update({k: np.asarray(v) for k, v in out.items()})
    return {k: v.reshape((chains, draws) + v.shape[1:]) for k, v in merged.items()}


def build_outputs(model: ir.ModelIR, sites: dict[str, np.ndarray], enc: Encoding) -> Outputs:
    """The named parameters of ``model`` from its site draws."""
    if not isinstance(model, ir.ModelIR):  # a non-linear model: each parameter's formula, then the family
        from .nonlinear import build_nonlinear_outputs
        return build_nonlinear_outputs(model, sites, enc)
    vars_: list[OutputVar] = []
    coords: dict[str, list[str]] = {}
    pop = {}
    for t in model.population:
        v = sites[t.name]
        pop[t.name] = v
        if t.is_vector:
            coords[t.name] = list(t.levels)
            vars_.append(OutputVar(t.name, (t.name,), v))
        else:
            vars_.append(OutputVar(t.name, (), v))
    for c in model.chains:
        for k, plate in enumerate(c.plates):
            vars_.append(OutputVar(c.sd_name(k), (), sites[c.sd_name(k)]))
        for plate in reversed(c.plates):
            vars_.append(OutputVar(c.term, (plate,), sites[c.site(plate)]))
    for b in model.groups:
        for k in range(len(b.columns)):
            vars_.append(OutputVar(b.sd_name(k), (), sites[b.sd_name(k)]))
        r = sites[b.site]
        if b.cor_prior is not None:
            chol = sites[f"L({b.label})"]
            cor = np.einsum("...ik,...jk->...ij", chol, chol)
            labels = b.term_labels
            for i in range(len(labels)):
                for j in range(i + 1, len(labels)):
                    vars_.append(OutputVar(f"cor({labels[i]}, {labels[j]} | {b.plate})", (), cor[..., i, j]))
        else:
            r = r[..., None]
        for k, col in enumerate(b.columns):
            name = col.name
            value = r[..., k]
            base = pop.get(name)
            if base is not None and base.ndim == 2:
                value = value + base[..., None]
            vars_.append(OutputVar(name, (b.plate,), value))
    for p in model.family.params:
        vars_.append(OutputVar(p.name, (), sites[p.name]))
    for plate in model.plates:
        coords[plate.name] = list(enc.labels[plate.name])
    return Outputs(tuple(vars_), coords, frozenset(p.name for p in model.plates))
