"""Group-level effects integrated out: the Laplace approximation of the marginal posterior.

The joint mode of a hierarchical model is the wrong point estimate: with the
group effects ``u`` free, the density grows without bound as a group-level sd
shrinks (or, non-centred, the sd is pulled wherever ``u`` can follow), so
``map`` on the joint density returns sds several times too large or too
small. lme4, glmmTMB and TMB instead maximise the *marginal* density of the
other parameters ``theta``, with ``u`` integrated out by a Laplace
approximation. This module does the same, generically over the model trace:

- ``u``: every latent sample site inside a plate (``cond_indep_stack`` not
  empty) - in hbm the non-centred group-level effects of ``(... | g)`` blocks
  and coefficient chains; ``theta``: every other latent site (population
  coefficients, sds, correlation Cholesky factors, sigma/phi). Both in
  NumPyro's unconstrained space.
- Inner problem: ``u*(theta) = argmax_u log p(y, u | theta)`` by Newton's method
  with the dense Hessian in ``u`` (damped when not negative definite, with a
  backtracking line search), warm-started from the last solution.
- ``log p(y | theta) ~= log p(y, u* | theta) + n_u/2 log(2 pi) - 1/2 log det A``,
  ``A = -d2/du2 log p(y, u | theta)`` at ``u*``: exact for a normal likelihood
  with normal effects.
- Its gradient in ``theta`` exactly, by the implicit function theorem (as TMB):
  ``d/dtheta log det A = psi_theta + (A^-1 psi_u)' f_u,theta`` where
  ``psi(u, theta) = tr(A0^-1 A(u, theta))`` with ``A0`` held fixed.
- Outer problem: L-BFGS (scipy) on ``objective(theta) = log p(y | theta)
  [+ log p(theta)] [+ log |Jacobian|]``, in float64:
  ``objective: posterior`` (default) adds the prior of ``theta``,
  ``objective: likelihood`` leaves it out (flat priors: the maximum likelihood
  estimate of lme4 and glmmTMB, with the population coefficients maximised,
  not integrated - lme4's ``REML = FALSE``); ``jacobian: true`` adds the log
  Jacobian of the unconstrained transforms (the mode in unconstrained space,
  e.g. of log sd), ``false`` gives the mode of the density in the model's own
  parameters (sd itself).
- ``laplace`` draws: ``theta ~ N(theta*, (-Hessian of the objective)^-1)`` (the
  Hessian by central differences of the exact gradient) and
  ``u | theta ~ N(u*(theta), A(theta)^-1)``, re-solved for each draw
  (``conditional: exact``) or linearised around ``theta*``
  (``conditional: linear``: ``u*(theta) ~= u* + du*/dtheta (theta - theta*)``,
  ``A`` at ``theta*``; the default when re-solving would be costly).

The Hessian in ``u`` is dense (``n_u^2`` numbers, ``n_u`` Hessian-vector
products per Newton step): more than ``MAX_GROUP_EFFECTS`` group-level values
are refused (``options: {max_group_effects: N}`` overrides).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hbm.errors import HbmError, did_you_mean
from hbm.engines.base import EngineResult, FitProblem, Option, Progress, compile_once, split_kwargs

# Measured roughly on a shared 2-core CPU, y ~ x + (1 | g) with 10 rows a group: one evaluation of
# the objective and its gradient (2 Hessians in u, the log det's gradient) takes ~0.7 s with 250
# group values, ~2-4 s with 1000, ~6 s with 2000 and 20-30 s with 4000 (memory under 1.5 GB);
# an optimisation takes 20-50 evaluations, laplace 2 more per coordinate of theta.
MAX_GROUP_EFFECTS = 2000
OBJECTIVES = ("posterior", "likelihood")
GROUP_EFFECTS = ("integrate", "joint")
CONDITIONALS = ("auto", "exact", "linear")
DECLARED = {   # the inference.options of map and laplace (their engines declare these)
    "objective": Option("choice", "posterior (default) or likelihood (the priors of theta left out)", OBJECTIVES),
    "jacobian": Option("bool", "the mode in unconstrained space (default: laplace true, map false)"),
    "group_effects": Option("choice", "integrate (default) or joint", GROUP_EFFECTS),
    "max_group_effects": Option("int", f"the most group-level values integrated out (default {MAX_GROUP_EFFECTS})"),
    "conditional": Option("choice", "how laplace draws the group effects given theta", CONDITIONALS),
    "max_latent": Option("int", "laplace's joint mode: the most latent values (default 20000)"),
    "block": Option("int", "the joint mode's steps per compiled block", minimum=1),
}
OPTIONS = tuple(DECLARED)
EXACT_WORK = 2**28            # draws x group values x data size up to which conditional: auto re-solves
_NEWTON_ITERS = 100
_NEWTON_TOL = 1e-10           # Newton decrement g' A^-1 g (log-density units) counted as converged
_LOG_2PI = math.log(2.0 * math.pi)
_FLAT = 1e-9                  # an eigenvalue of -Hessian below this x the largest counts as flat
_FLAT_LOG_SD = 3.0            # a log sd whose normal approximation has sd above this (x e^3 at 1 sd) is flat


@dataclass(frozen=True)
class MarginalOptions:
    """The ``options:`` of ``map`` and ``laplace`` (see the module docstring)."""

    objective: str = "posterior"
    jacobian: bool = False
    group_effects: str = "integrate"
    max_group_effects: int = MAX_GROUP_EFFECTS
    conditional: str = "auto"


def read_options(config: Any, engine: str) -> MarginalOptions:
    """``config.options`` checked; ``jacobian`` defaults to true for ``laplace`` with ``objective:
    posterior`` (the posterior's mode in unconstrained space, where its Gaussian is drawn), else false
    (``map``'s mode in the model's own parameters; ``likelihood``: the maximum likelihood estimate)."""
    opts = dict(getattr(config, "options", ()) or ())
    where = "inference.options"
    for k in opts:
        if k not in OPTIONS:
            dym = did_you_mean(k, OPTIONS)
            raise HbmError(f"unknown option '{k}' for engine {engine}", where=where,
                           hint=(f"{dym} " if dym else "") + "options: " + ", ".join(OPTIONS))

    def choice(key, allowed, default):
        v = str(opts.get(key, default)).lower()
        if v not in allowed:
            raise HbmError(f"options.{key} must be one of {', '.join(allowed)}, got {opts[key]!r}", where=where)
        return v

    objective = choice("objective", OBJECTIVES, "posterior")
    jac = opts.get("jacobian", engine == "laplace" and objective == "posterior")
    if isinstance(jac, str) and jac.lower() in ("true", "false"):
        jac = jac.lower() == "true"
    if not isinstance(jac, (bool, np.bool_)):
        raise HbmError(f"options.jacobian must be true or false, got {jac!r}", where=where)
    limit = opts.get("max_group_effects", MAX_GROUP_EFFECTS)
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise HbmError(f"options.max_group_effects must be a whole number >= 0, got {limit!r}", where=where)
    return MarginalOptions(objective=objective, jacobian=bool(jac),
                           group_effects=choice("group_effects", GROUP_EFFECTS, "integrate"),
                           max_group_effects=limit, conditional=choice("conditional", CONDITIONALS, "auto"))


@dataclass(frozen=True)
class SiteSplit:
    """Latent sites of a model: ``theta`` (outside every plate) and ``u`` (inside one), with shapes."""

    theta: tuple[str, ...]
    u: tuple[str, ...]
    shapes: dict
    minibatch: bool

    @property
    def n_u(self) -> int:
        return int(sum(np.prod(self.shapes[n], dtype=int) for n in self.u))


def split_sites(model: Callable, model_kwargs: dict, minibatch: bool = False) -> SiteSplit:
    """Split the latent sample sites of ``model`` by abstract tracing (nothing is computed).

    Sizes counted are those of the constrained values (an unconstrained vector may be
    smaller, e.g. a correlation Cholesky factor); a latent site is group-level when it
    is sampled inside a plate. ``minibatch``: the fit is on minibatches (``FitProblem.batches``).
    """
    import jax
    from numpyro import handlers


    theta, u, shapes = [], [], {}

    def run():
        tr = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(**model_kwargs)
        for n, s in tr.items():
            if s["type"] != "sample" or s["is_observed"] or s.get("infer", {}).get("is_auxiliary", False):
                continue
            shapes[n] = tuple(np.shape(s["value"]))
            (u if s.get("cond_indep_stack") else theta).append(n)
        return 0

    jax.eval_shape(run)
    return SiteSplit(tuple(theta), tuple(u), shapes, bool(minibatch))


def check_size(split: SiteSplit, opts: MarginalOptions, engine: str) -> None:
    """Refuse (HbmError) what the dense Hessian in ``u`` cannot afford, or minibatches."""
    n = split.n_u
    if n > opts.max_group_effects:
        raise HbmError(
            f"engine {engine} integrates the group-level effects out with a dense {n} x {n} Hessian; "
            f"this model has {n:,} group-level values (more than {opts.max_group_effects:,}), "
            "too many for that", where="inference.engine",
            hint="use engine: svi (the default) or nuts; or raise options.max_group_effects "
                 "(memory grows as the square, time as the cube, of the number)")
    if split.minibatch:
        raise HbmError(
            f"engine {engine} integrates the group-level effects out, which needs every row at once; "
            "it cannot run on minibatches (batch_size)", where="batch_size",
            hint="remove batch_size, or use engine: svi; options: {group_effects: joint} gives the "
                 "joint mode instead (it misestimates group-level sds)")


class MarginalProblem:
    """The log joint split into ``theta`` and ``u``, flat float64 vectors in unconstrained space.

    Build and use it inside ``jax.enable_x64(True)``. The jitted methods take the
    model's data arrays ``dyn`` as arguments (not constants).
    """

    def __init__(self, problem: FitProblem, split: SiteSplit, opts: MarginalOptions, seed: int):
        import jax
        import jax.numpy as jnp
        from jax.flatten_util import ravel_pytree
        from numpyro import handlers
        from numpyro.distributions.transforms import biject_to
        from numpyro.infer.initialization import init_to_median

        self.model, self.split, self.opts = problem.model, split, opts
        self.dyn, self.rebuild = split_kwargs(problem.model_kwargs)
        self.prior_w = 1.0 if opts.objective == "posterior" else 0.0
        self.jac_w = 1.0 if opts.jacobian else 0.0
        self.theta_set, self.u_set = set(split.theta), set(split.u)
        latent = split.theta + split.u

        def init(key, dyn):
            sub = handlers.substitute(handlers.seed(self.model, key), substitute_fn=init_to_median(num_samples=15))
            tr = handlers.trace(sub).get_trace(**self.rebuild(dyn))
            out = {}
            for n in latent:
                s = tr[n]
                out[n] = jnp.asarray(biject_to(s["fn"].support).inv(s["value"]), jnp.float64)
            return out

        key = jax.random.PRNGKey(seed)
        z = compile_once(init, key, self.dyn, fast=True)(key, self.dyn)
        z = {n: (jnp.zeros_like(v) if n in self.u_set else v) for n, v in z.items()}
        self.theta0, self._unravel_theta = ravel_pytree({n: z[n] for n in split.theta})
        self.u0, self._unravel_u = ravel_pytree({n: z[n] for n in split.u})
        self.n_u, self.n_theta = int(self.u0.size), int(self.theta0.size)
        data = sum(int(np.size(x)) for x in self.dyn)
        self.data_size = max(data, 1)
        self.chunk = int(min(max(self.n_u, 1), max(1, 2**24 // self.data_size)))

    # ------------------------------------------------------------ densities
    def trace(self, theta, u, kw):
        """The model's trace at unconstrained ``(theta, u)`` and the log |Jacobian| of each latent site."""
        from numpyro import handlers
        from numpyro.distributions.transforms import biject_to
        import jax.numpy as jnp

        params = {**(self._unravel_theta(theta) if self.n_theta else {}),
                  **(self._unravel_u(u) if self.n_u else {})}
        jac = {}

        def sub(site):
            name = site.get("name")
            if site["type"] != "sample" or name not in params:
                return None
            t = biject_to(site["fn"].support)
            x = params[name]
            v = t(x)
            jac[name] = jnp.sum(t.log_abs_det_jacobian(x, v))
            return v

        tr = handlers.trace(handlers.substitute(handlers.seed(self.model, 0), substitute_fn=sub)).get_trace(**kw)
        return tr, jac

    def parts(self, theta, u, kw):
        """``(log p(theta) + log|J_theta|, log p(y, u | theta) + log|J_u|)``, weighted as the options say."""
        import jax.numpy as jnp

        tr, jac = self.trace(theta, u, kw)
        prior, rest = jnp.zeros((), jnp.float64), jnp.zeros((), jnp.float64)
        for name, site in tr.items():
            if site["type"] != "sample":   # (numpyro.factor sites are observed "auxiliary" samples)
                continue
            lp = (site["fn"].log_prob(site["value"], site["intermediates"]) if site["intermediates"]
                  else site["fn"].log_prob(site["value"]))
            if site["scale"] is not None:
                lp = site["scale"] * lp
            lp = jnp.sum(lp)
            if name in self.theta_set:
                prior = prior + lp
            else:
                rest = rest + lp
        jac_theta = jnp.zeros((), jnp.float64)
        for name, j in jac.items():
            if name in self.theta_set:
                jac_theta = jac_theta + j
            else:
                rest = rest + j
        return self.prior_w * prior + self.jac_w * jac_theta, rest

    def f(self, u, theta, kw):
        """``log p(y, u | theta)`` (the part that depends on ``u``)."""
        return self.parts(theta, u, kw)[1]

    def head(self, theta, kw):
        """The objective's own terms in ``theta``: prior and Jacobian as the options say."""
        return self.parts(theta, self.u0, kw)[0]

    # ------------------------------------------------------------ u-block linear algebra
    def hessian_u(self, u, theta, kw):
        """``-d2 f / du2``, dense, by Hessian-vector products in chunks sized to the data."""
        import jax
        import jax.numpy as jnp

        grad = jax.grad(self.f)
        col = lambda e: jax.jvp(lambda v: grad(v, theta, kw), (u,), (e,))[1]  # noqa: E731
        h = jax.lax.map(col, jnp.eye(self.n_u, dtype=u.dtype), batch_size=self.chunk)
        return -0.5 * (h + h.T)

    def newton(self, theta, u, kw, iters: int = _NEWTON_ITERS):
        """``u*(theta)`` from ``u``: ``(u*, chol(A), pd, converged, iterations)``."""
        import jax
        import jax.numpy as jnp
        from jax import lax

        fv = lambda v: self.f(v, theta, kw)  # noqa: E731

        def stats(v):
            val, g = jax.value_and_grad(fv)(v)
            a = self.hessian_u(v, theta, kw)
            chol, pd = _damped_cholesky(a)
            dec = g @ jax.scipy.linalg.cho_solve((chol, True), g)
            return val, g, chol, pd, dec

        def body(c):
            it, v, val, g, chol, pd, dec = c
            step = jax.scipy.linalg.cho_solve((chol, True), g)
            slack = 1e-12 * (1.0 + jnp.abs(val))

            def ls_cond(s):
                alpha, fnew = s
                return (alpha > 1e-10) & ~(jnp.isfinite(fnew) & (fnew >= val + 1e-4 * alpha * dec - slack))

            def ls_body(s):
                alpha = s[0] * 0.5
                return alpha, fv(v + alpha * step)

            alpha, _ = lax.while_loop(ls_cond, ls_body, (jnp.float64(1.0), fv(v + step)))
            v = v + alpha * step
            return (it + 1, v) + stats(v)

        def cond(c):
            it, v, val, g, chol, pd, dec = c
            return (it < iters) & ~((dec < _NEWTON_TOL) & pd) & jnp.isfinite(val)

        it, v, val, g, chol, pd, dec = lax.while_loop(cond, body, (jnp.int32(0), u) + stats(u))
        return v, chol, pd & jnp.isfinite(val), (dec < _NEWTON_TOL) & pd, it

    # ------------------------------------------------------------ the marginal and its gradient
    def value_and_grad(self, theta, u, chol, kw):
        """The Laplace objective and its exact gradient in ``theta`` at the converged ``u = u*(theta)``."""
        import jax
        import jax.numpy as jnp
        from jax.scipy.linalg import cho_solve, solve_triangular

        n = self.n_u
        head, head_g = jax.value_and_grad(self.head)(theta, kw)
        fval, f_theta = jax.value_and_grad(self.f, argnums=1)(u, theta, kw)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        value = head + fval + 0.5 * n * _LOG_2PI - 0.5 * logdet
        # psi(u, theta) = sum_k w_k' A(u, theta) w_k, W = L^-T: tr(A0^-1 A) with A0 = L L' fixed
        w = solve_triangular(chol, jnp.eye(n, dtype=chol.dtype), lower=True)  # rows: columns of L^-T
        x0 = jnp.concatenate([u, theta])

        def quad(x, wk):
            fu = lambda v: self.f(v, x[n:], kw)  # noqa: E731
            return -jax.jvp(lambda v: jax.jvp(fu, (v,), (wk,))[1], (x[:n],), (wk,))[1]

        psi_x = _chunked_sum(lambda wk: jax.grad(quad)(x0, wk), w, self.chunk)
        v = cho_solve((chol, True), psi_x[:n])
        s_theta = jax.grad(lambda th: jnp.vdot(v, jax.grad(self.f)(u, th, kw)))(theta)
        grad = head_g + f_theta - 0.5 * (psi_x[n:] + s_theta)
        return value, grad

    def evaluate(self, theta, u, dyn):
        """From the start ``u``: ``(objective, gradient, u*, chol(A), ok, newton converged, iterations)``."""
        import jax.numpy as jnp

        kw = self.rebuild(dyn)
        u, chol, pd, conv, it = self.newton(theta, u, kw)
        value, grad = self.value_and_grad(theta, u, chol, kw)
        ok = pd & jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        return value, grad, u, chol, ok, conv, it

    def cross(self, theta, u, kw):
        """``d2 f / du dtheta`` (n_u x n_theta), for ``du*/dtheta = A^-1 cross``."""
        import jax
        return jax.jacfwd(lambda th: jax.grad(self.f)(u, th, kw))(theta)

    def constrain(self, theta, u, kw):
        """Every latent site's constrained value at unconstrained ``(theta, u)``."""
        tr, _ = self.trace(theta, u, kw)
        return {n: tr[n]["value"] for n in self.split.theta + self.split.u}


def _damped_cholesky(a):
    """``(chol(a + lam I), lam == 0)``: the smallest ``lam`` in 0, 1e-8, 1e-7, ... x mean |diag| that works."""
    import jax.numpy as jnp
    from jax import lax

    scale = jnp.mean(jnp.abs(jnp.diagonal(a))) + 1e-12
    eye = jnp.eye(a.shape[0], dtype=a.dtype)
    chol = jnp.linalg.cholesky(a)

    def cond(c):
        return ~jnp.all(jnp.isfinite(c[0])) & (c[1] < 14)

    def body(c):
        k = c[1]
        return jnp.linalg.cholesky(a + scale * 10.0 ** (k - 8.0) * eye), k + 1

    chol, k = lax.while_loop(cond, body, (chol, jnp.int32(0)))
    return chol, k == 0


def _chunked_sum(fn: Callable, rows, chunk: int):
    """``sum_i fn(rows[i])``, vmapped over chunks of rows (zero rows pad the last chunk: fn(0) must be 0)."""
    import jax
    import jax.numpy as jnp

    n = rows.shape[0]
    nb = -(-n // chunk)
    padded = jnp.concatenate([rows, jnp.zeros((nb * chunk - n,) + rows.shape[1:], rows.dtype)])
    blocks = padded.reshape((nb, chunk) + rows.shape[1:])

    def step(acc, blk):
        return acc + jax.vmap(fn)(blk).sum(0), None

    first = jax.eval_shape(fn, rows[0])
    acc, _ = jax.lax.scan(step, jnp.zeros(first.shape, first.dtype), blocks)
    return acc


# ---------------------------------------------------------------- the engine's work

@dataclass
class MarginalFit:
    """The optimum: ``theta*``, ``u*(theta*)``, the objective and its history."""

    mp: MarginalProblem
    theta: np.ndarray
    u: np.ndarray
    chol: np.ndarray
    value: float
    grad: np.ndarray
    loss: np.ndarray
    info: dict
    timings: dict
    evaluate: Callable    # MarginalProblem.evaluate, compiled


def fit_marginal(problem: FitProblem, config: Any, split: SiteSplit, opts: MarginalOptions,
                 engine: str, progress: Progress | None = None) -> MarginalFit:
    """Maximise the Laplace objective over ``theta`` with L-BFGS; call inside ``jax.enable_x64(True)``."""
    import jax
    import jax.numpy as jnp
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    mp = MarginalProblem(problem, split, opts, int(config.seed))

    compiled = jax.jit(mp.evaluate).lower(mp.theta0, mp.u0, mp.dyn).compile()
    compile_s = time.perf_counter() - t0

    state = {"u": mp.u0, "evals": 0, "inner_max": 0, "inner_failed": 0}
    history: list[float] = []

    def fun(x):
        value, grad, u, chol, ok, conv, it = compiled(jnp.asarray(x), state["u"], mp.dyn)
        state["evals"] += 1
        state["inner_max"] = max(state["inner_max"], int(it))
        if not bool(ok) or not bool(conv):
            state["inner_failed"] += 1
            return np.inf, np.full(x.shape, np.nan)
        state["u"] = u
        return -float(value), -np.asarray(grad, np.float64)

    steps = int(config.steps)
    if steps < 1:
        raise HbmError(f"steps must be at least 1, got {steps}", where="inference.steps")

    def callback(intermediate_result):
        history.append(float(intermediate_result.fun))
        if progress is not None and len(history) % 10 == 0:
            progress(len(history), steps, history[-1])

    t1 = time.perf_counter()
    first = fun(np.asarray(mp.theta0))
    if not np.isfinite(first[0]):
        raise HbmError("the Laplace approximation failed at the starting values: the log density of the "
                       "group-level effects has no maximum there (or is not finite)", where="inference.engine",
                       hint="check the priors and the data's scale; use engine: svi or nuts")
    if mp.n_theta:
        res = minimize(fun, np.asarray(mp.theta0), jac=True, method="L-BFGS-B", callback=callback,
                       options={"maxiter": steps, "maxfun": 4 * steps + 20, "ftol": 1e-13, "gtol": 1e-6,
                                "maxcor": 20})
        x = np.asarray(res.x)
        nit, message, success = int(res.nit), str(res.message), bool(res.success)
    else:
        x, nit, message, success = np.asarray(mp.theta0), 0, "nothing outside the group-level effects", True
    # the optimum, evaluated afresh (the optimiser's last call need not be at x)
    value, grad, u, chol, ok, conv, it = compiled(jnp.asarray(x), state["u"], mp.dyn)
    fit_s = time.perf_counter() - t1
    value, grad = float(value), np.asarray(grad, np.float64)
    if progress is not None:
        progress(nit, steps, -value)
    if not bool(ok):
        raise HbmError(
            "the Laplace approximation broke down at the optimum: the log density of the group-level "
            "effects given the other parameters is not curved downward at its maximum, so it cannot be "
            "approximated by a normal distribution", where="inference.engine",
            hint="the group-level effects may be unidentified (check the priors and the grouping); "
                 "use engine: svi or nuts")
    gmax = float(np.max(np.abs(grad))) if grad.size else 0.0
    # scipy's own test passed, or its line search could go no further (the objective's rounding) where
    # the gradient is already small in log-density units; and the inner problem converged
    converged = ((success and gmax <= 1e-2) or gmax <= 1e-3) and bool(conv)
    if not history:
        history = [-value]
    loss = np.asarray(history, np.float64)
    info = {
        "steps": steps, "steps_run": nit, "converged": converged,
        "stop_reason": "converged" if converged else message,
        "optimizer": "L-BFGS-B (scipy), group-level effects integrated out by a Laplace approximation",
        "objective": opts.objective, "jacobian": opts.jacobian, "final_loss": -value,
        "log_marginal": value, "grad_max_abs": gmax, "evaluations": state["evals"],
        "group_effects": "integrated", "integrated_sites": list(split.u), "group_dim": mp.n_u,
        "theta_dim": mp.n_theta, "newton_iterations_max": state["inner_max"],
        "newton_failures": state["inner_failed"],
    }
    timings = {"init_s": compile_s, "compile_s": compile_s, "fit_s": fit_s}
    return MarginalFit(mp, x, np.asarray(u), np.asarray(chol), value, grad, loss, info, timings, compiled)


def point_samples(fit: MarginalFit) -> dict[str, np.ndarray]:
    """Every latent site at ``(theta*, u*)``, constrained: ``(1, 1, *shape)``."""
    import jax.numpy as jnp

    mp = fit.mp
    th, u = jnp.asarray(fit.theta), jnp.asarray(fit.u)
    con = lambda th, u, dyn: mp.constrain(th, u, mp.rebuild(dyn))  # noqa: E731
    out = compile_once(con, th, u, mp.dyn, fast=True)(th, u, mp.dyn)
    return {k: np.asarray(v, np.float32)[None, None] for k, v in out.items()}


def theta_hessian(fit: MarginalFit, h: float = 1e-4) -> np.ndarray:
    """Hessian of the objective at ``theta*``: central differences of its exact gradient, symmetrised."""
    import jax.numpy as jnp

    mp, d = fit.mp, fit.theta.size
    hess = np.zeros((d, d))
    for i in range(d):
        step = h * max(1.0, abs(float(fit.theta[i])))
        grads = []
        for sgn in (1.0, -1.0):
            x = fit.theta.copy()
            x[i] += sgn * step
            _, g, _, _, ok, conv, _ = fit.evaluate(jnp.asarray(x), jnp.asarray(fit.u), mp.dyn)
            if not (bool(ok) and bool(conv)):
                return np.full((d, d), np.nan)
            grads.append(np.asarray(g, np.float64))
        hess[:, i] = (grads[0] - grads[1]) / (2.0 * step)
    return 0.5 * (hess + hess.T)


def laplace_draws(fit: MarginalFit, draws: int, seed: int, conditional: str) -> tuple[dict, dict]:
    """``draws`` samples of every latent site, ``(1, draws, *shape)``, and facts for ``info``."""
    import jax.numpy as jnp

    mp, d, n = fit.mp, fit.theta.size, fit.mp.n_u
    names = _theta_labels(mp)
    cov, neg = None, None
    for h in (1e-4, 1e-3, 1e-5):   # retries: a step too small drowns in rounding, too large in curvature
        if d == 0:
            cov = np.zeros((0, 0))
            break
        neg = -theta_hessian(fit, h)
        if np.all(np.isfinite(neg)):
            vals = np.linalg.eigvalsh(neg)
            if vals[0] > _FLAT * max(vals[-1], 0.0):   # positive definite, and not flat in any direction
                cov = np.linalg.inv(neg)
                cov = 0.5 * (cov + cov.T)
                break
    # flat in a standard deviation's own scale: the eigenvalue test is relative to the largest
    # curvature, which depends on the other coordinates (a whitened population block's is ~ rows)
    loose = [i for i, nm in enumerate(names) if cov is not None and nm.startswith("sd(")
             and np.sqrt(max(cov[i, i], 0.0)) > _FLAT_LOG_SD]
    if loose:
        cov, worst_names = None, [names[i] for i in loose]
    else:
        worst_names = []
    if cov is None:
        worst = " (flat or curved upward along " + ", ".join(worst_names) + ")" if worst_names else ""
        if not worst_names and neg is not None and np.all(np.isfinite(neg)):
            vals, vecs = np.linalg.eigh(neg)
            top = [i for i in np.argsort(-np.abs(vecs[:, 0])) if abs(vecs[i, 0]) > 0.3][:3]
            worst = " (flat or curved upward along " + ", ".join(names[i] for i in top) + ")"
        raise HbmError(
            "the Hessian of the log marginal posterior is not positive definite at its mode" + worst +
            ": the data and priors do not pin these parameters down to a bell-shaped peak, so there is "
            "no normal approximation there", where="inference.engine",
            hint="a group-level sd estimated at (or near) zero, or a correlation at +-1, does this; "
                 "use engine: nuts or svi, or give those parameters an informative prior")
    work = draws * max(n, 1) * mp.data_size
    method = conditional if conditional != "auto" else ("exact" if work <= EXACT_WORK else "linear")
    t_chol = np.linalg.cholesky(cov) if d else np.zeros((0, 0))
    rng = np.random.default_rng(seed)
    eps_t = rng.standard_normal((draws, d))
    thetas = fit.theta[None] + eps_t @ t_chol.T
    eps_u = rng.standard_normal((draws, n))
    if n == 0:
        us = np.zeros((draws, 0))
    else:
        th, u = jnp.asarray(fit.theta), jnp.asarray(fit.u)
        cross_fn = lambda th, u, dyn: mp.cross(th, u, mp.rebuild(dyn))  # noqa: E731
        cross = np.asarray(compile_once(cross_fn, th, u, mp.dyn, fast=True)(th, u, mp.dyn))
        jac = _cho_solve(fit.chol, cross)                     # du*/dtheta at theta*
        start = fit.u[None] + (thetas - fit.theta[None]) @ jac.T
        if method == "linear":
            us = start + _solve_upper(fit.chol.T, eps_u.T).T  # + L^-T eps: covariance A^-1
        else:
            us = _exact_conditional(fit, thetas, eps_u, start)
    con = lambda th, u, dyn: mp.constrain(th, u, mp.rebuild(dyn))  # noqa: E731
    chunk = max(1, min(draws, 2**24 // max(n + d + mp.data_size, 1)))
    out = _in_chunks(con, (thetas, us), mp.dyn, chunk)
    samples = {k: np.asarray(v, np.float32)[None] for k, v in out.items()}
    sd = np.sqrt(np.diag(cov)) if d else np.zeros(0)
    facts = {"conditional": method, "theta_sd_unconstrained": dict(zip(names, sd.round(6).tolist()))}
    return samples, facts


def _exact_conditional(fit: MarginalFit, thetas: np.ndarray, eps_u: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``u | theta ~ N(u*(theta), A(theta)^-1)`` for each draw of ``theta``, Newton from ``start``."""
    from jax.scipy.linalg import solve_triangular

    mp = fit.mp

    def one(th, eps, u0, dyn):
        u, chol, pd, conv, _ = mp.newton(th, u0, mp.rebuild(dyn))
        return u + solve_triangular(chol.T, eps, lower=False), pd & conv

    per = max(1, min(thetas.shape[0], 2**24 // max(mp.n_u * mp.n_u + mp.chunk * mp.data_size, 1)))
    u, ok = _in_chunks(one, (thetas, eps_u, start), mp.dyn, per)
    bad = int(np.sum(~ok))
    if bad:
        raise HbmError(f"the Laplace approximation of the group-level effects broke down at {bad} of "
                       f"{thetas.shape[0]} draws of the other parameters (no downward-curved maximum there)",
                       where="inference.engine", hint="use engine: nuts or svi; "
                       "options: {conditional: linear} avoids re-solving at each draw")
    return u


def _in_chunks(fn: Callable, arrays: tuple, dyn, chunk: int):
    """``vmap(fn)`` over the leading axis of ``arrays`` (``fn(*rows, dyn)``), ``chunk`` rows at a time,
    compiled once (the last chunk padded), results as NumPy."""
    import jax
    import jax.numpy as jnp

    n = arrays[0].shape[0]
    run = jax.vmap(fn, in_axes=(0,) * len(arrays) + (None,))
    first = tuple(jnp.asarray(a[:chunk]) for a in arrays)
    compiled = compile_once(run, *first, dyn, fast=True)
    parts = []
    for s in range(0, n, chunk):
        rows = [np.asarray(a[s:s + chunk]) for a in arrays]
        pad = chunk - rows[0].shape[0]
        if pad:
            rows = [np.concatenate([r, np.repeat(r[-1:], pad, 0)]) for r in rows]
        parts.append(jax.tree.map(lambda x: np.asarray(x)[: chunk - pad], compiled(*map(jnp.asarray, rows), dyn)))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def _cho_solve(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg import cho_solve
    return cho_solve((chol, True), b)


def _solve_upper(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular
    return solve_triangular(a, b, lower=False)


def _theta_labels(mp: MarginalProblem) -> list[str]:
    """A name for each unconstrained coordinate of ``theta``: ``site`` or ``site[i]``."""
    import jax

    # in the flat vector's own order (ravel_pytree sorts a dict's keys), not the sites' order
    tree = jax.eval_shape(lambda: mp._unravel_theta(mp.theta0))
    labels = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = path[0].key if hasattr(path[0], "key") else str(path[0])
        size = int(np.prod(leaf.shape)) if leaf.shape else 1
        labels += [name] if size == 1 else [f"{name}[{i}]" for i in range(size)]
    return labels


def run_marginal(problem: FitProblem, config: Any, split: SiteSplit, opts: MarginalOptions, engine: str,
                 progress: Progress | None = None, draws: int | None = None) -> EngineResult:
    """The ``map`` (``draws=None``) or ``laplace`` result with the group-level effects integrated out."""
    import jax

    check_size(split, opts, engine)
    with jax.enable_x64(True):
        fit = fit_marginal(problem, config, split, opts, engine, progress)
        t = time.perf_counter()
        if draws is None:
            samples, extra = point_samples(fit), {}
        else:
            samples, extra = laplace_draws(fit, int(draws), int(config.seed) + 1, opts.conditional)
        fit.timings["sample_s"] = time.perf_counter() - t
    info = {"engine": engine, "latent_dim": fit.mp.n_u + fit.mp.n_theta, **fit.info, **extra}
    if draws is not None:
        info["draws"] = int(draws)
    return EngineResult(samples=samples, sample_stats={}, loss=fit.loss, info=info, timings=fit.timings)
