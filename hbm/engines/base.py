"""What every inference engine takes, returns and declares.

An engine sees only a :class:`FitProblem` (a NumPyro model, its keyword
arguments and, for a minibatch fit, the stream of batches) and an
``InferenceSpec``; it returns an :class:`EngineResult` of plain NumPy arrays,
so the results stage never depends on which engine ran. What it can do it
declares as class attributes (:class:`Engine`, read by :func:`capabilities`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from hbm.errors import HbmError, did_you_mean

Progress = Callable[[int, int, "float | None"], None]
"""``progress(step, total, loss)``, called once per block of steps. A callback with a true attribute
``extra`` is also given keywords an engine has more to say with (:func:`report`)."""


def report(progress: Progress | None, step: int, total: int, loss: float | None = None, **extra) -> None:
    """Call ``progress``: with ``extra`` (e.g. NUTS's ``chain``, ``phase``, ``divergences``) where it
    declares ``extra = True``, else with ``(step, total, loss)`` alone."""
    if progress is None:
        return
    if getattr(progress, "extra", False):
        progress(step, total, loss, **extra)
    else:
        progress(step, total, loss)


@runtime_checkable
class Batches(Protocol):
    """A minibatch stream as an engine sees it (``hbm.data.batching.BatchStream``).

    ``model_kwargs`` hold one chunk of the rows; each step the model draws its batch from it.
    An engine that runs its steps in blocks puts chunk ``b`` in place before block ``b``:
    ``kwargs_at(b)`` is the model's keyword arguments with that chunk, or None when the
    arguments in use hold it already (all rows fit in one chunk, or it is in place).
    """

    batch_size: int

    def kwargs_at(self, block: int) -> dict | None: ...


@dataclass(frozen=True)
class FitProblem:
    """``model(**model_kwargs)`` is a NumPyro model whose observed sites are conditioned already.

    ``batches``: the minibatch stream when the fit is on minibatches (``batch_size``), else None;
    only engines that declare ``minibatches = True`` are given one.
    """

    model: Callable
    model_kwargs: dict = field(default_factory=dict)
    batches: Batches | None = None


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


KINDS = ("sampler", "variational", "optimizer")


@runtime_checkable
class Engine(Protocol):
    """An inference algorithm, registered under ``name`` in the ``hbm.engines`` entry points.

    What it can do, as class attributes (an engine that declares none gets the defaults shown;
    :func:`capabilities` reads them):

    - ``kind``: ``"sampler"`` (MCMC draws: R-hat, ESS and divergences give the sampler's verdict,
      and an untrustworthy run is run again), ``"variational"`` (draws from an approximation of
      the posterior: PSIS on the importance weights it gives, ``--check-subset``) or
      ``"optimizer"`` (a point estimate: one draw). ``FitResult.kind`` is the engine's.
    - ``minibatches``: fits on minibatches (``batch_size``) from ``FitProblem.batches``.
    - ``checkpoints``: ``fit`` takes ``checkpoint=`` (an ``hbm.io.checkpoint.Checkpointer``);
      ``hbm.fit`` passes one only to such an engine.
    - ``options``: the ``inference.options`` it reads, name -> :class:`Option`; ``hbm check`` and
      ``hbm.fit`` refuse any other name (with the nearest one) and a value of the wrong type
      (:func:`check_options`), and the engine is given the values converted. None (the default):
      any options, passed as written.
    """

    name: str
    kind: str = "variational"
    minibatches: bool = False
    checkpoints: bool = False
    options: "dict[str, Option] | None" = None

    def fit(self, problem: FitProblem, config: Any, progress: Progress | None = None) -> EngineResult:
        """Fit ``problem`` as ``config`` (an ``hbm.spec.InferenceSpec``) says."""
        ...


@dataclass(frozen=True)
class Option:
    """One entry of an engine's ``options`` declaration: ``kind`` "int" (at least ``minimum``),
    "bool" (true/false) or "choice" (one of ``choices``), and what it does, in words."""

    kind: str
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: int = 0

    def convert(self, value: Any) -> Any:
        """``value`` as this option's type; ValueError (saying what was expected) if it is not one."""
        if self.kind == "bool":
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise ValueError("true or false")
        if self.kind == "choice":
            key = value.strip().lower() if isinstance(value, str) else value
            if key not in self.choices:
                raise ValueError(f"one of {', '.join(self.choices)}")
            return key
        what = f"a whole number >= {self.minimum}"
        if isinstance(value, bool):
            raise ValueError(what)
        try:
            x = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise ValueError(what) from None
        if not (np.isfinite(x) and x.is_integer() and x >= self.minimum):
            raise ValueError(what)
        return int(x)


def check_options(options: dict, declared: "dict[str, Option] | None", engine: str,
                  also: "dict[str, Option] | None" = None) -> dict:
    """``options`` converted by the engine's ``declared`` options (and ``also``: options of the other
    engines ``engine: auto`` may pick, accepted and converted but not the engine's own); an HbmError
    naming an unknown option with the nearest declared name, or a value of the wrong type. An engine
    that declares none takes any options as written."""
    if declared is None:
        return dict(options)
    known = {**(also or {}), **declared}
    out = {}
    for key, value in options.items():
        opt = known.get(key)
        if opt is None:
            dym = did_you_mean(str(key), known)
            raise HbmError(f"unknown option '{key}' for engine {engine}", where=f"inference.options.{key}",
                           hint=(f"{dym} " if dym else "") + f"{engine}'s options: "
                           + (", ".join(sorted(known)) or "none"))
        try:
            out[key] = opt.convert(value)
        except ValueError as e:
            shown = "null" if value is None else repr(value)
            raise HbmError(f"options.{key} must be {e}, got {shown}", where=f"inference.options.{key}",
                           hint=f"{key}: {opt.help}" if opt.help else None) from None
    return out


@dataclass(frozen=True)
class Capabilities:
    """What an engine declares (:class:`Engine`), defaults filled in."""

    kind: str = "variational"
    minibatches: bool = False
    checkpoints: bool = False
    options: "dict[str, Option] | None" = None


def capabilities(engine: Any) -> Capabilities:
    """``engine``'s declared kind, minibatches, checkpoints and options (the defaults where it declares
    none); a :class:`ValueError` naming the attribute when a declaration is not one of them."""
    out = Capabilities(kind=getattr(engine, "kind", Capabilities.kind),
                       minibatches=getattr(engine, "minibatches", Capabilities.minibatches),
                       checkpoints=getattr(engine, "checkpoints", Capabilities.checkpoints),
                       options=getattr(engine, "options", Capabilities.options))
    if out.options is not None and not (isinstance(out.options, dict) and all(
            isinstance(k, str) and isinstance(v, Option) for k, v in out.options.items())):
        raise ValueError(f"options must be a dict of names to hbm.engines.base.Option, not {out.options!r}")
    if out.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {out.kind!r}")
    for flag in ("minibatches", "checkpoints"):
        if not isinstance(getattr(out, flag), bool):
            raise ValueError(f"{flag} must be True or False, not {getattr(out, flag)!r}")
    return out


def split_kwargs(kwargs: dict) -> tuple[list, Callable[[list], dict]]:
    """Array leaves of ``kwargs`` (jit arguments) and a function rebuilding ``kwargs`` from them.

    Arrays go through ``jit`` as arguments, not as baked-in constants (large data,
    device sharding); NumPy arrays are put on the device once, here, not at every
    call. Everything else stays static.
    """
    import jax

    leaves, treedef = jax.tree.flatten(kwargs)
    idx = [i for i, x in enumerate(leaves)
           if isinstance(x, (jax.Array, np.ndarray)) and np.dtype(x.dtype).kind in "biufc"]
    leaves = [jax.device_put(x) if i in idx and isinstance(x, np.ndarray) else x
              for i, x in enumerate(leaves)]

    def rebuild(dyn: list) -> dict:
        out = list(leaves)
        for i, v in zip(idx, dyn):
            out[i] = v
        return jax.tree.unflatten(treedef, out)

    return [leaves[i] for i in idx], rebuild


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

