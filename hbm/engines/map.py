"""Maximum a posteriori: SVI with a point-mass guide (AutoDelta), in constrained space.

The estimate comes back as one draw of one chain, ``(1, 1, *shape)``; the loss
history is the negative log joint density per step.
"""
from __future__ import annotations

import time
from typing import Any

from .base import EngineResult, FitProblem, Progress
from .svi import guide_draws, guide_factory, run_svi


class MAPEngine:
    """``engine: map`` — the posterior mode, optimised like ``svi`` (same optimizer, steps, stopping)."""

    name = "map"

    def fit(self, problem: FitProblem, config: Any, progress: Progress | None = None) -> EngineResult:
        from numpyro.infer import Trace_ELBO

        fit = run_svi(problem, config, guide_factory("delta"), Trace_ELBO(), progress=progress)
        t = time.perf_counter()
        samples, _ = guide_draws(fit, int(config.seed) + 1, 1)
        fit.timings["sample_s"] = time.perf_counter() - t
        info = {"engine": self.name, "guide": "delta", **fit.info}
        return EngineResult(samples=samples, sample_stats={}, loss=fit.loss, info=info, timings=fit.timings)

