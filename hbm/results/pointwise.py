"""Per-row draws of a fit: the ``log_likelihood`` and ``posterior_predictive`` groups of posterior.nc.

Both come from the model's own lowering, run on the compiled model's flat rows in the data's order
(padding dropped), at the posterior draws of the latent sites:

* ``log_likelihood``: ``mode="pointwise"`` (:meth:`hbm.lowering.likelihood.Likelihood.pointwise`: the
  likelihood the fit used, row by row, weights applied, its data-only constant included), one value
  per draw and row, float32, computed ``CHUNK_VALUES`` numbers at a time. ``outputs.log_likelihood``
  says whether it is written: ``yes``, ``no``, or ``auto`` (the default): when draws x rows is at most
  ``LOG_LIKELIHOOD_MAX_VALUES``; fit.json says why when it is not;
* ``posterior_predictive``: the family's distribution at each row (as ``mode="simulate"``), at most
  ``PPC_MAX_DRAWS`` draws (evenly spaced over each chain) of at most ``PPC_MAX_ROWS`` rows (a random
  subset, kept in data order, when there are more). Coordinates: the row dim holds each row's number
  in the data (0-based), and each grouping factor its level at every row (``hbm ppc --group``).

Both variables are named after the response column and use ``observed_data``'s row dim, so
``az.loo`` and ``az.plot_ppc`` read them as they are.
"""
from __future__ import annotations

import numpy as np

from hbm.data.arrays import NonlinearRows, n_rows
from hbm.data.layout import nonlinear_codes
from hbm.lowering.model import ETA_SITE, POINTWISE_SITE
from hbm.vocabulary.families import FAMILIES

LOG_LIKELIHOOD_MAX_VALUES = 10_000_000   # auto: draws x rows up to this (40 MB of float32; the seed demo's 30M stay out)
PPC_MAX_DRAWS = 100                      # posterior_predictive: at most this many draws ...
PPC_MAX_ROWS = 20_000                    # ... of at most this many rows (2M values, 8 MB)
CHUNK_VALUES = 1 << 22                   # per-row numbers computed at once (draws x rows)
DISCRETE_SUPPORTS = ("count", "binary", "trials")


def is_discrete(family: str) -> bool:
    """Whether the family's responses are whole numbers (stored and drawn as integers)."""
    return FAMILIES[family].support in DISCRETE_SUPPORTS


def _draw_shape(latent: dict) -> tuple[int, int]:
    return tuple(int(x) for x in next(iter(latent.values())).shape[:2])


def plan(model, chains: int, draws: int) -> dict:
    """What the run directory gets, JSON-able (fit.json's ``outputs``): for ``log_likelihood`` whether
    it is written and, when not, why; for ``posterior_predictive`` its draws and rows. ``model``: a
    :class:`hbm.pipeline.compiled.CompiledModel`."""
    n, total = model.n_rows, chains * draws
    setting = model.spec.outputs.log_likelihood
    values = total * n
    ll = {"written": False, "setting": setting, "values": values, "auto_limit": LOG_LIKELIHOOD_MAX_VALUES}
    if model.observed_y is not None:
        ll["reason"] = "a distributed fit: each process holds a share of the rows"
    elif setting == "no":
        ll["reason"] = "outputs.log_likelihood is no"
    elif setting == "auto" and values > LOG_LIKELIHOOD_MAX_VALUES:
        ll["reason"] = (f"{total:,} draws x {n:,} rows = {values:,} values, beyond the "
                        f"{LOG_LIKELIHOOD_MAX_VALUES:,} that outputs.log_likelihood: auto writes "
                        "(set it to yes to write them anyway)")
    else:
        ll["written"] = True
    per_chain = max(1, min(draws, PPC_MAX_DRAWS // max(chains, 1)))
    pp = {"written": model.observed_y is None, "draws": chains * per_chain, "rows": min(n, PPC_MAX_ROWS),
          "of_rows": n}
    if model.observed_y is not None:
        pp["reason"] = ll["reason"]
    return {"log_likelihood": ll, "posterior_predictive": pp}


def take_rows(rows, sel: np.ndarray):
    """``rows`` (flat :class:`hbm.data.arrays.Rows` or ``NonlinearRows``) at the row numbers ``sel``."""
    import jax
    total = n_rows(rows)
    return jax.tree.map(lambda a: a[sel] if np.ndim(a) >= 1 and np.shape(a)[0] == total else a, rows)


def data_rows(model):
    """The compiled model's flat rows in the data's order without padding, and its constants."""
    rows = model.rows
    if n_rows(rows) != model.n_rows:     # padded to a multiple of the devices
        rows = take_rows(rows, np.arange(model.n_rows))
    return rows, model.consts


def per_draw(model_fn, rows, consts, flat_latent: dict, sites: list[str], chunk: int) -> dict:
    """The deterministic ``sites`` of ``model_fn(rows, consts, mode="pointwise")`` (and any sample site
    named) at each draw of ``flat_latent`` (latent site -> (draws, ...)), ``chunk`` draws at a time,
    one compilation for all."""
    import jax
    from numpyro.infer import Predictive

    def run(samples, key, rows_, consts_):
        pred = Predictive(model_fn, posterior_samples=samples, return_sites=list(sites), parallel=True)
        return pred(key, rows_, consts_, mode="pointwise")

    total = next(iter(flat_latent.values())).shape[0]
    chunk = max(1, min(chunk, total))
    run = jax.jit(run)   # one compilation: cheaper than running the model op by op, even once
    key = jax.random.PRNGKey(0)
    out: dict[str, list] = {s: [] for s in sites}
    for start in range(0, total, chunk):
        part = {k: np.asarray(v[start:start + chunk]) for k, v in flat_latent.items()}
        m = next(iter(part.values())).shape[0]
        if m < chunk:   # the last chunk padded with its last draw: the same shapes, no second compilation
            part = {k: np.concatenate([v, np.repeat(v[-1:], chunk - m, axis=0)]) for k, v in part.items()}
        got = run(part, key, rows, consts)      # deterministic sites: the key is never used
        for s in sites:
            out[s].append(np.asarray(got[s])[:m])
    return {s: np.concatenate(v) for s, v in out.items()}


def _flat(latent: dict, chains_draws=None) -> dict:
    c, d = _draw_shape(latent)
    flat = {k: np.asarray(v).reshape((c * d,) + np.shape(v)[2:]) for k, v in latent.items()}
    if chains_draws is None:
        return flat
    return {k: v[chains_draws] for k, v in flat.items()}


def log_likelihood_draws(model, latent: dict) -> np.ndarray:
    """Each row's log-likelihood at each draw, float32 (chains, draws, rows). ``latent``: the engine's
    latent site draws, (chains, draws, ...)."""
    c, d = _draw_shape(latent)
    rows, consts = data_rows(model)
    chunk = max(1, CHUNK_VALUES // max(model.n_rows, 1))
    ll = per_draw(model.numpyro_model, rows, consts, _flat(latent), [POINTWISE_SITE], chunk)[POINTWISE_SITE]
    return ll.astype(np.float32).reshape(c, d, -1)


def predictive_draws(model, latent: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(draws of the response, their draw numbers in each chain, row numbers): at most ``PPC_MAX_DRAWS``
    draws (evenly spaced in each chain) of at most ``PPC_MAX_ROWS`` rows (a random subset, in data
    order, when there are more), as (chains, draws, rows); integers for a discrete family, else float32.

    Each draw's linear predictor and family parameters come from the model (``mode="pointwise"``), the
    responses from the family's distribution of them (``FamilySpec.make``, as ``mode="simulate"`` and
    ``hbm predict`` draw them), sampled at once for all draws: no random key per draw to compile."""
    import jax
    import jax.numpy as jnp
    c, d = _draw_shape(latent)
    per_chain = max(1, min(d, PPC_MAX_DRAWS // max(c, 1)))
    within = np.unique(np.linspace(0, d - 1, per_chain).round().astype(int))
    which = (np.arange(c)[:, None] * d + within[None, :]).reshape(-1)
    n = model.n_rows
    sel = np.arange(n) if n <= PPC_MAX_ROWS else \
        np.sort(np.random.default_rng(seed).choice(n, PPC_MAX_ROWS, replace=False))
    rows, consts = data_rows(model)
    rows = take_rows(rows, sel) if len(sel) < n else rows
    chunk = max(1, CHUNK_VALUES // max(len(sel), 1))
    fam = model.ir.family
    aux = [p.name for p in fam.params]
    got = per_draw(model.numpyro_model, rows, consts, _flat(latent, which), [ETA_SITE, *aux], chunk)
    dist = FAMILIES[fam.name].make(jnp.asarray(got[ETA_SITE], jnp.float32), fam.link,
                                   {k: jnp.asarray(got[k], jnp.float32).reshape(-1, 1) for k in aux},
                                   {k: jnp.asarray(v, jnp.float32) for k, v in rows.extra.items()})
    y = np.asarray(dist.sample(jax.random.PRNGKey(seed + 1)))
    dtype = np.int32 if is_discrete(fam.name) else np.float32
    return y.astype(dtype).reshape(c, len(within), -1), within, sel


def row_levels(model, sel: np.ndarray) -> dict[str, np.ndarray]:
    """Each grouping factor's level label at the rows ``sel`` (plate -> strings)."""
    rows = model.rows
    codes = nonlinear_codes(model.ir, rows) if isinstance(rows, NonlinearRows) else dict(rows.idx)
    out = {}
    for plate, c in codes.items():
        labels = np.asarray([str(x) for x in model.encoding.labels[plate]], dtype=str)
        out[plate] = labels[np.asarray(c)[: model.n_rows][sel]]
    return out


def pointwise_groups(model, latent: dict, seed: int, row_dim: str) -> tuple[dict, dict]:
    """(groups, plan): the ``log_likelihood`` and ``posterior_predictive`` Datasets for ``model``'s
    InferenceData (those :func:`plan` says are written) and the plan itself, for fit.json."""
    import xarray as xr
    from arviz.data.base import make_attrs

    c, d = _draw_shape(latent)
    decided = plan(model, c, d)
    name = model.ir.response.column
    groups = {}
    if decided["log_likelihood"]["written"]:
        ll = log_likelihood_draws(model, latent)
        groups["log_likelihood"] = xr.Dataset(
            {name: (("chain", "draw", row_dim), ll)}, coords={"chain": np.arange(c), "draw": np.arange(d)},
            attrs=make_attrs({"hbm_what": "each row's log-likelihood at each posterior draw"}))
    if decided["posterior_predictive"]["written"]:
        y, within, sel = predictive_draws(model, latent, seed)
        coords = {"chain": np.arange(c), "draw": within, row_dim: sel.astype(np.int64)}
        taken = {"chain", "draw", row_dim, name}
        for plate, labels in row_levels(model, sel).items():
            if plate not in taken:
                coords[plate] = ((row_dim,), labels)
        groups["posterior_predictive"] = xr.Dataset(
            {name: (("chain", "draw", row_dim), y)}, coords=coords,
            attrs=make_attrs({"hbm_family": model.ir.family.name, "hbm_response": name,
                              "hbm_rows_total": int(model.n_rows)}))
        decided["posterior_predictive"]["draws"] = int(y.shape[0] * y.shape[1])
    return groups, decided

