"""The AST of non-linear formulas: arithmetic over columns and declared parameters.

    response ~ bottom + (top - bottom) / (1 + exp(hill * (log(dose) - log_ic50)))

Frozen dataclasses that follow the source, each with its ``span`` (excluded
from equality). Parentheses leave no node: ``str()`` prints the fewest
parentheses that keep the tree, so ``parse_nonlinear(str(f)) == f``. Whether a
name is a column or a parameter is decided later (``hbm.nonlinear``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from hbm.frontend.ast import Response, _fmt_num
from hbm.errors import Span
from hbm.vocabulary.functions import EXPRESSION_FUNCTIONS

_NOSPAN = field(default=None, compare=False, repr=False)

FUNCTIONS = EXPRESSION_FUNCTIONS    # hbm/vocabulary/functions.py: OPS entries with expression=True

# Binding strength of each operator, loosest first; atoms and calls bind tightest.
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "^": 4}
ATOM = 5


def format_op(op: str, args: list[tuple[str, int]]) -> tuple[str, int]:
    """Print ``op`` applied to already printed ``(text, precedence)`` arguments, adding the
    parentheses the grammar needs to read the same tree back; returns (text, precedence).

    Shared by the AST and the expression IR (``hbm.nonlinear``), so both print alike.
    """
    def wrap(arg, least):
        text, prec = arg
        return text if prec >= least else f"({text})"

    if op in ("+", "-", "*", "/"):
        p = PRECEDENCE[op]
        # left-associative: the right operand of a - (b - c) or a / (b * c) keeps its parentheses
        return f"{wrap(args[0], p)} {op} {wrap(args[1], p + 1)}", p
    if op == "^":  # right-associative, and the grammar takes an atom as the base
        return f"{wrap(args[0], ATOM)}^{wrap(args[1], PRECEDENCE['neg'])}", PRECEDENCE["^"]
    if op == "neg":
        return f"-{wrap(args[0], PRECEDENCE['neg'])}", PRECEDENCE["neg"]
    return f"{op}({args[0][0]})", ATOM


@dataclass(frozen=True, slots=True)
class Name:
    """A column or a declared parameter."""

    name: str
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Number:
    value: float
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return _fmt_num(self.value)


@dataclass(frozen=True, slots=True)
class Apply:
    """``func(arg)`` with ``func`` one of :data:`FUNCTIONS`."""

    func: str
    arg: "Expr"
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return _show(self)[0]


@dataclass(frozen=True, slots=True)
class Negate:
    arg: "Expr"
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return _show(self)[0]


@dataclass(frozen=True, slots=True)
class Binary:
    """``left op right`` with op one of ``+ - * / ^``."""

    op: str
    left: "Expr"
    right: "Expr"
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return _show(self)[0]


Expr = Union[Name, Number, Apply, Negate, Binary]


@dataclass(frozen=True, slots=True)
class NonlinearFormula:
    lhs: Response
    rhs: Expr
    source: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.lhs} ~ {self.rhs}"


def op_and_args(e: Expr) -> tuple[str, tuple[Expr, ...]]:
    """The operator of a compound node (``+``, ``neg``, ``exp``, ...) and its operands."""
    if isinstance(e, Binary):
        return e.op, (e.left, e.right)
    if isinstance(e, Negate):
        return "neg", (e.arg,)
    if isinstance(e, Apply):
        return e.func, (e.arg,)
    raise TypeError(f"{type(e).__name__} has no operands")


def walk(e: Expr) -> Iterator[Expr]:
    """Every node under ``e``, ``e`` first."""
    yield e
    if not isinstance(e, (Name, Number)):
        for a in op_and_args(e)[1]:
            yield from walk(a)


def _show(e: Expr) -> tuple[str, int]:
    if isinstance(e, (Name, Number)):
        text = str(e)
        return text, ATOM
    op, args = op_and_args(e)
    return format_op(op, [_show(a) for a in args])
