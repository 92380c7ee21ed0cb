"""Lower the IR into a NumPyro model function.

The model samples the priors in plates, reconstructs group values (chains are
drawn level by level from the outermost group in), and adds one fused
log-likelihood (``hbm.lowering.likelihood``). Non-centring is done with NumPyro's
``reparam`` handler, not by hand-made offset variables.

    model(rows, consts)                  # fitting: the likelihood enters as one factor
    model(rows, consts, mode="simulate") # prior/posterior predictive: samples "y" per row
    model(rows, consts, mode="latent")   # parameters only, no likelihood (posterior summaries)
    model(rows, consts, mode="pointwise") # flat rows: sites "<log_lik>" and "<eta>", each row's
                                         # log-likelihood and linear predictor
    model(rows, consts, mode="eta")      # parameters, no likelihood; returns the linear predictor
    model(rows, consts, mode="params")   # parameters, no likelihood; returns them as the likelihood
                                         # takes them (a non-linear parameter's, hbm.lowering.nonlinear)
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import LowerCholeskyAffine
from numpyro.infer.reparam import LocScaleReparam, TransformReparam

from hbm.ir import model as ir
from hbm.ir.model import plate_effects, population_columns
from hbm.vocabulary.families import FAMILIES
from hbm.lowering.likelihood import Likelihood
from hbm.frontend.priors import Fixed, Prior, to_distribution
from hbm.lowering.whiten import SITE as WHITE_SITE, WhitenedPrior, block_members, prior_runs, shear_plan


# mode="pointwise": deterministic sites of each row's log-likelihood and linear predictor (no formula
# term can be named with angle brackets)
POINTWISE_SITE, ETA_SITE = "<log_lik>", "<eta>"


def sample_param(name: str, prior, support: str, shape: tuple = (), dim: int | None = None):
    """A parameter site: sampled from its prior, or a deterministic site when the prior is a number."""
    if isinstance(prior, Fixed):
        return numpyro.deterministic(name, jnp.full(shape, prior.value, dtype=jnp.float32))
    d = to_distribution(prior, support, dim, where=name)
    if shape:
        d = d.expand(shape).to_event(len(shape))
    return numpyro.sample(name, d)


_SCALABLE = {"normal": (), "cauchy": (), "student_t": ("df",)}


def reparam_config(model: ir.ModelIR) -> dict:
    """Sites made non-centred: chain levels and single-term blocks by location-scale, correlated
    blocks by their Cholesky affine transform. Population coefficients with a location-scale
    prior are standardised the same way, so an optimiser's step means the same on every scale
    (an intercept of 300 with a prior scale of 150 otherwise takes thousands of steps to reach)."""
    cfg = {}
    for t in model.population:
        if isinstance(t.prior, Prior) and t.prior.family in _SCALABLE:
            cfg[t.name] = LocScaleReparam(0, shape_params=_SCALABLE[t.prior.family])
    for c in model.chains:
        for p in c.plates:
            cfg[c.site(p)] = LocScaleReparam(0)
    for b in model.groups:
        cfg[b.site] = TransformReparam() if b.cor_prior is not None else LocScaleReparam(0)
    for site in model.centred:     # the data pin these levels: drawn as the model states them
        cfg.pop(site, None)
    return cfg


def make_model(model: ir.ModelIR, mesh=None) -> Callable:
    """The NumPyro model of ``model``; ``mesh`` shards the likelihood over its ``data`` axis."""
    sizes = {p.name: p.size for p in model.plates}
    effects = plate_effects(model)
    n_pop = len(population_columns(model))
    family = FAMILIES[model.family.name]
    lik = Likelihood(model, effects, mesh)

    members = block_members(model)
    runs = prior_runs(members)
    plan = shear_plan(model)
    tops = {c.site(c.plates[0]): c.top for c in model.chains}
    # slopes before the intercepts they shear (the order of sites only)
    chain_order = sorted(model.chains, key=lambda c: c.column.is_intercept)
    group_order = sorted(model.groups, key=lambda b: not (b.cor_prior is None and not b.columns[0].is_intercept))

    def population(consts) -> dict[str, jnp.ndarray]:
        """The population coefficients: through the whitened block (``hbm.lowering.whiten``) when the
        compiler built one, else each from its prior."""
        white = consts.whiten if consts is not None else None
        values = {}
        if white is not None and members:
            w = numpyro.sample(WHITE_SITE, WhitenedPrior(runs, white["B_inv"], white["c"], white["log_det"]))
            x = w @ white["B_inv"].T + white["c"]
            parts: dict[str, list] = {}
            for k, m in enumerate(members):
                parts.setdefault(m.term, []).append(x[..., k])
            for t in model.population:
                if t.name in parts:
                    v = jnp.stack(parts[t.name], -1) if t.is_vector else parts[t.name][0]
                    values[t.name] = numpyro.deterministic(t.name, v)
        for t in model.population:
            if t.name not in values:
                values[t.name] = sample_param(t.name, t.prior, "real", (len(t.columns),) if t.is_vector else ())
        return values

    def body(rows, consts, mode="fit", scale=None):
        pop = population(consts)
        values: dict[str, jnp.ndarray] = {}
        b_parts, intercept = [], None
        for t in model.population:
            v = pop[t.name]
            values[t.name] = v
            if t.in_chain:
                continue
            if len(t.columns) == 1 and t.columns[0].is_intercept:
                intercept = v
            else:
                b_parts.append(jnp.atleast_1d(v))
        shears = {sh.intercept: sh for p, sh in plan.items() if consts is not None and p in consts.shear}

        def deviation(kind, site, top):
            return values[site] - (values[top] if top else 0.0) if kind == "chain" else values[site][:, 0]

        def draw(site, plate, loc, sd):
            """A group-level site; a sheared intercept is drawn as ``hbm.lowering.whiten.shear_plan`` says."""
            sh = shears.get(site)
            if sh is None:
                return numpyro.sample(site, dist.Normal(loc, sd))
            devs = jnp.stack([deviation(kind, s, tops.get(s)) for kind, s, _ in sh.slopes], -1)
            shift = jnp.sum(consts.shear[plate] * devs, -1)
            if model.noncentered and site not in model.centred:
                a = loc + sd * numpyro.sample(site + "~", dist.Normal(shift / sd, 1.0)) - shift
            else:
                a = numpyro.sample(site + "~", dist.Normal(loc + shift, sd)) - shift
            return numpyro.deterministic(site, a)

        for c in chain_order:
            loc = values[c.top] if c.top else 0.0
            for k in reversed(range(len(c.plates))):
                plate = c.plates[k]
                if k + 1 < len(c.plates):
                    loc = loc[consts.parent[f"{plate}>{c.plates[k + 1]}"]]
                sd = sample_param(c.sd_name(k), c.sd_priors[k], "positive")
                with numpyro.plate(plate, sizes[plate]):
                    loc = draw(c.site(plate), plate, loc, sd) if k == 0 else \
                        numpyro.sample(c.site(plate), dist.Normal(loc, sd))
            values[c.site(c.plates[0])] = loc
        for b in group_order:
            sds = [sample_param(b.sd_name(k), s, "positive") for k, s in enumerate(b.sd_priors)]
            if b.cor_prior is None:
                with numpyro.plate(b.plate, sizes[b.plate]):
                    r = draw(b.site, b.plate, 0.0, sds[0])
                values[b.site] = r[:, None]
            else:
                k = len(b.columns)
                chol = sample_param(f"L({b.label})", b.cor_prior, "corr_cholesky", dim=k)
                tril = jnp.stack(sds)[:, None] * chol
                with numpyro.plate(b.plate, sizes[b.plate]):
                    base = dist.Normal(jnp.zeros(k), 1.0).to_event(1)
                    values[b.site] = numpyro.sample(
                        b.site, dist.TransformedDistribution(base, LowerCholeskyAffine(jnp.zeros(k), tril)))
        aux = {p.name: sample_param(p.name, p.prior, "positive") for p in model.family.params}
        coefs = jnp.concatenate(b_parts) if n_pop else None
        tables = {plate: jnp.stack([values[e.owner] if e.owner not in _blocks(model)
                                    else values[e.owner][:, e.index] for e in effs], -1)
                  for plate, effs in effects.items()}
        params = {"intercept": intercept, "b": coefs, "tables": tables, "aux": aux}
        if mode == "simulate":
            eta = lik.eta(params, rows)
            with numpyro.plate("obs", eta.shape[0]):
                numpyro.sample("y", family.make(eta, model.family.link, aux, rows.extra))
        elif mode == "fit":
            numpyro.factor("loglik", lik.total(params, rows, scale, consts))
        elif mode == "pointwise":
            numpyro.deterministic(ETA_SITE, lik.eta(params, rows, consts))
            numpyro.deterministic(POINTWISE_SITE, lik.pointwise(params, rows, consts))
        elif mode == "eta":
            return lik.eta(params, rows, consts)
        elif mode == "params":
            return params

    reparams = reparam_config(model) if model.noncentered else {}
    if not reparams:
        return body

    def model_fn(rows, consts, mode="fit", scale=None):
        with numpyro.handlers.reparam(config=reparams):
            return body(rows, consts, mode, scale)
    return model_fn


def _blocks(model: ir.ModelIR) -> set[str]:
    return {b.site for b in model.groups}

