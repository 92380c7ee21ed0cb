"""The data columns a linear IR reads, by role: what ``hbm effects`` and ``hbm contrast`` vary and hold.

    cols = formula_columns(model_ir)     # y ~ log(price) + region + offset(log(e)) + (1 + z | g)
    cols.numeric    # {"price": ("log(price)",), "e": ("log(e)",)}   population terms and offsets
    cols.factors    # {"region": "region"}     categorical predictors (a text column, factor(k))
    cols.group_only # ("z",)                   numeric columns of group-level terms alone
    cols.grouping   # {"g": ("g",)}            grouping column -> the plates it names
    cols.offset_only # ("e",)                  numeric columns of offsets alone
"""
from __future__ import annotations

from dataclasses import dataclass

from hbm.frontend import ast as A
from hbm.ir import model as ir


@dataclass(frozen=True)
class FormulaColumns:
    response: str
    numeric: dict[str, tuple[str, ...]]   # numeric column -> the expressions of it that population terms use
    factors: dict[str, str]               # categorical column of population terms -> its text ("factor(k)")
    group_only: tuple[str, ...]           # numeric columns that only group-level terms use
    grouping: dict[str, tuple[str, ...]]  # grouping column -> the plates it is part of
    extras: dict[str, str]                # trials / se / weights column -> its role
    offset_only: tuple[str, ...] = ()     # numeric columns that only offsets use

    @property
    def predictors(self) -> tuple[str, ...]:
        """The population-level predictors, in formula order: numeric columns and factors."""
        return tuple(dict.fromkeys([*self.numeric, *self.factors]))

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.response, *self.predictors, *self.group_only, *self.grouping,
                                    *self.extras]))


def expr_columns(e) -> list[str]:
    """The column names inside a numeric expression (``log(price)`` -> ``["price"]``)."""
    if isinstance(e, A.Var):
        return [e.name]
    if isinstance(e, A.Call):
        return expr_columns(e.arg)
    if isinstance(e, (A.Paren, A.Neg)):
        return expr_columns(e.body)
    if isinstance(e, A.BinOp):
        return expr_columns(e.left) + expr_columns(e.right)
    return []


def formula_columns(m: ir.ModelIR) -> FormulaColumns:
    """The columns of ``m`` by role (see the module docstring)."""
    numeric: dict[str, list[str]] = {}
    factors: dict[str, str] = {}
    group: list[str] = []

    def numeric_part(part, into: dict | None) -> None:
        for col in expr_columns(part):
            if into is None:
                group.append(col)
            else:
                uses = into.setdefault(col, [])
                if str(part) not in uses:
                    uses.append(str(part))

    for t in m.population:
        for c in t.columns:
            for part in c.parts:
                if isinstance(part, ir.Level):
                    factors.setdefault(part.column, part.term)
                else:
                    numeric_part(part, numeric)
    before = set(numeric)
    for o in m.offsets:
        numeric_part(o, numeric)
    offset_only = [c for c in numeric if c not in before]
    for c in m.chains:
        for part in c.column.parts:
            if not isinstance(part, ir.Level):
                numeric_part(part, numeric if c.top else None)
    for b in m.groups:
        for c in b.columns:
            for part in c.parts:
                if not isinstance(part, ir.Level):
                    numeric_part(part, None)
    grouping: dict[str, list[str]] = {}
    for p in m.plates:
        for col in p.columns:
            grouping.setdefault(col, []).append(p.name)
    r = m.response
    extras = {getattr(r, k): k for k in ("trials", "se", "weights") if getattr(r, k)}
    return FormulaColumns(r.column, {k: tuple(v) for k, v in numeric.items() if k not in factors},
                          factors, tuple(dict.fromkeys(c for c in group if c not in numeric and c not in factors)),
                          {k: tuple(v) for k, v in grouping.items()}, extras,
                          tuple(c for c in offset_only if c not in factors))
