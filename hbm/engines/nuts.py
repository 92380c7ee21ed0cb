"""The No-U-Turn sampler (NumPyro's NUTS), several chains, with the sampler's statistics.

Each chain runs in blocks of about ``1/BLOCKS`` of its iterations (warmup, then draws), so the
progress callback hears from it per block (:func:`hbm.engines.base.report`: chain, phase,
divergences so far). Two programs are compiled ahead of time: a chain's initialisation, and one
block of iterations (``lax.fori_loop`` over NumPyro's ``NUTS.sample``, the block's length a run-time
argument). The iterations are the very ones ``MCMC.run`` makes from the same key (its
``fori_collect`` loop over ``sample``), so a seed gives the same draws in blocks as in one
run (``tests/test_terminal.py``). (NumPyro's own ``MCMC.run`` initialises op by op, which costs more
than compiling on large models.) Chains run one after another, or side by side with ``pmap``
when there are at least as many local devices as chains. ``sample_stats`` holds, per chain and
draw: ``diverging``, ``accept_prob``, ``num_steps`` (leapfrog steps, the tree size), ``energy``
(the Hamiltonian at the draw) and ``step_size``.
Given a ``checkpoint`` (:class:`hbm.io.checkpoint.Checkpointer`), chains run one after
another save each finished chain, and a resumed fit runs only the chains not saved.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from hbm.engines.base import (EngineResult, FitProblem, Option, Progress, compile_once, hbm_init,
                              latent_site_names, report, split_kwargs)

BLOCKS = 20   # progress reports per chain (blocks of iterations)

OPTIONS = {
    "dense_mass": Option("bool", "a dense mass matrix (default: diagonal)"),
    "regularize_mass": Option("bool", "Stan's regularisation of the adapted mass matrix toward 1e-3 (default: off)"),
    "retry": Option("bool", "run an untrustworthy fit again with more draws (default: true; hbm.pipeline.fit)"),
}


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
        import jax.numpy as jnp
        from jax import lax
        from numpyro.infer import NUTS
        from numpyro.infer.initialization import init_to_median

        chains = int(config.chains)
        warmup, draws = int(config.warmup), int(config.samples)
        depth = int(config.max_tree_depth)
        latent = latent_site_names(problem.model, problem.model_kwargs)
        dyn, rebuild = split_kwargs(problem.model_kwargs)

        dense = dense_mass(problem, config)
        regularize = bool(dict(getattr(config, "options", ()) or ()).get("regularize_mass", False))
        size = block_size(warmup, draws)

        def kernel():
            return NUTS(problem.model, target_accept_prob=float(config.target_accept),
                        max_tree_depth=depth, dense_mass=dense, regularize_mass_matrix=regularize,
                        init_strategy=hbm_init(init_to_median(num_samples=15)))

        def init_chain(key, dyn_):
            return kernel().init(key, warmup, None, model_args=(), model_kwargs=rebuild(dyn_))

        def run_block(state, dyn_, n, keep):
            """``n`` (<= ``size``) iterations from ``state``; the draws recorded where ``keep``."""
            kw = rebuild(dyn_)
            k = kernel()
            # sets up k.sample (NumPyro builds it in init); the values init computes are unused and
            # compiled away
            k.init(state.rng_key, warmup, None, model_args=(), model_kwargs=kw)
            post = k.postprocess_fn((), kw)

            def record(st):
                z = post(st.z)
                return ({name: z[name] for name in latent},
                        {"diverging": st.diverging, "accept_prob": st.accept_prob, "num_steps": st.num_steps,
                         "energy": st.energy, "step_size": st.adapt_state.step_size})

            shapes = jax.eval_shape(record, state)
            zeros = lambda _: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)  # noqa: E731
            buf = jax.tree.map(lambda a: jnp.zeros((size,) + a.shape, a.dtype), shapes)

            def body(i, carry):
                st, buf = carry
                st = k.sample(st, (), kw)
                rec = lax.cond(keep, record, zeros, st)
                return st, jax.tree.map(lambda b, r: b.at[i].set(r), buf, rec)
            return lax.fori_loop(0, n, body, (state, buf))

        keys = jax.random.split(jax.random.PRNGKey(int(config.seed)), chains)
        total = chains * (warmup + draws)
        report(progress, 0, total, None, chain=1, chains=chains, phase="compiling", divergences=0)
        parallel = chains > 1 and jax.local_device_count() >= chains
        # chains one after another: each finished chain is saved, and a resumed fit reuses it
        meta = {"seed": int(config.seed), "chains": chains, "warmup": warmup, "samples": draws,
                "target_accept": float(config.target_accept), "max_tree_depth": depth, "latent": latent}
        saved = [checkpoint.load_chain(c, meta) if checkpoint is not None and not parallel else None
                 for c in range(chains)]
        t0 = time.perf_counter()
        states = None
        if parallel:
            init = jax.pmap(init_chain, in_axes=(0, None)).lower(keys, dyn).compile()
            states = init(keys, dyn)
            block = jax.pmap(run_block, in_axes=(0, None, None, None)).lower(
                states, dyn, np.int32(size), np.bool_(True)).compile()
        elif any(got is None for got in saved):
            c0 = next(c for c, got in enumerate(saved) if got is None)
            init = compile_once(init_chain, keys[c0], dyn, fast=True)   # runs once a chain
            states = {c0: init(keys[c0], dyn)}
            block = compile_once(run_block, states[c0], dyn, np.int32(size), np.bool_(True))
        compile_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        tally = {"done": 0, "divergences": 0}

        def blocks(state, chain: int, width: int):
            """Run one chain (or ``width`` side by side) through warmup and draws, block by block."""
            kept = []
            for phase, length, keep in (("warmup", warmup, False), ("sampling", draws, True)):
                for start in range(0, length, size):
                    n = min(size, length - start)
                    state, buf = block(state, dyn, np.int32(n), np.bool_(keep))
                    if keep:
                        got = jax.tree.map(lambda a: a[:, :n] if width > 1 else a[:n], jax.device_get(buf))
                        kept.append(got)
                        tally["divergences"] += int(np.asarray(got[1]["diverging"]).sum())
                    else:
                        jax.block_until_ready(state)
                    tally["done"] += n * width
                    report(progress, tally["done"], total, None, chain=chain, chains=chains, phase=phase,
                           divergences=tally["divergences"])
            axis = 1 if width > 1 else 0
            return tuple(jax.tree.map(lambda *xs: np.concatenate(xs, axis=axis), *[k[i] for k in kept])
                         for i in (0, 1))

        if parallel:
            samples, stats = blocks(states, chains, chains)
        else:
            outs, reused = [], 0
            for c in range(chains):
                got = saved[c]
                if got is None:
                    state = states.pop(c) if c in states else init(keys[c], dyn)
                    got = blocks(state, c + 1, 1)
                    if checkpoint is not None:
                        checkpoint.save_chain(c, *got, meta)
                else:
                    reused += 1
                    tally["done"] += warmup + draws
                    tally["divergences"] += int(np.asarray(got[1]["diverging"]).sum())
                    report(progress, tally["done"], total, None, chain=c + 1, chains=chains, phase="resumed",
                           divergences=tally["divergences"])
                outs.append(got)
            samples, stats = (jax.tree.map(lambda *xs: np.stack(xs), *[o[i] for o in outs]) for i in (0, 1))
        fit_s = time.perf_counter() - t1

        samples = {k: np.asarray(v) for k, v in samples.items()}
        stats = {k: np.asarray(v) for k, v in stats.items()}
        info = {
            "engine": self.name, "chains": chains, "warmup": warmup, "samples": draws,
            "chain_method": "parallel" if parallel else "sequential", "block": size,
            "target_accept": float(config.target_accept), "max_tree_depth": depth,
            "num_divergences": int(stats["diverging"].sum()),
            "max_tree_depth_hits": int(tree_depth_hits(stats["num_steps"], depth).sum()),
            "mean_accept_prob": float(stats["accept_prob"].mean()),
            "draws_kept": chains * draws, "iterations": chains * (warmup + draws), "steps_run": warmup + draws,
            "converged": None, "stop_reason": "done",
        }
        if not parallel and checkpoint is not None:
            info["chains_resumed"] = reused
        timings = {"compile_s": compile_s, "fit_s": fit_s, "sample_s": None}
        return EngineResult(samples=samples, sample_stats=stats, loss=None, info=info, timings=timings)


def block_size(warmup: int, draws: int) -> int:
    """Iterations per block: about ``1/BLOCKS`` of a chain's, at least one."""
    return max(1, -(-(warmup + draws) // BLOCKS))


def tree_depth_hits(num_steps: np.ndarray, depth: int) -> np.ndarray:
    """Where a draw's tree reached ``max_tree_depth``: NumPyro's ``num_steps`` counts the leapfrog steps,
    ``2**depth - 1`` for a full tree of that depth."""
    return np.asarray(num_steps) >= 2 ** depth - 1
