"""The No-U-Turn sampler (NumPyro's NUTS), several chains, with the sampler's statistics.

Chains run in parallel (``pmap``) when there are at least as many local
devices as chains, else one after another. ``sample_stats`` holds, per chain
and draw: ``diverging``, ``accept_prob``, ``num_steps`` (leapfrog steps, the
tree size), ``energy`` and ``step_size``.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import EngineResult, FitProblem, Progress, latent_site_names

EXTRA_FIELDS = {"diverging": "diverging", "accept_prob": "accept_prob", "num_steps": "num_steps",
                "energy": "energy", "adapt_state.step_size": "step_size"}


class NUTSEngine:
    """``engine: nuts`` — ``warmup`` + ``samples`` draws in each of ``chains`` chains."""

    name = "nuts"

    def fit(self, problem: FitProblem, config: Any, progress: Progress | None = None) -> EngineResult:
        import jax
        from numpyro.infer import MCMC, NUTS
        from numpyro.infer.initialization import init_to_median

        chains = int(config.chains)
        warmup, draws = int(config.warmup), int(config.samples)
        method = "parallel" if chains > 1 and jax.local_device_count() >= chains else "sequential"
        kernel = NUTS(problem.model, target_accept_prob=float(config.target_accept),
                      max_tree_depth=int(config.max_tree_depth),
                      init_strategy=init_to_median(num_samples=15))
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains,
                    chain_method=method, progress_bar=False)
        total = warmup + draws
        if progress is not None:
            progress(0, total, None)
        t = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(int(config.seed)), extra_fields=tuple(EXTRA_FIELDS), **problem.model_kwargs)
        raw = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(raw)
        fit_s = time.perf_counter() - t
        if progress is not None:
            progress(total, total, None)

        latent = set(latent_site_names(problem.model, problem.model_kwargs))
        samples = {k: np.asarray(v) for k, v in raw.items() if k in latent}
        extra = mcmc.get_extra_fields(group_by_chain=True)
        stats = {name: np.asarray(extra[field]) for field, name in EXTRA_FIELDS.items() if field in extra}
        max_steps = 2 ** int(config.max_tree_depth) - 1
        info = {
            "engine": self.name, "chains": chains, "warmup": warmup, "samples": draws,
            "chain_method": method, "target_accept": float(config.target_accept),
            "max_tree_depth": int(config.max_tree_depth),
            "num_divergences": int(stats["diverging"].sum()),
            "max_tree_depth_hits": int((stats["num_steps"] >= max_steps).sum()),
            "mean_accept_prob": float(stats["accept_prob"].mean()),
            "steps_run": total, "converged": None, "stop_reason": "done",
        }
        # sampling compiles inside MCMC.run: its time is in fit_s
        timings = {"compile_s": None, "fit_s": fit_s, "sample_s": None}
        return EngineResult(samples=samples, sample_stats=stats, loss=None, info=info, timings=timings)
