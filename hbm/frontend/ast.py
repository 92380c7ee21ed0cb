"""The formula AST: frozen dataclasses that follow the source text.

Every node keeps its source ``span`` (excluded from equality), so errors can
point at it, and ``str(node)`` prints it back as formula text:
``parse(str(f)) == f`` for every formula the grammar accepts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from hbm.errors import Span

_NOSPAN = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Var:
    name: str
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Num:
    value: float
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return _fmt_num(self.value)


@dataclass(frozen=True, slots=True)
class Call:
    """``func(arg)``: a transform (log, scale, ...), ``factor(x)`` or ``offset(x)``."""

    func: str
    arg: "Expr"
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return f"{self.func}({self.arg})"


@dataclass(frozen=True, slots=True)
class Paren:
    body: "Expr"
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return f"({self.body})"


@dataclass(frozen=True, slots=True)
class BinOp:
    """``left op right`` with op one of ``+ - * :``."""

    op: str
    left: "Expr"
    right: "Expr"
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        if self.op == ":":
            return f"{self.left}:{self.right}"
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True, slots=True)
class Neg:
    """A leading minus: ``-1 + x``."""

    body: "Expr"
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return f"-{self.body}"


@dataclass(frozen=True, slots=True)
class GroupFactor:
    """One grouping factor: a column, or ``a:b`` (the pairs of a and b)."""

    names: tuple[str, ...]
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return ":".join(self.names)


@dataclass(frozen=True, slots=True)
class Group:
    """Grouping factors separated by ``/``: nesting (in a group term) or a chain (bare)."""

    factors: tuple[GroupFactor, ...]
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return "/".join(str(f) for f in self.factors)


@dataclass(frozen=True, slots=True)
class GroupTerm:
    """``(body | group)``, correlated, or ``(body || group)``, uncorrelated."""

    body: "Expr"
    group: Group
    correlated: bool = True
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        bar = "|" if self.correlated else "||"
        return f"({self.body} {bar} {self.group})"


@dataclass(frozen=True, slots=True)
class Chain:
    """Bare ``term | g1/g2/...``: a hierarchical coefficient chain, innermost group first."""

    term: "Expr"
    group: Group
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return f"{self.term} | {self.group}"


Expr = Union[Var, Num, Call, Paren, BinOp, Neg, GroupTerm, Chain]


@dataclass(frozen=True, slots=True)
class Addition:
    """An addition term on the left: ``trials(n)``, ``se(s)``, ``weights(w)``."""

    kind: str
    column: str
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        return f"{self.kind}({self.column})"


@dataclass(frozen=True, slots=True)
class Response:
    """The left side: a column, the link written around it, addition terms."""

    column: str
    link: str | None = None
    additions: tuple[Addition, ...] = ()
    span: Span | None = _NOSPAN

    def __str__(self) -> str:
        s = f"{self.link}({self.column})" if self.link else self.column
        if self.additions:
            s += " | " + " + ".join(str(a) for a in self.additions)
        return s


@dataclass(frozen=True, slots=True)
class Formula:
    lhs: Response
    rhs: Expr
    source: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.lhs} ~ {self.rhs}"


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
