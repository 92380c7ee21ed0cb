"""Maximum a posteriori, with the group-level effects integrated out.

A model with group-level effects (latent sites inside a plate) is fitted by
:mod:`hbm.engines.marginal`: the mode of the marginal posterior of the other
parameters (population coefficients, sds, correlations, sigma), the group
effects integrated out by a Laplace approximation (as lme4 and glmmTMB do),
in the model's own parameters (``options: {jacobian: false}``, the default);
the group effects come back at their conditional mode there. ``options:
{objective: likelihood}`` drops the priors (maximum likelihood, lme4's
``REML = FALSE``); ``{group_effects: joint}`` gives the joint mode instead.

A model without group-level effects (or ``group_effects: joint``): SVI with a
point-mass guide (AutoDelta), in constrained space, optimised like ``svi``.

The estimate comes back as one draw of one chain, ``(1, 1, *shape)``; the loss
history is the negative log (marginal) density per step.
"""
from __future__ import annotations

import time
from typing import Any

from hbm.engines.base import EngineResult, FitProblem, Progress
from hbm.engines.svi import guide_draws, guide_factory, run_svi
from hbm.engines.marginal import DECLARED, read_options, run_marginal, split_sites


class MAPEngine:
    """``engine: map`` — the (marginal) posterior mode (see the module docstring)."""

    name = "map"
    kind = "optimizer"
    minibatches = True      # the joint mode (no group-level effects, or group_effects: joint) only
    checkpoints = False
    options = DECLARED

    def fit(self, problem: FitProblem, config: Any, progress: Progress | None = None) -> EngineResult:
        from numpyro.infer import Trace_ELBO


        opts = read_options(config, self.name)
        if opts.group_effects == "integrate":
            split = split_sites(problem.model, problem.model_kwargs, minibatch=problem.batches is not None)
            if split.u:
                return run_marginal(problem, config, split, opts, self.name, progress)
        fit = run_svi(problem, config, guide_factory("delta"), Trace_ELBO(), progress=progress)
        t = time.perf_counter()
        samples, _ = guide_draws(fit, int(config.seed) + 1, 1)
        fit.timings["sample_s"] = time.perf_counter() - t
        info = {"engine": self.name, "guide": "delta", **fit.info}
        return EngineResult(samples=samples, sample_stats={}, loss=fit.loss, info=info, timings=fit.timings)

