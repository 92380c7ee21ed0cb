"""From posterior draws of the model's sites to the named parameters users read.

Group values are reported as the coefficient itself (population value plus the
group's deviation), correlations from the Cholesky factors, and every name is
the formula's own text (SPEC section 2, "Parameter names").
"""
from __future__ import annotations

import jax
import numpy as np
from numpyro.infer import Predictive

from hbm.ir import model as ir
from hbm.data.encode import Encoding
from hbm.results.summary import Outputs, OutputVar
from hbm.ir.nonlinear import NonlinearIR, NonlinearParam, _first_factor
from hbm.vocabulary.functions import _NP_BOUNDS


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


def build_nonlinear_outputs(model: NonlinearIR, sites: dict, enc: Encoding):
    """The named parameters of every parameter's formula, then the family's."""
    vars_, coords = [], {}
    for p in model.params:
        o = build_outputs(p.model, sites, enc)
        coords.update(o.coords)
        if p.linear_name != p.name:
            for v, dim in _natural(p, o.vars):
                if dim:
                    coords[v.base] = coords[dim]
                vars_.append(v)
        vars_ += o.vars
    vars_ += [OutputVar(fp.name, (), sites[fp.name]) for fp in model.family.params]
    return Outputs(tuple(vars_), coords, frozenset(p.name for p in model.plates))


def _natural(p: NonlinearParam, link_vars):
    """A linked parameter's values on its own scale, from its link-scale outputs: ``p`` = exp(``log(p)``)
    (its value where the other terms and the group deviations are 0), each group's ``p[g=level]``, and in
    a formula without intercept the levels of its (fully coded) first factor, ``p:factor(f)[u]``. Slopes
    have no value on p's scale and are reported on the link scale only. Yields (var, its dim to copy
    coordinates from, or None)."""
    lp, factor = p.linear_name, _first_factor(p.model)

    def value(v):
        a = np.asarray(v.values)
        return _NP_BOUNDS[p.bound](a.astype(np.float64)).astype(a.dtype)
    for v in link_vars:
        if v.base == lp:
            yield OutputVar(p.name, v.dims, value(v)), None
        elif v.base == factor and v.dims == (factor,):
            name = p.name + factor[len(lp):]
            yield OutputVar(name, (name,), value(v)), factor

