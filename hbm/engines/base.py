"""What every inference engine takes and returns.

An engine sees only a :class:`FitProblem` (a NumPyro model and its keyword
arguments) and an ``InferenceSpec``; it returns an :class:`EngineResult` of
plain NumPy arrays, so the results stage never depends on which engine ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

Progress = Callable[[int, int, "float | None"], None]
"""``progress(step, total, loss)``, called once per block of steps."""


@dataclass(frozen=True)
class FitProblem:
    """``model(**model_kwargs)`` is a NumPyro model whose observed sites are conditioned already."""

    model: Callable
    model_kwargs: dict = field(default_factory=dict)


@dataclass
class EngineResult:
    """An engine's output, in plain NumPy.

    ``samples``: every latent sample site (constrained space) -> ``(chains, draws, *site_shape)``.
    ``sample_stats``: ``(chains, draws)`` sampler statistics (NUTS), possibly empty.
    ``loss``: loss per optimisation step (float64) for SVI, MAP and Laplace, else None.
    ``info``: JSON-able facts (engine, steps_run, converged, stop_reason, ...).
    ``timings``: seconds, ``{"compile_s", "fit_s", "sample_s", ...}``.
    """

    samples: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    loss: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float | None] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """An inference algorithm, registered under ``name`` in the ``hbm.engines`` entry points."""

    name: str

    def fit(self, problem: FitProblem, config: Any, progress: Progress | None = None) -> EngineResult:
        """Fit ``problem`` as ``config`` (an ``hbm.spec.InferenceSpec``) says."""
        ...


def latent_site_names(model: Callable, model_kwargs: dict) -> list[str]:
    """Names of the latent (unobserved) sample sites of ``model``, found by abstract tracing.

    Runs the model under ``jax.eval_shape``, so nothing is computed or compiled.
    """
    import jax
    from numpyro import handlers

    names: list[str] = []

    def run():
        tr = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(**model_kwargs)
        names.extend(n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]
                     and not s.get("infer", {}).get("is_auxiliary", False))
        return 0

    jax.eval_shape(run)
    return names


def to_numpy(tree: dict) -> dict[str, np.ndarray]:
    """Device arrays -> NumPy arrays (one host transfer per leaf)."""
    return {k: np.asarray(v) for k, v in tree.items()}


def compile_once(fn: Callable, *args, fast: bool = False):
    """``jit(fn)`` compiled ahead of time for ``args``.

    ``fast`` trades run speed for compile speed (about 2x on CPU): for the
    functions run once (initialisation, drawing from the guide), not for the step loop.
    """
    import jax

    opts = FAST_COMPILE if fast and jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*args).compile(compiler_options=opts)


FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def hbm_init(base):
    """An init strategy: a site whose distribution names its own start (``init_value``, e.g. the
    whitened population block) starts there; every other site by ``base``. (A ``functools.partial``,
    as NumPyro expects of an init strategy.)"""
    import functools
    return functools.partial(_init_site, base=base)


def _init_site(site=None, base=None):
    if site is None:
        return hbm_init(base)
    start = getattr(site.get("fn"), "init_value", None)
    if site["type"] == "sample" and not site["is_observed"] and start is not None:
        return start
    return base(site)

def latent_names(guide) -> list[str]:
    """The model's latent sample sites, from a guide whose prototype is set up."""
    return [n for n, s in guide.prototype_trace.items()
            if s["type"] == "sample" and not s["is_observed"]
            and not s.get("infer", {}).get("is_auxiliary", False)]

