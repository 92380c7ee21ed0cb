"""The functions and operators formulas and expressions may use, one :class:`OpSpec` each, and the
bounds of non-linear parameters, one :class:`BoundSpec` each.

An entry says what an operation computes (NumPy for data, JAX for the model), where a user may call
it (``formula``: a predictor transform in a linear formula, ``expression``: a non-linear formula), the
values its argument must take (``domain``), and the rules the non-linear limits use: the sign of the
result from the signs of the arguments, and, for an operator, its value when one argument is
infinite. Adding a function is one entry in ``OPS``; the grammar, the data table, the expression
evaluators and the limits read it from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Signs are +1, -1 or 0 (either, or unknown).


@dataclass(frozen=True)
class Domain:
    """The values an argument may take: ``outside(x)`` marks the others, ``text`` says what they are
    ("are <= 0"), and ``positive`` says whether positive values are always inside (so simulated data
    for the argument is drawn positive)."""

    outside: Callable[[np.ndarray], np.ndarray]
    text: str
    positive: bool


@dataclass(frozen=True)
class OpSpec:
    """One operator (``+``) or function (``exp``) of formulas and expressions.

    ``np`` / ``jax`` compute it (None for ``factor``/``offset``, which mark a term, not a value);
    ``standardize(x, mean, sd)`` replaces ``np`` for a transform that needs the table's statistics
    (``center``, ``scale``: computed on the fit's data, reused on new data). ``formula`` /
    ``expression``: callable as ``name(x)`` in a linear formula's predictors / in a non-linear
    formula (operators are neither: the grammar writes them). ``sign(*signs)``: the result's sign
    from its arguments' (None: unknown). ``limit(inf, i, s)``: for a binary operator, its value when
    argument ``i`` is the infinity ``inf`` and the other has sign ``s``; a str (``"inf times"``) when
    that value is infinite with the other's sign, which is unknown; None when there is no limit.
    """

    name: str
    arity: int
    np: Callable | None = None
    jax: Callable | None = None
    formula: bool = False
    expression: bool = False
    domain: Domain | None = None
    standardize: Callable | None = None
    sign: Callable[..., int] | None = None
    limit: Callable[[float, int, int], float | str | None] | None = None


def _logit_np(x):
    return np.log(x) - np.log1p(-x)


def _inf_text(inf: float) -> str:
    return "-inf" if inf < 0 else "inf"


def _same(a: int, b: int) -> int:
    return a if a == b else 0


def _times(inf: float, i: int, s: int) -> float | str:
    return inf * s if s else f"{_inf_text(inf)} times"


def _divide(inf: float, i: int, s: int) -> float | str:
    if i == 1:
        return 0.0
    return inf * s if s else f"{_inf_text(inf)} divided by"


def _power(inf: float, i: int, s: int) -> float | None:
    if i == 0 and inf > 0 and s != 0:
        return inf if s > 0 else 0.0
    return None


_POSITIVE = Domain(lambda x: x <= 0, "are <= 0", True)
_NONNEGATIVE = Domain(lambda x: x < 0, "are negative", True)
_ABOVE_MINUS_ONE = Domain(lambda x: x <= -1, "are <= -1", True)
_UNIT = Domain(lambda x: (x <= 0) | (x >= 1), "are outside (0, 1)", False)

# The order is the order error messages list the names in.
OPS: dict[str, OpSpec] = {o.name: o for o in [
    # functions
    OpSpec("log", 1, np.log, jnp.log, formula=True, expression=True, domain=_POSITIVE),
    OpSpec("exp", 1, np.exp, jnp.exp, formula=True, expression=True, sign=lambda s: 1),
    OpSpec("sqrt", 1, np.sqrt, jnp.sqrt, formula=True, expression=True, domain=_NONNEGATIVE,
           sign=lambda s: 1 if s > 0 else 0),
    OpSpec("center", 1, formula=True, standardize=lambda x, mean, sd: x - mean),
    OpSpec("scale", 1, formula=True, standardize=lambda x, mean, sd: (x - mean) / sd),
    OpSpec("factor", 1, formula=True),        # a column's levels: resolve/linear.py
    OpSpec("offset", 1, formula=True),        # a term with coefficient 1: resolve/linear.py
    OpSpec("log1p", 1, np.log1p, jnp.log1p, expression=True, domain=_ABOVE_MINUS_ONE, sign=lambda s: s),
    OpSpec("expm1", 1, np.expm1, jnp.expm1, expression=True, sign=lambda s: s),
    OpSpec("abs", 1, np.abs, jnp.abs, expression=True, sign=lambda s: 1 if s != 0 else 0),
    OpSpec("inv_logit", 1, lambda x: 1.0 / (1.0 + np.exp(-x)), jax.nn.sigmoid, expression=True,
           sign=lambda s: 1),
    OpSpec("logit", 1, _logit_np, jax.scipy.special.logit, expression=True, domain=_UNIT),
    OpSpec("softplus", 1, lambda x: np.logaddexp(0.0, x), jax.nn.softplus, expression=True, sign=lambda s: 1),
    # operators of expressions (the grammar writes them; "neg" is unary minus)
    OpSpec("+", 2, np.add, jnp.add, sign=_same, limit=lambda inf, i, s: inf),
    OpSpec("-", 2, np.subtract, jnp.subtract, sign=lambda a, b: _same(a, -b),
           limit=lambda inf, i, s: inf if i == 0 else -inf),
    OpSpec("*", 2, np.multiply, jnp.multiply, sign=lambda a, b: a * b, limit=_times),
    OpSpec("/", 2, np.divide, jnp.divide, sign=lambda a, b: a * b, limit=_divide),
    OpSpec("^", 2, np.power, jnp.power, sign=lambda a, b: 1 if a > 0 else 0, limit=_power),
    OpSpec("neg", 1, np.negative, jnp.negative, sign=lambda s: -s),
]}

FORMULA_FUNCTIONS: tuple[str, ...] = tuple(n for n, o in OPS.items() if o.formula)
EXPRESSION_FUNCTIONS: tuple[str, ...] = tuple(n for n, o in OPS.items() if o.expression)
NP_OPS: dict[str, Callable] = {n: o.np for n, o in OPS.items() if o.np is not None}
JAX_OPS: dict[str, Callable] = {n: o.jax for n, o in OPS.items() if o.jax is not None}


@dataclass(frozen=True)
class BoundSpec:
    """A bound of a non-linear parameter: the parameter is ``inverse(eta)`` of its linear predictor
    ``eta`` (``jax``/``np`` compute it), and ``eta`` is ``link(parameter)``."""

    name: str
    jax: Callable
    np: Callable | None = None
    inverse: str | None = None    # the function's name in OPS
    link: str | None = None       # the name a linked parameter's predictor takes


BOUND_SPECS: dict[str, BoundSpec] = {b.name: b for b in [
    BoundSpec("real", lambda eta: eta),
    BoundSpec("positive", jnp.exp, np.exp, "exp", "log"),
    BoundSpec("unit", jax.nn.sigmoid, lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)), "inv_logit", "logit"),
]}

BOUNDS: dict[str, Callable] = {n: b.jax for n, b in BOUND_SPECS.items()}
_NP_BOUNDS: dict[str, Callable] = {n: b.np for n, b in BOUND_SPECS.items() if b.np is not None}
_BOUND_TEXT: dict[str, str] = {n: b.inverse for n, b in BOUND_SPECS.items() if b.inverse}
_LINK: dict[str, str] = {n: b.link for n, b in BOUND_SPECS.items() if b.link}

__all__ = ["OpSpec", "Domain", "OPS", "FORMULA_FUNCTIONS", "EXPRESSION_FUNCTIONS", "NP_OPS", "JAX_OPS",
           "BoundSpec", "BOUND_SPECS", "BOUNDS"]
