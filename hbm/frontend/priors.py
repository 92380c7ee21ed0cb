"""Prior distributions as written in a spec: ``normal(0, 1)``, ``lkj(2)``, or a number.

:func:`parse_prior` turns spec text into a :class:`Prior` (or a :class:`Fixed` value);
:func:`to_distribution` turns a prior into a NumPyro distribution for a parameter
of a given support. On a positive parameter ``normal``, ``cauchy`` and ``student_t``
mean their half (loc 0) or zero-truncated (other loc) distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from hbm.errors import HbmError, Problem, closest
from hbm.frontend.parse import Fn, parse_call

# family -> parameter names, in argument order
FAMILIES: dict[str, tuple[str, ...]] = {
    "normal": ("mu", "sigma"),
    "student_t": ("nu", "mu", "sigma"),
    "cauchy": ("mu", "sigma"),
    "half_normal": ("sigma",),
    "half_cauchy": ("sigma",),
    "half_student_t": ("nu", "sigma"),
    "exponential": ("rate",),
    "gamma": ("concentration", "rate"),
    "lognormal": ("mu", "sigma"),
    "beta": ("a", "b"),
    "uniform": ("low", "high"),
    "lkj": ("eta",),
}
EXAMPLES = {
    "normal": "normal(0, 1)", "student_t": "student_t(3, 0, 2.5)", "cauchy": "cauchy(0, 1)",
    "half_normal": "half_normal(1)", "half_cauchy": "half_cauchy(1)",
    "half_student_t": "half_student_t(3, 1)", "exponential": "exponential(1)",
    "gamma": "gamma(2, 0.5)", "lognormal": "lognormal(0, 1)", "beta": "beta(2, 2)",
    "uniform": "uniform(0, 1)", "lkj": "lkj(2)",
}
# names users bring from brms, bambi, PyMC and Stan
ALIASES = {
    "gaussian": "normal", "t": "student_t", "student": "student_t", "studentt": "student_t",
    "halfnormal": "half_normal", "halfcauchy": "half_cauchy", "halfstudentt": "half_student_t",
    "half_t": "half_student_t", "halft": "half_student_t", "log_normal": "lognormal",
    "lkj_corr": "lkj", "lkj_corr_cholesky": "lkj", "lkjcholesky": "lkj", "lkjcorr": "lkj",
}
_POSITIVE_ARGS = {"sigma", "nu", "rate", "concentration", "a", "b", "eta"}
_DOMAIN = {  # where each family puts its mass; uniform depends on its bounds
    "normal": "real", "student_t": "real", "cauchy": "real",
    "half_normal": "positive", "half_cauchy": "positive", "half_student_t": "positive",
    "exponential": "positive", "gamma": "positive", "lognormal": "positive",
    "beta": "unit", "lkj": "corr_cholesky",
}
SUPPORTS = ("real", "positive", "unit", "corr_cholesky")
_WORDS = {"real": "real-valued", "positive": "positive",
          "unit": "a probability (between 0 and 1)", "corr_cholesky": "a correlation matrix"}
_FOR = {"real": "real values", "positive": "positive values",
        "unit": "values between 0 and 1", "corr_cholesky": "correlation matrices"}


def _fmt(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


@dataclass(frozen=True, slots=True)
class Prior:
    """A prior family and its positional arguments, e.g. ``Prior("normal", (0.0, 1.0))``."""

    family: str
    args: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.family}({', '.join(_fmt(a) for a in self.args)})"


@dataclass(frozen=True, slots=True)
class Fixed:
    """A number in ``priors:``: the parameter is fixed at this value, not estimated."""

    value: float

    def __str__(self) -> str:
        return _fmt(self.value)


@dataclass(frozen=True, slots=True)
class PerLevel:
    """Priors of a factor's coefficients, one per level (the spec gave some levels their own)."""

    priors: tuple[Prior, ...]
    levels: tuple[str, ...]

    def __str__(self) -> str:
        return ", ".join(f"[{lev}] {p}" for lev, p in zip(self.levels, self.priors))


@dataclass(frozen=True, slots=True)
class OnNatural:
    """A prior on a bounded parameter's own scale, given to its link-scale coefficient: the density of
    ``log(p)`` (``logit(p)``) when ``p`` has ``prior`` (Jacobian included). A cell-means parameter
    (``b: 0 + factor(f)``, ``bounds: {b: positive}``) has one ``p`` per coefficient, so ``b``'s prior
    means what it says on each level's ``b``."""

    prior: Prior
    bound: str           # positive | unit

    def __str__(self) -> str:
        return f"{self.prior} on the parameter's own scale"


# ---------------------------------------------------------------- parsing
def _err(msg: str, where: str, hint: str | None = None) -> HbmError:
    return HbmError(msg, where=where, hint=hint)


def _check_number(v, where: str) -> float:
    if isinstance(v, bool):
        raise _err(f"expected a number or a prior such as normal(0, 1), got {v!r}", where,
                   "true/false is a boolean, not a number")
    v = float(v)
    if not math.isfinite(v):
        raise _err(f"prior values must be finite numbers, got {_fmt(v)}", where)
    return v


def _family(name: str, where: str) -> str:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key in FAMILIES:
        return key
    best = closest(name, list(FAMILIES) + list(ALIASES))
    hint = (f"did you mean '{ALIASES.get(best, best)}'?" if best
            else f"prior families are {', '.join(FAMILIES)}")
    raise _err(f"unknown prior family '{name}'", where, hint)


def parse_prior(value, where: str) -> Prior | Fixed:
    """Parse a YAML scalar (``"normal(0, 1)"``, ``2``, ``"2.5"``) into a Prior or a Fixed value."""
    if value is None:
        raise _err("the prior has no value", where, "write a prior such as normal(0, 1), or a number")
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return Fixed(_check_number(value, where))
    if not isinstance(value, str):
        kind = type(value).__name__.replace("dict", "mapping")
        raise _err(f"a prior must be a number or a call such as normal(0, 1), got a {kind}", where)
    try:
        call = parse_call(value)
    except HbmError as e:
        raise HbmError(problems=[Problem(p.message, p.span, p.source, p.hint, where)
                                 for p in e.problems]) from None
    if isinstance(call, float):
        return Fixed(_check_number(call, where))
    if isinstance(call, str):  # a bare name such as "normal"
        fam = _family(call, where)
        raise _err(f"prior '{call}' needs its arguments", where, f"e.g. {EXAMPLES[fam]}")
    if not isinstance(call, Fn):  # a list or a string literal
        raise _err(f"a prior must be a number or a call such as normal(0, 1), got {value!r}", where)
    fam = _family(call.name, where)
    names = FAMILIES[fam]
    sig = f"{fam}({', '.join(names)})"
    if call.kwargs:
        k = call.kwargs[0][0]
        raise _err(f"prior arguments are positional, got '{k}=' in {value.strip()}", where,
                   f"write {sig}, e.g. {EXAMPLES[fam]}")
    if len(call.args) != len(names):
        n = len(names)
        raise _err(f"{fam}() takes {n} argument{'s' * (n != 1)} ({', '.join(names)}), "
                   f"got {len(call.args)}", where, f"e.g. {EXAMPLES[fam]}")
    args = []
    for pname, a in zip(names, call.args):
        if not isinstance(a, float):
            shown = str(a) if isinstance(a, Fn) else repr(a)
            raise _err(f"{fam}(): {pname} must be a number, got {shown}", where, f"e.g. {EXAMPLES[fam]}")
        a = _check_number(a, where)
        if pname in _POSITIVE_ARGS and a <= 0:
            raise _err(f"{fam}(): {pname} must be positive, got {_fmt(a)}", where, f"e.g. {EXAMPLES[fam]}")
        args.append(a)
    if fam == "uniform" and args[0] >= args[1]:
        raise _err(f"uniform(low, high) needs low < high, got uniform({_fmt(args[0])}, {_fmt(args[1])})",
                   where)
    return Prior(fam, tuple(args))


# ---------------------------------------------------------------- distributions
def domain(prior: Prior) -> str:
    """Where the prior puts its mass: one of SUPPORTS (uniform: the narrowest that holds its bounds)."""
    if prior.family != "uniform":
        return _DOMAIN[prior.family]
    low, high = prior.args
    return "unit" if 0 <= low and high <= 1 else "positive" if low >= 0 else "real"


def _mismatch(prior: Prior, support: str, where: str) -> HbmError:
    who = f"'{where}'" if where else "this parameter"
    dom = domain(prior)
    if support == "corr_cholesky":
        return _err(f"{who} is a correlation matrix: its prior must be lkj(eta), got {prior}", where,
                    "e.g. lkj(2); lkj(1) is uniform over correlation matrices")
    if prior.family == "uniform":
        msg = {"positive": f"prior {prior} allows negative values but {who} is positive",
               "unit": f"prior {prior} allows values outside [0, 1] but {who} is {_WORDS['unit']}"}
        return _err(msg[support], where, "e.g. uniform(0, 1)")
    hint = {"real": "e.g. normal(0, 1)", "positive": "e.g. half_normal(1) or exponential(1)",
            "unit": "e.g. beta(2, 2) or uniform(0, 1)"}[support]
    return _err(f"prior {prior} is for {_FOR[dom]} but {who} is {_WORDS[support]}", where, hint)


def to_distribution(prior: Prior, support: str, dim: int | None = None, *, where: str = ""):
    """A NumPyro distribution for ``prior`` on a parameter of ``support``.

    support: "real" (coefficients), "positive" (standard deviations, sigma, phi, nu),
    "unit" (probabilities) or "corr_cholesky" (Cholesky factor of a ``dim`` x ``dim``
    correlation matrix). Raises HbmError when the prior does not fit the support.
    """
    if isinstance(prior, OnNatural):
        if support != "real":
            raise ValueError(f"an own-scale prior is for a link-scale coefficient, not {support!r}")
        natural = to_distribution(prior.prior, prior.bound, where=where)
        link = dist.transforms.ExpTransform() if prior.bound == "positive" else dist.transforms.SigmoidTransform()
        return dist.TransformedDistribution(natural, link.inv)
    if isinstance(prior, PerLevel):
        return _Stacked(tuple(to_distribution(p, support, dim, where=f"{where}[{lev}]")
                              for p, lev in zip(prior.priors, prior.levels)))
    if not isinstance(prior, Prior):
        raise TypeError(f"to_distribution needs a Prior, got {prior!r} (a fixed value has no distribution)")
    if support not in SUPPORTS:
        raise ValueError(f"unknown support {support!r}; expected one of {SUPPORTS}")
    fam, a = prior.family, tuple(float(x) for x in prior.args)
    dom = domain(prior)
    if support == "corr_cholesky" or fam == "lkj":
        if not (support == "corr_cholesky" and fam == "lkj"):
            raise _mismatch(prior, support, where)
        if dim is None or int(dim) < 2:
            raise ValueError(f"a correlation prior needs dim >= 2, got {dim!r}")
        return dist.LKJCholesky(int(dim), concentration=a[0])
    if support == "positive" and dom == "real" and fam != "uniform":
        return _positive_part(fam, a)
    nested = {"unit": 0, "positive": 1, "real": 2}  # uniform fits any support holding its bounds
    fits = nested[dom] <= nested[support] if fam == "uniform" else dom == support
    if not fits:
        raise _mismatch(prior, support, where)
    return {
        "normal": lambda: dist.Normal(a[0], a[1]),
        "student_t": lambda: dist.StudentT(a[0], a[1], a[2]),
        "cauchy": lambda: dist.Cauchy(a[0], a[1]),
        "half_normal": lambda: dist.HalfNormal(a[0]),
        "half_cauchy": lambda: dist.HalfCauchy(a[0]),
        "half_student_t": lambda: dist.FoldedDistribution(dist.StudentT(a[0], 0.0, a[1])),
        "exponential": lambda: dist.Exponential(a[0]),
        "gamma": lambda: dist.Gamma(a[0], a[1]),
        "lognormal": lambda: dist.LogNormal(a[0], a[1]),
        "beta": lambda: dist.Beta(a[0], a[1]),
        "uniform": lambda: dist.Uniform(a[0], a[1]),
    }[fam]()


class _Stacked(dist.Distribution):
    """Independent scalar distributions side by side: batch shape (k,), element i from ``parts[i]``."""

    pytree_data_fields = ("parts",)

    def __init__(self, parts: tuple, *, validate_args=None):
        self.parts = parts
        super().__init__(batch_shape=(len(parts),), validate_args=validate_args)

    @property
    def support(self):
        return self.parts[0].support

    def sample(self, key, sample_shape=()):
        keys = jax.random.split(key, len(self.parts))
        return jnp.stack([p.sample(k, sample_shape) for p, k in zip(self.parts, keys)], -1)

    def log_prob(self, value):
        return jnp.stack([p.log_prob(value[..., i]) for i, p in enumerate(self.parts)], -1)


def _positive_part(fam: str, a: tuple[float, ...]):
    """normal/cauchy/student_t on a positive parameter: half (loc 0) or truncated at 0."""
    if fam == "normal":
        mu, s = a
        return dist.HalfNormal(s) if mu == 0 else dist.TruncatedNormal(mu, s, low=0.0)
    if fam == "cauchy":
        mu, s = a
        return dist.HalfCauchy(s) if mu == 0 else dist.TruncatedDistribution(dist.Cauchy(mu, s), low=0.0)
    nu, mu, s = a
    if mu == 0:
        return dist.FoldedDistribution(dist.StudentT(nu, 0.0, s))
    return dist.TruncatedDistribution(_StudentT(nu, mu, s), low=0.0)


class _StudentT(dist.StudentT):
    """StudentT whose icdf (used to sample its truncation) needs no tensorflow_probability."""

    def icdf(self, q):
        q = jnp.asarray(q)
        shape = jnp.broadcast_shapes(q.shape, jnp.shape(self.loc), jnp.shape(self.scale), jnp.shape(self.df))
        half = jnp.full(shape, 0.5 * math.pi, dtype=jnp.result_type(float))

        def step(_, bounds):  # bisection on the angle: x = loc + scale * tan(angle)
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = self.cdf(self.loc + self.scale * jnp.tan(mid)) < q
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 40, step, (-half, half))
        return self.loc + self.scale * jnp.tan(0.5 * (lo + hi))


def check_fixed(value: Fixed, support: str, where: str = "") -> None:
    """Raise HbmError if a fixed value lies outside the parameter's support."""
    who = f"'{where}'" if where else "this parameter"
    v = value.value
    if support == "corr_cholesky":
        raise _err(f"{who} is a correlation matrix and cannot be fixed to {value}", where,
                   "give it a prior such as lkj(2)")
    if support == "positive" and v <= 0:
        raise _err(f"{who} is positive and cannot be fixed to {value}", where)
    if support == "unit" and not 0 < v < 1:
        raise _err(f"{who} is {_WORDS['unit']} and cannot be fixed to {value}", where)
