"""``hbm.fit``: run an engine on a compiled model and gather the results.

    result = hbm.fit(model, engine="svi", steps=5000)
    result.summary(); result.to_arviz(); result.save("runs/first")
"""
from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hbm.pipeline.compiled import CompiledModel
from hbm.engines.base import EngineResult, FitProblem, capabilities, check_options
from hbm.engines.registry import check_minibatches, get_engine
from hbm.errors import HbmError
from hbm.results.outputs import build_outputs, site_draws
from hbm.results.summary import Outputs, summarize, to_inference_data
from hbm.results.diagnostics import check_fit
from hbm.io.checkpoint import Checkpointer
from hbm.engines.importance import complete_log_weights
from hbm.results.diagnostics import sampler_check
from hbm.results.diagnostics import SAMPLER_ESS, SAMPLER_RHAT
from hbm.results.diagnostics import summary_columns
from hbm.results.curves import curve_files
from hbm.pipeline.effects import effect_files
from hbm.pipeline.predict import run_files
from hbm.io.rundir import save_fit
from hbm.pipeline.predict import Predictor
from hbm.results.pointwise import plan as pointwise_plan, pointwise_groups
from hbm.results.ppc import ppc_files
from hbm.ir.nonlinear import NonlinearIR
from hbm.results.plots import plot_trace
from hbm.spec import Spec

@dataclass
class FitResult:
    """A finished fit: the model, the engine's raw result and the named parameters."""

    model: CompiledModel
    engine: EngineResult
    outputs: Outputs
    config: object
    timings: dict = field(default_factory=dict)
    _summary: object = None
    diagnostics: dict | None = None   # PSIS of a variational fit (hbm/results/diagnostics.py)
    kind: str = "variational"         # the engine's declared kind: sampler | variational | optimizer
    _pointwise: tuple | None = None   # (groups, plan) of hbm/results/pointwise.py, made once

    def summary(self):
        """One row per parameter element: mean, sd, quantiles and diagnostics (a DataFrame)."""
        if self._summary is None:
            self._summary = summary_columns(summarize(self.outputs, self.kind), self.diagnostics)
        return self._summary

    def to_arviz(self):
        """ArviZ InferenceData with named dims and the data's own level labels."""
        observed = {self.model.response_name: self.model.response}
        return self._with_pointwise(to_inference_data(
            self.outputs, self.engine.sample_stats or None, self.engine.loss,
            observed, {"formula": self.model.ir.formula, "engine": self.config.engine}))

    def _with_pointwise(self, idata):
        """``idata`` with the ``log_likelihood`` and ``posterior_predictive`` groups
        (:mod:`hbm.results.pointwise`; computed on first use), on ``observed_data``'s row dim."""
        if self._pointwise is None:
            obs = next(iter(idata.observed_data.data_vars.values()))
            self._pointwise = pointwise_groups(self.model, self.engine.samples, self.config.seed, obs.dims[0])
        if self._pointwise[0]:
            idata.add_groups(self._pointwise[0])
        return idata

    def outputs_plan(self) -> dict:
        """fit.json's ``outputs``: whether ``log_likelihood`` is written (and why not), the
        ``posterior_predictive`` group's draws and rows."""
        if self._pointwise is not None:
            return self._pointwise[1]
        return pointwise_plan(self.model, *next(iter(self.engine.samples.values())).shape[:2])

    def fit_info(self) -> dict:
        """Everything ``fit.json`` records: timings, devices, versions, data, convergence."""
        import jax
        import numpyro
        return {
            "name": self.model.spec.name,
            "formula": self.model.ir.formula,
            "family": self.model.ir.family.name,
            "link": self.model.ir.family.link,
            "engine": self.config.engine,
            "engine_kind": self.kind,          # sampler | variational | optimizer (the engine's declaration)
            "seed": self.config.seed,
            "timings": {**self.engine.timings, **self.timings},
            "devices": {"count": self.model.n_devices, "platform": jax.default_backend(),
                        "kinds": sorted({d.device_kind for d in jax.devices()})},
            "versions": {"hbm": _version(), "jax": jax.__version__, "numpyro": numpyro.__version__,
                         "python": platform.python_version()},
            "data": {"rows": self.model.n_rows, "fingerprint": self.model.fingerprint,
                     "source": self.model.spec.data or self.model.source},
            "plates": {p.name: p.size for p in self.model.ir.plates},
            "convergence": _jsonable(self.engine.info),
            "outputs": _jsonable(self.outputs_plan()),
            **({"diagnostics": _jsonable(self.diagnostics)} if self.diagnostics else {}),
        }

    def resolved_spec(self) -> Spec:
        """The spec as fitted, what the run's ``spec.yaml`` holds: every prior the model used (the
        defaults too, in the spec's own syntax; a non-linear formula keeps the priors as written), the
        data file, and every inference setting as the fit ran (the engine ``auto`` chose, the
        optimizer, a retry's longer run). Fitted again to the same data, it gives the same model."""
        spec = self.model.spec
        priors = spec.priors if isinstance(self.model.ir, NonlinearIR) else self.model.ir.prior_list()
        inference = dataclasses.replace(self.config, optimizer=self.config.optimizer_fn)
        return dataclasses.replace(spec, priors=tuple(priors), inference=inference)

    def save(self, run_dir, overwrite: bool = False) -> Path:
        """Write the run directory (never over an existing run unless ``overwrite=True``)."""
        idata = self.to_arviz()
        extra = {**run_files(self), **curve_files(self), **effect_files(self), **ppc_files(idata)}
        if self.kind == "sampler":
            extra["trace.png"] = lambda p: plot_trace(self.outputs, p, self.engine.sample_stats)
        return save_fit(run_dir, idata, self.summary(), self.resolved_spec().to_dict(),
                        self.fit_info(), self.engine.loss, overwrite=overwrite, extra=extra,
                        overwrite_hint="overwrite=True")

    def predict(self, table, what: str = "response", seed: int = 0, draws: bool = False):
        """Posterior predictions for new rows (see :mod:`hbm.pipeline.predict`): per row mean, sd, q5, q50,
        q95 and ``new_levels``; ``draws=True`` gives the draws, an array (rows, draws)."""
        return Predictor.from_fit(self).predict(table, what=what, seed=seed, draws=draws)


def fit(model: CompiledModel, engine: str | None = None, progress: Callable | None = None,
        checkpoint=None, **overrides) -> FitResult:
    """Fit ``model`` with an engine; keyword overrides replace ``inference:`` settings (steps=...).

    ``checkpoint``: a directory (or an :class:`hbm.io.checkpoint.Checkpointer`) where the engine
    saves its state as ``inference.checkpoint_every`` / ``checkpoint_seconds`` say; a fit given
    a directory that holds a state continues from it. It is passed to engines that declare
    ``checkpoints`` (:class:`hbm.engines.base.Engine`); the others ignore it.
    """
    config = model.spec.inference
    if engine is not None:
        overrides["engine"] = engine
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = set(overrides) - fields
    if unknown:
        raise HbmError(f"unknown inference setting '{sorted(unknown)[0]}'",
                       hint="settings: " + ", ".join(sorted(fields)))
    config = dataclasses.replace(config, **overrides)
    chosen = None
    if config.engine == "auto":
        name, why = choose_engine(model)
        chosen = {"engine": name, "reason": why}
        config = dataclasses.replace(config, engine=name)
        if name == "nuts" and "target_accept" not in overrides and config.target_accept == AUTO_DEFAULT_ACCEPT:
            # small hierarchies (few groups) leave the odd divergence at 0.8; 0.9 costs a few more steps
            config = dataclasses.replace(config, target_accept=AUTO_TARGET_ACCEPT)
    eng = get_engine(config.engine)
    caps = capabilities(eng)
    config = with_checked_options(config, chosen is not None)
    if model.batches is not None:
        check_minibatches(config.engine)
    kwargs = {}
    if checkpoint is not None and caps.checkpoints:
        kwargs["checkpoint"] = checkpoint if isinstance(checkpoint, Checkpointer) else \
            Checkpointer.from_config(checkpoint, config)
    problem = FitProblem(model.numpyro_model, model.data, batches=model.batches)
    fitted = _finish(model, eng.fit(problem, config, progress, **kwargs), config, caps.kind)
    earlier = []
    while caps.kind == "sampler" and len(earlier) < RETRY_ROUNDS:   # as a statistician would
        retry = sampler_retry(fitted, len(earlier) + 1)
        if retry is None:
            break
        config, why = retry
        info = fitted.engine.info
        earlier.append({"reason": why, **{k: info.get(k) for k in (
            "target_accept", "warmup", "samples", "num_divergences")}})
        fitted = _finish(model, eng.fit(problem, config, progress, **kwargs), config, caps.kind)
    if earlier:
        fitted.engine.info["retried"] = {"reason": earlier[-1]["reason"], "earlier_runs": earlier}
    if chosen is not None:
        fitted.engine.info["engine_chosen"] = chosen
    return fitted


def _finish(model: CompiledModel, result: EngineResult, config, kind: str = "variational") -> FitResult:
    """An engine's result as a FitResult: importance weights and PSIS for a guide's draws, the
    outputs, and a sampler's verdict (``kind``: the engine's)."""
    t0 = time.perf_counter()
    diagnostics = None
    if "log_q" in (result.sample_stats or {}):  # a minibatch fit: the log joint over every row here
        result = complete_log_weights(result, model.numpyro_model, {"rows": model.rows, "consts": model.consts})
    if "log_weight" in (result.sample_stats or {}):  # a guide's draws with their importance weights
        result, diagnostics = check_fit(result, config)
    sites = site_draws(model.numpyro_model, model.rows, model.consts, result.samples, config.seed)
    outputs = build_outputs(model.ir, sites, model.encoding)
    fitted = FitResult(model, result, outputs, config, {"summarise_s": time.perf_counter() - t0},
                       diagnostics=diagnostics, kind=kind)
    if fitted.kind == "sampler":
        fitted.diagnostics = sampler_check(fitted.summary(), result.sample_stats, int(config.chains),
                                           config.target_accept, config.max_tree_depth)
    return fitted


AUTO_DEFAULT_ACCEPT, AUTO_TARGET_ACCEPT = 0.8, 0.9
RETRY_ACCEPT = 0.99     # a run with divergences is run again at this target acceptance ...
RETRY_LENGTH = 2        # ... and one whose chains disagree or mixed slowly with this many times the draws
RETRY_MIN_SAMPLES = 1000   # runs of fewer draws per chain are not run again
RETRY_ROUNDS = 2        # at most this many runs after the first (draws x2, then x4)
AUTO_MAX_ROWS = 10_000     # engine: auto fits NUTS up to this many rows (7.6k: 50 s on 2 cores) ...
AUTO_MAX_LATENT = 2_000    # ... and latent values; SVI beyond


def sampler_retry(fitted: FitResult, round_: int = 1) -> tuple | None:
    """The settings of another NUTS run where the last is not trustworthy (``options: {retry:
    false}`` turns it off), with the reason in words; None where the last run stands.

    Divergences: the target acceptance rises to 0.99 (smaller steps into the posterior's narrow
    regions, Stan's and brms's advice); R-hat or ESS short of the verdict's bounds: more draws.
    Either way each retry samples twice as long as the run before it, and the first retry warms up
    twice as long. Runs asked for with fewer than 1,000 draws per chain are not run again (their
    length is the user's choice). The last run's verdict is the one printed; fit.json records the
    earlier runs' settings and why they were not kept (``convergence.retried``)."""
    config, diag = fitted.config, fitted.diagnostics or {}
    if not dict(config.options or ()).get("retry", True) or diag.get("trustworthy", True):
        return None
    if config.samples < RETRY_MIN_SAMPLES:   # a run shorter than the default is the user's choice
        return None
    changes, why = {}, []
    divergences = int(diag.get("divergences") or 0)
    if divergences and config.target_accept < RETRY_ACCEPT:
        changes["target_accept"] = RETRY_ACCEPT
        why.append(f"{divergences} divergences at target_accept {config.target_accept:g}")
    rhat, ess = diag.get("max_r_hat", 1.0), min(diag.get("min_ess_bulk", 1e9), diag.get("min_ess_tail", 1e9))
    if config.chains > 1 and not (rhat < SAMPLER_RHAT and ess >= SAMPLER_ESS):
        why.append(f"R-hat {rhat:.3f}, smallest ESS {ess:.0f}")
    if not why:
        return None
    # smaller steps mix more slowly: the second run is always the longer one too
    changes.update(warmup=config.warmup * (RETRY_LENGTH if round_ == 1 else 1),
                   samples=config.samples * RETRY_LENGTH)
    return dataclasses.replace(config, **changes), "; ".join(why)


AUTO_ENGINES = ("nuts", "svi")   # what choose_engine picks from


def with_checked_options(config, auto: bool = False):
    """``config`` with its ``options`` checked against the engine's declaration and converted
    (:func:`hbm.engines.base.check_options`); ``engine: auto`` (or ``auto``: the engine was chosen by
    it) accepts the options of every engine it may pick, so a spec need not know which it gets."""
    names = AUTO_ENGINES if config.engine == "auto" else (config.engine,)
    declared = [capabilities(get_engine(n)).options for n in names]
    also = {} if auto or config.engine == "auto" else None
    if also is not None:
        for n in AUTO_ENGINES:
            also.update(capabilities(get_engine(n)).options or {})
    if any(d is None for d in declared):
        return config
    own = {k: v for d in declared for k, v in d.items()}
    label = "auto (nuts or svi)" if config.engine == "auto" else config.engine
    options = check_options(dict(config.options or ()), own, label, also=also)
    return dataclasses.replace(config, options=tuple(sorted(options.items())))


def choose_engine(model: CompiledModel) -> tuple[str, str]:
    """``engine: auto``: NUTS where it is cheap (measured on the validation suite: small data fit in
    seconds to a minute, and exactly, where a Gaussian guide misses skewed group-level sds), the
    structured variational guide beyond. Returns the engine and the reason, in words."""
    import jax
    if model.batches is not None:
        return "svi", "minibatches (batch_size) are fitted by SVI"
    if model.n_devices > 1 or jax.process_count() > 1:
        return "svi", "a fit over several devices or hosts is SVI's"
    latent = latent_size(model)
    if model.n_rows <= AUTO_MAX_ROWS and latent <= AUTO_MAX_LATENT:
        return "nuts", f"{model.n_rows:,} rows and {latent:,} latent values: NUTS is affordable and exact"
    return "svi", (f"{model.n_rows:,} rows and {latent:,} latent values: beyond NUTS's budget "
                   f"({AUTO_MAX_ROWS:,} rows, {AUTO_MAX_LATENT:,} values), SVI")


def latent_size(model: CompiledModel) -> int:
    """The number of latent values the engines see (one prior draw, no likelihood)."""
    import jax
    from numpyro import handlers
    kw = model.data
    with handlers.block():
        tr = handlers.trace(handlers.seed(model.numpyro_model, jax.random.PRNGKey(0))).get_trace(
            **{**kw, "mode": "latent"})
    return int(sum(np.size(v["value"]) for v in tr.values()
                   if v["type"] == "sample" and not v["is_observed"]))


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("hbm")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "dev"


def _jsonable(d):
    if isinstance(d, dict):
        return {str(k): _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (np.generic,)):
        return d.item()
    if isinstance(d, np.ndarray):
        return d.tolist()
    return d


def corrected(fit_result):
    """A copy of a finished :class:`hbm.pipeline.fit.FitResult` with ``correct: psis`` applied to its draws.

    For comparing a fit with and without the correction without fitting twice. The copy's
    ``diagnostics`` say whether the correction was applied (not when k-hat >= 0.7: then the
    draws are the original ones). ``fit_result`` must still carry its log weights (a fit made
    with ``correct: none``).
    """
    eng = fit_result.engine
    if "log_weight" not in (eng.sample_stats or {}):
        raise ValueError("this fit carries no importance weights (not variational, or already corrected)")
    config = dataclasses.replace(fit_result.config, correct="psis")
    res, diag = check_fit(eng, config)
    m = fit_result.model
    outputs = fit_result.outputs
    if diag["correction"]["applied"]:
        outputs = build_outputs(m.ir, site_draws(m.numpyro_model, m.rows, m.consts, res.samples, config.seed),
                                m.encoding)
    return FitResult(m, res, outputs, config, dict(fit_result.timings), diagnostics=diag, kind=fit_result.kind)

