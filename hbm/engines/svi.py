"""Stochastic variational inference: an autoguide fitted with optax, in compiled blocks of steps.

Guides (``inference.guide``): ``normal`` (AutoNormal, mean field), ``lowrank``
(AutoLowRankMultivariateNormal, ``rank``), ``mvn`` (AutoMultivariateNormal),
``delta`` (AutoDelta, a point estimate). Losses: ``elbo`` (Trace_ELBO) and
``renyi`` (RenyiELBO, ``alpha``), both over ``particles`` vectorised particles.

How it runs, for speed:

- Initialisation is one jitted call (``svi.init`` op by op takes tens of
  seconds on large models).
- Steps run in jitted blocks (a ``lax.while_loop`` of at most ``block`` steps
  that exits at the first non-finite loss), compiled once ahead of time;
  ``progress`` is called after each block with the block's mean loss. The
  state is not donated: the block's starting state is kept so that a
  non-finite loss can be traced back to the last good parameters (the state
  is small beside the data).
- NumPyro guides keep per-trace state (their prototype trace), so every jitted
  function builds its own guide and SVI inside its trace; only the SVI state
  (a pytree of arrays) crosses between them. The set-up work each one repeats
  is dead code that XLA removes.

Stopping rule: after each block, the block's mean loss ``m_k`` is compared with
the previous block's, ``|m_k - m_{k-1}| / max(|m_{k-1}|, 1) < tolerance``, and the
guide's estimates at the block's average parameters with the previous block's: the
median and the 16-84% half-width of every latent value (99th percentile over values)
may move by at most ``MOVE_TOL`` posterior half-widths. A loss that has flattened
relative to its size is not enough: on tens of thousands of rows a slow drift of the
group-level sds hides in the fourth digit of the loss. Both holding on two consecutive
blocks stops the fit as converged. ``tolerance: 0`` runs all ``steps``;
``options: {stop: loss}`` keeps the loss alone (and a ``delta`` guide has no width). The block (the window) is ``steps // 20`` clamped to [50, 500]
steps (``options: {block: N}`` overrides). At the first step whose loss is
not finite the fit stops and raises :class:`HbmError` naming the step, with
the last parameters that gave a finite loss as ``err.last_state`` (constrained
guide parameters, NumPy) and the loss history as ``err.loss``.

Checkpoints (``checkpoint=``, an :class:`hbm.io.checkpoint.Checkpointer`): the SVI
state and the loop's state are saved between pieces of a block, as often as
``inference.checkpoint_every`` / ``checkpoint_seconds`` say, at the end, and at a
non-finite loss (the last good state); a state with a non-finite value anywhere (the
optimiser's moments included) is never saved, so a resumed fit can always go on (at a
non-finite loss the piece's first state is saved instead, or the last checkpoint
stands); a fit given a checkpoint that holds a state
continues from it and ends where the uninterrupted fit ends (same updates, same keys).

Timings: ``init_s`` (compiling and running the initialisation), ``compile_s``
(that plus compiling the step block), ``fit_s`` (running the blocks; steps/s =
steps_run / fit_s), ``sample_s`` (drawing from the guide, compilation included).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hbm.errors import HbmError, did_you_mean
from hbm.engines.base import EngineResult, FitProblem, Option, Progress, compile_once, hbm_init, split_kwargs, to_numpy
from hbm.engines.guides import guide_factory
from hbm.engines.optim import build_optimizer
from hbm.engines.base import latent_names
from hbm.engines.importance import guide_draws_weighted
from hbm.vocabulary.names import LOSSES

MOVE_TOL = 0.05     # the stopping rule's largest movement of an estimate per block, in posterior sds
OPTIONS = {         # inference.options read by run_svi (svi, and map's joint mode)
    "block": Option("int", "steps per compiled block, the stopping rule's window (default steps // 20 "
                    "within [50, 500])", minimum=1),
    "stop": Option("choice", "movement: the loss and the estimates must settle (the default); loss: the "
                   "loss alone", ("movement", "loss")),
}


def movement(before, after) -> float | None:
    """How far the guide's estimates moved between two block averages: the 99th percentile over
    latent values of the larger of |change of median| / half-width and |relative change of the
    half-width| (quantiles 16/50/84%, as ``guide_quantiles`` gives them)."""
    if before is None or after is None or before.shape != after.shape:
        return None
    width0 = 0.5 * np.abs(before[2] - before[0])     # a deterministic site may decrease in its latent
    width1 = 0.5 * np.abs(after[2] - after[0])
    tiny = 1e-12 + 1e-9 * np.abs(after[1])
    shift = np.abs(after[1] - before[1]) / np.maximum(width1, tiny)
    spread = np.abs(width1 - width0) / np.maximum(width0, tiny)
    worst = np.maximum(shift, spread)
    worst = worst[np.isfinite(worst)]
    return float(np.quantile(worst, 0.99)) if worst.size else None


def make_elbo(config: Any):
    """The ELBO object for ``inference.loss`` / ``particles`` / ``alpha``."""
    from numpyro.infer import RenyiELBO, Trace_ELBO

    particles = _particles(config)
    loss = getattr(config, "loss", "elbo")
    if loss == "elbo":
        return Trace_ELBO(num_particles=particles, vectorize_particles=True)
    if loss == "renyi":
        alpha = float(getattr(config, "alpha", 0.5))
        if alpha == 1.0:
            raise HbmError("renyi loss needs alpha != 1", where="inference.alpha",
                           hint="alpha = 1 is the ordinary ELBO: use loss: elbo")
        return RenyiELBO(alpha=alpha, num_particles=particles)
    raise HbmError(f"unknown loss '{loss}'", where="inference.loss", hint=_hint(loss, LOSSES, "losses"))


def _particles(config: Any) -> int:
    return int(getattr(config, "particles", 1) or 1)


def _hint(name: str, names: tuple[str, ...], what: str) -> str:
    dym = did_you_mean(str(name), names)
    return (f"{dym} " if dym else "") + f"{what}: {', '.join(names)}"


@dataclass
class SVIFit:
    """A finished optimisation: the SVI state, the loss history, and a way to use the guide."""

    state: Any
    loss: np.ndarray
    info: dict
    timings: dict
    in_trace: Callable  # in_trace(fn, fast=True)(state) -> fn(svi, params, kwargs), compiled with a fresh SVI
    minibatches: bool = False   # fitted on minibatches: the model saw one batch per call


def run_svi(problem: FitProblem, config: Any, factory: Callable, elbo: Any, *,
            progress: Progress | None = None, on_init: Callable | None = None,
            checkpoint: Any = None) -> SVIFit:
    """Optimise ``factory``'s guide for ``problem`` (see the module docstring for the rules).

    ``checkpoint`` (an :class:`hbm.io.checkpoint.Checkpointer`): continue from its saved
    state if it has one, and save the state as it says, at the end, and at a non-finite loss.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax
    from numpyro.infer import SVI
    from numpyro.infer.initialization import init_to_feasible, init_to_median

    optim = build_optimizer(config.optimizer_fn)
    model = problem.model
    dyn, rebuild = split_kwargs(problem.model_kwargs)
    stream = problem.batches  # minibatches: chunk b for block b
    steps = int(config.steps)
    if steps < 1:
        raise HbmError(f"steps must be at least 1, got {steps}", where="inference.steps")
    tol = float(getattr(config, "tolerance", 0.0) or 0.0)
    options = dict(getattr(config, "options", ()) or ())
    size = int(options.get("block", min(max(steps // 20, 50), 500)))
    size = max(1, min(size, steps))

    def traced_svi(kw: dict) -> SVI:
        # a guide set up inside this trace; the init values it computes are dead code
        svi = SVI(model, factory(model, hbm_init(init_to_feasible)), optim, elbo)
        svi.init(jax.random.PRNGKey(0), **kw)
        return svi

    def in_trace(fn: Callable, fast: bool = True) -> Callable:
        def run(state, dyn_):
            svi = traced_svi(rebuild(dyn_))
            return fn(svi, svi.get_params(state), rebuild(dyn_))
        return lambda state: compile_once(run, state, dyn, fast=fast)(state, dyn)

    def init(key, dyn_):
        svi = SVI(model, factory(model, hbm_init(init_to_median(num_samples=15))), optim, elbo)
        return svi.init(key, **rebuild(dyn_))

    def block(state, dyn_, n):
        kw = rebuild(dyn_)
        svi = traced_svi(kw)

        def body(c):
            i, st, losses, _, acc = c
            st, loss = svi.update(st, **kw)
            acc = jax.tree_util.tree_map(jnp.add, acc, svi.optim.get_params(st.optim_state))
            return i + 1, st, losses.at[i].set(loss), jnp.isfinite(loss), acc

        acc = jax.tree_util.tree_map(jnp.zeros_like, svi.optim.get_params(state.optim_state))
        carry = (jnp.int32(0), state, jnp.full((size,), jnp.nan), jnp.bool_(True), acc)
        i, state, losses, _, acc = lax.while_loop(lambda c: (c[0] < n) & c[3], body, carry)
        return state, losses, i, acc      # acc: the piece's summed (unconstrained) parameters

    def guide_quantiles(acc, dyn_):
        """The guide's 16/50/84% quantiles of every latent value at the parameters ``acc``
        (a block's average), flattened: (3, D)."""
        svi = traced_svi(rebuild(dyn_))
        try:
            q = svi.guide.quantiles(svi.constrain_fn(acc), [0.16, 0.5, 0.84])
        except NotImplementedError:   # a point estimate (AutoDelta): no width to move by
            return jnp.zeros((3, 0))
        return jnp.concatenate([jnp.reshape(v, (3, -1)) for v in q.values()], axis=1)

    # a damaged checkpoint is said before anything is compiled
    saved = checkpoint.load_svi() if checkpoint is not None else None
    t0 = time.perf_counter()
    key = jax.random.PRNGKey(int(config.seed))
    state = compile_once(init, key, dyn, fast=True)(key, dyn)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    if on_init is not None:
        on_init(state)
    history: list[np.ndarray] = []
    done, calm, prev, rel, mean = 0, 0, None, None, float("nan")
    stop, finished = "max_steps", False
    # the guide's estimates, block by block, for the stopping rule (a point estimate has no width)
    watch = getattr(config, "guide", None) != "delta" and options.get("stop", "movement") != "loss"
    quantiles, block_sum, prev_summary, moved, worst_move = None, None, None, None, None
    if saved is not None:
        state = checkpoint.restore(saved, state)
        history, done = [saved.loss], saved.step
        loop = saved.loop
        size = int(loop.get("block", size))  # the blocks the fit started with, so the stopping rule continues
        calm, prev, rel = int(loop.get("calm", 0)), loop.get("prev"), loop.get("rel")
        mean = float(loop["mean"]) if loop.get("mean") is not None else float("nan")
        stop, finished = loop.get("stop", stop), bool(loop.get("finished", False))
        moved, worst_move = loop.get("moved"), loop.get("worst_move")
        if loop.get("prev_summary") is not None:
            prev_summary = np.asarray(loop["prev_summary"], np.float64)
        if loop.get("block_sum") is not None:   # resumed inside a block: its pieces so far
            like = jax.eval_shape(lambda st, d: block(st, d, np.int32(1))[3], state, dyn)
            block_sum = jax.tree_util.tree_unflatten(
                jax.tree_util.tree_structure(like),
                [jnp.asarray(np.asarray(x), l.dtype) for x, l in zip(loop["block_sum"], jax.tree_util.tree_leaves(like))])
    first = done   # the step this run starts from (a resumed fit starts where it stopped)
    # compiled only when there are steps to run (not for a resumed fit that had finished them)
    step_block = compile_once(block, state, dyn, np.int32(size)) if not finished and done < steps else None
    compile_s = time.perf_counter() - t0

    def loop_state(**kw):
        partial = None if block_sum is None else [np.asarray(x) for x in jax.tree_util.tree_leaves(block_sum)]
        return {"block": size, "calm": calm, "prev": prev, "rel": rel, "mean": mean, "stop": stop,
                "finished": False, "prev_summary": prev_summary, "block_sum": partial,
                "moved": moved, "worst_move": worst_move, **kw}

    t1 = time.perf_counter()
    piece = checkpoint.piece(size) if checkpoint is not None else size
    # losses of the block under way (a resumed fit may start inside one)
    in_block = history[0][done - done % size:] if history else np.empty(0)
    block_parts = [in_block] if in_block.size else []
    while not finished and done < steps:
        # a block is [k * size, (k + 1) * size) (the last one cut at steps), run in pieces
        block_end = min(done - done % size + size, steps)
        while done < block_end:
            n = min(piece, block_end - done)
            kw = None if stream is None else stream.kwargs_at(done // size)
            dyn = dyn if kw is None else split_kwargs(kw)[0]
            start, (state, losses, ran, acc) = state, step_block(state, dyn, np.int32(n))
            losses = np.asarray(losses, np.float64)[: int(ran)]
            block_sum = acc if block_sum is None else jax.tree_util.tree_map(jnp.add, block_sum, acc)
            history.append(losses)
            block_parts.append(losses)
            if not np.isfinite(losses[-1]):
                # losses[j] is evaluated at the j-th state of the piece: replay to the last finite one
                k = len(losses) - 2
                good = start if k <= 0 else step_block(start, dyn, np.int32(k))[0]
                full = np.concatenate(history)
                where = None
                if checkpoint is not None:   # the last state with finite values throughout, if any
                    loop = loop_state(non_finite_step=done + len(losses))
                    if checkpoint.save_svi(good, done + max(k, 0), full, loop) or (
                            k > 0 and checkpoint.save_svi(start, done, full, loop)):
                        where = str(checkpoint.dir)
                    elif checkpoint.saves or checkpoint.resumed_from is not None:
                        where = str(checkpoint.dir)     # an earlier checkpoint stands
                _raise_non_finite(done + len(losses), good, full, in_trace, where)
            done += n
            if done < block_end and checkpoint is not None and checkpoint.due(done):
                checkpoint.save_svi(state, done, np.concatenate(history), loop_state())
        losses = np.concatenate(block_parts)
        n = losses.size
        block_parts = []
        mean = float(losses.mean())
        if progress is not None:
            progress(done, steps, mean)
        summary = None
        if tol > 0 and watch and n == size and block_sum is not None:
            avg = jax.tree_util.tree_map(lambda a: a / n, block_sum)
            if quantiles is None:
                quantiles = compile_once(guide_quantiles, avg, dyn)
            summary = np.asarray(quantiles(avg, dyn), np.float64)
        block_sum = None
        if tol > 0 and prev is not None and n == size:
            rel = abs(mean - prev) / max(abs(prev), 1.0)
            moved = movement(prev_summary, summary)
            worst_move = moved if worst_move is None or moved is None else max(worst_move, moved)
            still = moved is not None and moved > MOVE_TOL
            calm = calm + 1 if rel < tol and not still else 0
            if calm >= 2:
                stop = "converged"
                break
        prev, prev_summary = mean, summary
        if done < steps and checkpoint is not None and checkpoint.due(done):
            checkpoint.save_svi(state, done, np.concatenate(history), loop_state())
    if checkpoint is not None and not finished:
        history = [np.concatenate(history)] if history else []
        checkpoint.save_svi(state, done, history[0] if history else np.empty(0), loop_state(finished=True))
    fit_s = time.perf_counter() - t1

    loss = np.concatenate(history)
    info = {
        "steps": steps, "steps_run": done, "converged": stop == "converged", "stop_reason": stop,
        "tolerance": tol, "rel_change": rel, "block": size, "final_loss": mean,
        "movement": moved, "movement_tol": MOVE_TOL if watch else None,
        "optimizer": str(config.optimizer_fn),
        "steps_per_s": (done - first) / fit_s if fit_s > 0 and done > first else None,
    }
    if checkpoint is not None:
        info["checkpoints"] = checkpoint.saves
        if checkpoint.resumed_from is not None:
            info["resumed_from_step"] = checkpoint.resumed_from
    return SVIFit(state, loss, info, {"init_s": init_s, "compile_s": compile_s, "fit_s": fit_s}, in_trace,
                  minibatches=stream is not None)


def _raise_non_finite(step: int, state, loss: np.ndarray, in_trace: Callable, saved_in: str | None = None):
    hint = ("look for priors far wider than the data's scale, unscaled predictors (try scale(x)), "
            "or too large a learning rate (e.g. optimizer: adam(lr=0.001))")
    if saved_in:
        hint += f"; the last good state is saved in {saved_in}"
    err = HbmError(f"the loss became non-finite at step {step}; the fit stopped there",
                   where="inference", hint=hint)
    try:
        err.last_state = to_numpy(in_trace(lambda svi, params, kw: params)(state))
    except Exception:  # the error itself matters more than the parameters attached to it
        err.last_state = None
    err.loss = loss
    err.step = step
    err.checkpoint = saved_in
    raise err


def guide_draws(fit: SVIFit, seed: int, draws: int, *, per_draw: Callable | None = None, fast: bool = True):
    """``draws`` samples of every latent site from the fitted guide: ``(1, draws, *shape)`` NumPy arrays.

    Samples come from running the guide itself (not the model), so no model is
    evaluated per draw. ``per_draw(svi, params, kw, key) -> (params_batch, extra)``
    may supply per-draw parameter values, leading axis ``draws`` (the Laplace
    engine does); ``extra`` (a pytree) comes back as the second result.
    """
    import jax
    import jax.numpy as jnp
    from numpyro import handlers

    def fn(svi, params, kw):
        guide = svi.guide
        names = latent_names(guide)
        key, sub = jax.random.split(jax.random.PRNGKey(seed))
        batch, extra = per_draw(svi, params, kw, sub) if per_draw is not None else (None, None)

        def one(p, k):
            tr = handlers.trace(handlers.seed(handlers.substitute(guide, data=p), k)).get_trace(**kw)
            return {n: tr[n]["value"] for n in names}

        # all draws in one vmap unless the output is large; then vmapped chunks in a loop
        width = sum(int(np.prod(np.shape(guide.prototype_trace[n]["value"]))) for n in names)
        chunk = draws if draws * width <= 2**24 else max(1, 2**24 // max(width, 1))
        nb = -(-draws // chunk)
        fold = lambda x: jnp.concatenate([x, x[: nb * chunk - draws]]).reshape((nb, chunk) + x.shape[1:])
        keys = jax.random.split(key, nb * chunk).reshape(nb, chunk, -1)
        if batch is None:
            out = jax.lax.map(lambda k: jax.vmap(one, in_axes=(None, 0))(params, k), keys)
        else:
            out = jax.lax.map(lambda a: jax.vmap(one)(*a), (jax.tree.map(fold, batch), keys))
        return {n: v.reshape((nb * chunk,) + v.shape[2:])[:draws] for n, v in out.items()}, extra

    out, extra = fit.in_trace(fn, fast=fast)(fit.state)
    return {k: np.asarray(v)[None] for k, v in out.items()}, extra


class SVIEngine:
    """``engine: svi`` — variational inference with an autoguide (see the module docstring)."""

    name = "svi"
    kind = "variational"
    minibatches = True
    checkpoints = True
    options = OPTIONS

    def fit(self, problem: FitProblem, config: Any, progress: Progress | None = None,
            checkpoint: Any = None) -> EngineResult:
        guide = getattr(config, "guide", "normal") or "normal"
        fit = run_svi(problem, config, guide_factory(guide, getattr(config, "rank", None)),
                      make_elbo(config), progress=progress, checkpoint=checkpoint)
        t = time.perf_counter()
        stats = {}
        if guide == "delta":  # a point mass has no density to weigh draws by
            samples, _ = guide_draws(fit, int(config.seed) + 1, int(config.draws))
        else:  # each draw with its log importance weight, for hbm.diagnostics (PSIS)
            samples, log_w, log_q = guide_draws_weighted(fit, int(config.seed) + 1, int(config.draws))
            if log_w is not None:
                stats["log_weight"] = log_w[None]
            else:  # minibatches: hbm.fit adds the log joint over every row
                stats["log_q"] = log_q[None]
        fit.timings["sample_s"] = time.perf_counter() - t
        info = {"engine": self.name, "guide": guide, "loss": getattr(config, "loss", "elbo"),
                "particles": _particles(config), "draws": int(config.draws),
                **fit.info}
        if info["loss"] == "renyi":
            info["alpha"] = float(config.alpha)
        if guide == "lowrank":
            info["rank"] = getattr(config, "rank", None)
        return EngineResult(samples=samples, sample_stats=stats, loss=fit.loss, info=info, timings=fit.timings)
