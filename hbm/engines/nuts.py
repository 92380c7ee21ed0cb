"""The No-U-Turn sampler (NumPyro's NUTS), several chains, with the sampler's statistics.

One chain (initialisation, warmup, sampling) is one program compiled ahead of
time; chains then run one after another, or side by side with ``pmap`` when
there are at least as many local devices as chains. (NumPyro's own
``MCMC.run`` initialises op by op, which costs more than compiling on large
models.) ``sample_stats`` holds, per chain and draw: ``diverging``,
``accept_prob``, ``num_steps`` (leapfrog steps, the tree size), ``energy`` and
``step_size``.
Given a ``checkpoint`` (:class:`hbm.io.checkpoint.Checkpointer`), chains run one after
another save each finished chain, and a resumed fit runs only the chains not saved.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from hbm.engines.base import (EngineResult, FitProblem, Option, Progress, compile_once, hbm_init,
                              latent_site_names, split_kwargs)

OPTIONS = {
    "dense_mass": Option("bool", "a dense mass matrix (default: diagonal)"),
    "regularize_mass": Option("bool", "Stan's regularisation of the adapted mass matrix toward 1e-3 (default: off)"),
    "retry": Option("bool", "run an untrustworthy fit again with more draws (default: true; hbm.pipeline.fit)"),
}
EXTRA_FIELDS = {"diverging": "diverging", "accept_prob": "accept_prob", "num_steps": "num_steps",
                "energy": "energy", "adapt_state.step_size": "step_size"}


def dense_mass(problem: FitProblem, config: Any) -> bool:
    """``options: {dense_mass: true}``: a dense mass matrix (default diagonal). Measured on the seed
    model (20 products, 300 warmup draws): the Intercept's ESS 31 -> 91 of 300, but 1,010 leapfrog
    steps a draw instead of 64, as the dense estimate needs more warmup than a short run gives."""
    return bool(dict(getattr(config, "options", ()) or ()).get("dense_mass", False))


class NUTSEngine:
    """``engine: nuts`` — ``warmup`` + ``samples`` draws in each of ``chains`` chains."""

    name = "nuts"
    kind = "sampler"
    minibatches = False
    checkpoints = True
    options = OPTIONS

    def fit(self, problem: FitProblem, config: Any, progress: Progress | None = None,
            checkpoint: Any = None) -> EngineResult:
        import jax
        from numpyro.infer import MCMC, NUTS
        from numpyro.infer.initialization import init_to_median

        chains = int(config.chains)
        warmup, draws = int(config.warmup), int(config.samples)
        depth = int(config.max_tree_depth)
        latent = latent_site_names(problem.model, problem.model_kwargs)
        dyn, rebuild = split_kwargs(problem.model_kwargs)

        dense = dense_mass(problem, config)
        regularize = bool(dict(getattr(config, "options", ()) or ()).get("regularize_mass", False))

        def one_chain(key, dyn_):
            kernel = NUTS(problem.model, target_accept_prob=float(config.target_accept),
                          max_tree_depth=depth, dense_mass=dense, regularize_mass_matrix=regularize,
                          init_strategy=hbm_init(init_to_median(num_samples=15)))
            mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=1, progress_bar=False)
            mcmc.run(key, extra_fields=tuple(EXTRA_FIELDS), **rebuild(dyn_))
            samples = mcmc.get_samples()
            extra = mcmc.get_extra_fields()
            return ({k: samples[k] for k in latent},
                    {name: extra[f] for f, name in EXTRA_FIELDS.items() if f in extra})

        keys = jax.random.split(jax.random.PRNGKey(int(config.seed)), chains)
        total = chains * (warmup + draws)
        if progress is not None:
            progress(0, total, None)
        parallel = chains > 1 and jax.local_device_count() >= chains
        # chains one after another: each finished chain is saved, and a resumed fit reuses it
        meta = {"seed": int(config.seed), "chains": chains, "warmup": warmup, "samples": draws,
                "target_accept": float(config.target_accept), "max_tree_depth": depth, "latent": latent}
        saved = [checkpoint.load_chain(c, meta) if checkpoint is not None and not parallel else None
                 for c in range(chains)]
        t0 = time.perf_counter()
        if parallel:
            run = jax.pmap(one_chain, in_axes=(0, None)).lower(keys, dyn).compile()
        elif any(got is None for got in saved):
            run = compile_once(one_chain, keys[0], dyn)
        compile_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        if parallel:
            samples, stats = jax.device_get(run(keys, dyn))
            if progress is not None:
                progress(total, total, None)
        else:
            outs, reused = [], 0
            for c in range(chains):
                got = saved[c]
                if got is None:
                    got = jax.device_get(run(keys[c], dyn))
                    if checkpoint is not None:
                        checkpoint.save_chain(c, *got, meta)
                else:
                    reused += 1
                outs.append(got)
                if progress is not None:
                    progress((c + 1) * (warmup + draws), total, None)
            samples, stats = (jax.tree.map(lambda *xs: np.stack(xs), *[o[i] for o in outs]) for i in (0, 1))
        fit_s = time.perf_counter() - t1

        samples = {k: np.asarray(v) for k, v in samples.items()}
        stats = {k: np.asarray(v) for k, v in stats.items()}
        info = {
            "engine": self.name, "chains": chains, "warmup": warmup, "samples": draws,
            "chain_method": "parallel" if parallel else "sequential",
            "target_accept": float(config.target_accept), "max_tree_depth": depth,
            "num_divergences": int(stats["diverging"].sum()),
            "max_tree_depth_hits": int((stats["num_steps"] >= 2 ** depth - 1).sum()),
            "mean_accept_prob": float(stats["accept_prob"].mean()),
            "steps_run": warmup + draws, "converged": None, "stop_reason": "done",
        }
        if not parallel and checkpoint is not None:
            info["chains_resumed"] = reused
        timings = {"compile_s": compile_s, "fit_s": fit_s, "sample_s": None}
        return EngineResult(samples=samples, sample_stats=stats, loss=None, info=info, timings=timings)
