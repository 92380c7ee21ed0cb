"""Laplace approximation: the mode in unconstrained space, then a Gaussian with the inverse Hessian.

A model with group-level effects (latent sites inside a plate) is fitted by
:mod:`hbm.engines.marginal`: the group effects are integrated out by a Laplace
approximation, the other parameters ``theta`` get a Gaussian at the mode of
their marginal posterior in unconstrained space (``options: {jacobian: true}``,
the default) with the inverse Hessian of its log density, and each draw of
``theta`` gets the group effects ``u | theta ~ N(u*(theta), A(theta)^-1)``.

A model without group-level effects (or ``options: {group_effects: joint}``):
NumPyro's ``AutoLaplaceApproximation``: SVI with a point-mass guide on the
unconstrained latent vector (so the mode includes the transforms' Jacobians),
then draws from ``MultivariateNormal(mode, inverse Hessian of -log joint)``,
mapped back to each site's support. The Hessian is dense, so models with more
than ``MAX_LATENT`` latent dimensions are refused (``options: {max_latent: N}``
overrides).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from hbm.errors import HbmError
from hbm.engines.base import EngineResult, FitProblem, Progress
from hbm.engines.svi import guide_draws, run_svi
from hbm.engines.marginal import DECLARED, read_options, run_marginal, split_sites

MAX_LATENT = 20000


class LaplaceEngine:
    """``engine: laplace`` — MAP (optimised like ``svi``) plus a Gaussian from the Hessian there."""

    name = "laplace"
    kind = "variational"    # draws from a Gaussian approximation of the posterior
    minibatches = False
    checkpoints = False
    options = DECLARED

    def fit(self, problem: FitProblem, config: Any, progress: Progress | None = None) -> EngineResult:
        import jax
        import jax.numpy as jnp
        from numpyro.infer import Trace_ELBO
        from numpyro.infer.autoguide import AutoLaplaceApproximation


        opts = read_options(config, self.name)
        if opts.group_effects == "integrate":
            split = split_sites(problem.model, problem.model_kwargs)
            if split.u:
                return run_marginal(problem, config, split, opts, self.name, progress, draws=int(config.draws))
        limit = int(dict(getattr(config, "options", ()) or ()).get("max_latent", MAX_LATENT))
        dims = {}

        def check(state):
            params = state.optim_state[1][0]
            dims["n"] = int(np.size(params["auto_loc"]))
            if dims["n"] > limit:
                raise HbmError(
                    f"the Laplace approximation needs a dense {dims['n']} x {dims['n']} Hessian; "
                    f"this model has {dims['n']} latent dimensions (more than {limit})",
                    where="inference.engine",
                    hint="use engine: svi (guide: normal or lowrank), or raise options.max_latent")

        hessian = _chunked_hessian(problem.model_kwargs)
        factory = lambda model, init: AutoLaplaceApproximation(  # noqa: E731
            model, init_loc_fn=init, hessian_fn=hessian)
        fit = run_svi(problem, config, factory, Trace_ELBO(), progress=progress, on_init=check)
        draws = int(config.draws)

        def per_draw(svi, params, kw, key):
            post = svi.guide.get_posterior(params)
            z = post.sample(key, (draws,))
            batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (draws,) + jnp.shape(x)), params)
            batch["auto_loc"] = z
            # get_posterior zeroes a scale that came out NaN (a singular Hessian): report it
            return batch, jnp.all(jnp.diagonal(post.scale_tril) > 0)

        t = time.perf_counter()
        samples, ok = guide_draws(fit, int(config.seed) + 1, draws, per_draw=per_draw, fast=False)
        fit.timings["sample_s"] = time.perf_counter() - t
        if not bool(ok):
            raise HbmError("the Hessian of the log density at the mode is not positive definite",
                           where="inference.engine",
                           hint="the posterior is flat or improper in some direction (check the priors); "
                                "use engine: svi or nuts")
        info = {"engine": self.name, "latent_dim": dims["n"], **fit.info}
        return EngineResult(samples=samples, sample_stats={}, loss=fit.loss, info=info, timings=fit.timings)


def _chunked_hessian(model_kwargs: dict):
    """``hessian_fn(f, x)``: Hessian-vector products in chunks sized to the data.

    ``jax.hessian`` evaluates all ``dim`` directions at once, holding ``dim``
    copies of the model's intermediates: too much memory with large data.
    """
    import jax
    import jax.numpy as jnp

    data = sum(int(np.size(x)) for x in jax.tree.leaves(model_kwargs) if hasattr(x, "shape"))

    def hessian_fn(f, x):
        grad = jax.grad(f)

        def column(i):
            return jax.jvp(grad, (x,), (jnp.zeros_like(x).at[i].set(1.0),))[1]

        chunk = int(min(x.size, max(1, 2**24 // max(data, 1))))
        return jax.lax.map(column, jnp.arange(x.size), batch_size=chunk)

    return hessian_fn
