"""The IR of a non-linear formula: the expression tree, its limits and its parameters."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union
from hbm.frontend import ast as A
from hbm.ir import model as ir
from hbm.frontend import nl_ast as N
from hbm.ir.model import population_columns
from hbm.frontend.priors import Prior, domain
from hbm.vocabulary.functions import _BOUND_TEXT
from hbm.vocabulary.functions import _LINK

# ---------------------------------------------------------------------- the expression IR
@dataclass(frozen=True, slots=True)
class Const:
    value: float

    def __str__(self) -> str:
        return _show(self)[0]


@dataclass(frozen=True, slots=True)
class Param:
    """The per-row value of a non-linear parameter (its bound's transform of its linear predictor)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Column:
    """A data column; appears only inside a :class:`Data` leaf."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Data:
    """A parameter-free part of the expression (``log(dose)``), computed once per row."""

    expr: "Expr"
    sign: int = 0      # +1 / -1 when every finite value is positive / negative, else 0

    @property
    def text(self) -> str:
        return str(self.expr)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Op:
    """``+ - * / ^``, ``neg``, or a function of :data:`hbm.frontend.nl_ast.FUNCTIONS` applied to ``args``."""

    op: str
    args: tuple

    def __str__(self) -> str:
        return _show(self)[0]


Expr = Union[Const, Param, Column, Data, Op]


def _show(e) -> tuple[str, int]:
    if isinstance(e, Op):
        return N.format_op(e.op, [_show(a) for a in e.args])
    if isinstance(e, Const):
        if math.isinf(e.value):
            return ("-inf" if e.value < 0 else "inf"), (N.PRECEDENCE["neg"] if e.value < 0 else N.ATOM)
        return (A._fmt_num(e.value), N.ATOM) if e.value >= 0 else (f"-{A._fmt_num(-e.value)}", N.PRECEDENCE["neg"])
    if isinstance(e, Data):
        return _show(e.expr)
    return str(e), N.ATOM


def evaluate(e: Expr, ops: dict[str, Callable], leaf: Callable):
    """The value of ``e`` with the operator table ``ops``; ``leaf(node)`` gives Param, Column and
    Data values."""
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Op):
        return ops[e.op](*(evaluate(a, ops, leaf) for a in e.args))
    return leaf(e)


def walk(e: Expr):
    """Every node of ``e`` (not inside data leaves), ``e`` first."""
    yield e
    if isinstance(e, Op):
        for a in e.args:
            yield from walk(a)


# ---------------------------------------------------------------------- the model IR
@dataclass(frozen=True, slots=True)
class Limit:
    """Rows where data leaves are infinite, and the expression's limit there."""

    infinite: tuple[tuple[str, float], ...]   # (data leaf, -inf or inf)
    rows: int
    expr: Expr

    @property
    def key(self) -> str:
        return " & ".join(f"{t} = {'-inf' if v < 0 else 'inf'}" for t, v in self.infinite)


@dataclass(frozen=True, slots=True)
class NonlinearParam:
    """A parameter of the expression. Real: its linear predictor, names prefixed ``p``. Bounded with
    formula ``1`` (:attr:`direct`): sampled itself, its prior on it. Bounded otherwise: ``exp`` /
    ``inv_logit`` of its linear predictor, whose names are prefixed ``log(p)`` / ``logit(p)``."""

    name: str
    formula: str           # its linear formula as written
    bound: str             # real | positive | unit
    model: ir.ModelIR      # the resolved formula, names prefixed (linear_name), no family parameters

    @property
    def direct(self) -> bool:
        """A bounded parameter of formula ``1``: one number, sampled on its own scale."""
        return self.bound != "real" and _intercept_only(self.model)

    @property
    def linear_name(self) -> str:
        """The name of its linear predictor: ``p``, or ``log(p)`` / ``logit(p)`` where the bound is a link."""
        return _linear_name(self.name, self.bound, self.model)

    @property
    def per_row(self) -> bool:
        """Whether it varies by row (else one value for every row)."""
        m = self.model
        return bool(population_columns(m) or m.offsets or m.groups or m.chains)


@dataclass(frozen=True, slots=True)
class NonlinearIR:
    formula: str
    response: ir.Response
    family: ir.Family
    expr: Expr
    params: tuple[NonlinearParam, ...]
    limits: tuple[Limit, ...] = ()
    noncentered: bool = True

    @property
    def plates(self) -> tuple[ir.Plate, ...]:
        seen: dict[str, ir.Plate] = {}
        for p in self.params:
            for pl in p.model.plates:
                seen.setdefault(pl.name, pl)
        return tuple(seen.values())

    @property
    def population(self) -> tuple[ir.PopulationTerm, ...]:
        return tuple(t for p in self.params for t in p.model.population)

    def plate(self, name: str) -> ir.Plate:
        return next(p for p in self.plates if p.name == name)

    @property
    def leaves(self) -> tuple[Data, ...]:
        out: dict[str, Data] = {}
        for e in walk(self.expr):
            if isinstance(e, Data):
                out.setdefault(e.text, e)
        return tuple(out.values())

    def parameter_names(self) -> tuple[str, ...]:
        """Every name a prior can be set for, in model order."""
        names = [n for p in self.params for n in p.model.parameter_names()]
        return tuple(names + [fp.name for fp in self.family.params])

    def pretty(self) -> str:
        """A readable listing: what ``hbm check`` prints."""
        r = self.response
        out = [f"formula   {self.formula}",
               f"response  {r.column}" + "".join(f"  {k}={v}" for k, v in (
                   ("trials", r.trials), ("se", r.se), ("weights", r.weights)) if v),
               f"family    {self.family.name} (link: {self.family.link})"
               + ("  [inferred from the data]" if self.family.inferred else ""),
               f"effects   {'non-centred' if self.noncentered else 'centred'}",
               f"expression  (the {self.family.link} link of the mean of {r.column}; as computed)"]
        params = {p.name: p for p in self.params}
        limited = {t: (v, lim.rows) for lim in self.limits for t, v in lim.infinite}

        def note(e) -> str:
            if isinstance(e, Param):
                p = params[e.name]
                return "parameter" + ("" if p.bound == "real" else f", {p.bound}" if p.direct
                                      else f", {p.bound}: {_BOUND_TEXT[p.bound]} of its linear predictor")
            if isinstance(e, Data):
                inf = limited.get(e.text)
                return "data" + (f", {'-inf' if inf[0] < 0 else 'inf'} in some rows (limits below)" if inf else "")
            return ""
        out += ["  " + line for line in _tree(self.expr, note)]
        for lim in self.limits:
            out.append(f"limit     where {lim.key} ({lim.rows:,} rows): {lim.expr}")
        for p in self.params:
            centred = "   [centred: data-rich levels]" if self.noncentered and not p.model.noncentered else ""
            out.append(f"parameter {p.name} ~ {p.formula}{_scale_note(p)}{centred}")
            out += ["  " + line for line in p.model.pretty(header=False).splitlines()]
            shown = [f"{nat} = {_BOUND_TEXT[p.bound]}({link})" for nat, link in _natural_names(p)]
            if shown:
                out.append(f"  reported on {p.name}'s scale too: " + "; ".join(shown))
        if self.family.params:
            out.append("family parameters")
            for fp in self.family.params:
                out.append(f"  {fp.name:<32} {ir._dist(fp.prior)}")
        return "\n".join(out)


def _scale_note(p: NonlinearParam) -> str:
    """Which scale a parameter's priors are on, for ``hbm check``."""
    if p.bound == "real":
        return ""
    if not p.direct and _cell_means(p.model):
        return (f"   [{p.bound}: one {p.name} per level, {p.name} = {_BOUND_TEXT[p.bound]}({p.linear_name}); a prior "
                f"keyed '{p.name}' is on each {p.name} itself, one keyed '{p.linear_name}...' on the "
                f"{_LINK[p.bound]} scale]")
    if not p.direct:
        return (f"   [{p.bound}: {p.name} = {_BOUND_TEXT[p.bound]}(its linear predictor); coefficients and "
                f"their priors on the {_LINK[p.bound]} scale, named {p.linear_name}...]")
    prior = p.model.population[0].prior
    note = f"   [{p.bound}: the prior is on {p.name} itself"
    if isinstance(prior, Prior) and p.bound == "positive" and domain(prior) == "real" and prior.family != "uniform":
        note += f": {prior} means {_positive_text(prior)}"
    return note + "]"


def _positive_text(prior: Prior) -> str:
    """What a real-line prior means on a positive parameter (hbm.frontend.priors.to_distribution)."""
    a = prior.args
    loc = a[1] if prior.family == "student_t" else a[0]
    if loc != 0:
        return f"{prior} truncated to (0, inf)"
    if prior.family == "student_t":
        return str(Prior("half_student_t", (a[0], a[2])))
    return str(Prior(f"half_{prior.family}", (a[1],)))


def _intercept_only(m: ir.ModelIR) -> bool:
    return (len(m.population) == 1 and len(m.population[0].columns) == 1
            and m.population[0].columns[0].is_intercept and not (m.groups or m.chains or m.offsets))


def _cell_means(m: ir.ModelIR) -> bool:
    """A formula of one coefficient per level (``0 + factor(f)``): each row's linear predictor is one
    coefficient, so a bounded parameter is one value per level."""
    return (len(m.population) == 1 and bool(m.population[0].levels)
            and not any(c.is_intercept for c in m.population[0].columns)
            and not (m.groups or m.chains or m.offsets))


def _linear_name(name: str, bound: str, m: ir.ModelIR) -> str:
    return name if bound == "real" or _intercept_only(m) else f"{_LINK[bound]}({name})"


def _tree(e: Expr, note: Callable) -> list[str]:
    """The expression as an indented tree, one node per line, with a note on leaves."""
    lines: list[str] = []

    def rec(e, lead: str, child: str):
        label = e.op if isinstance(e, Op) else str(e)
        text = lead + label
        n = note(e)
        lines.append(f"{text:<40} {n}".rstrip() if n else text)
        if isinstance(e, Op):
            for i, a in enumerate(e.args):
                last = i == len(e.args) - 1
                rec(a, child + ("`-- " if last else "|-- "), child + ("    " if last else "|   "))
    rec(e, "", "")
    return lines


def _natural_names(p: NonlinearParam) -> list[tuple[str, str]]:
    """(name on p's scale, link-scale name) of what :func:`_natural` reports, for ``hbm check``."""
    if p.linear_name == p.name:
        return []
    lp, m = p.linear_name, p.model
    out = []
    if any(c.is_intercept for t in m.population for c in t.columns):
        out.append((p.name, lp))
    factor = _first_factor(m)
    if factor:
        out.append((f"{p.name}{factor[len(lp):]}[level]", f"{factor}[level]"))
    plates = [pl for c in m.chains if c.term == lp for pl in c.plates]
    plates += [b.plate for b in m.groups if any(c.name == lp for c in b.columns)]
    out += [(f"{p.name}[{pl}=level]", f"{lp}[{pl}=level]") for pl in dict.fromkeys(plates)]
    return out


def _first_factor(m: ir.ModelIR) -> str | None:
    """In a formula without intercept, its first factor's term (fully coded: each level's value)."""
    if any(c.is_intercept for t in m.population for c in t.columns):
        return None
    return next((t.name for t in m.population if t.is_vector
                 and all(len(c.parts) == 1 and isinstance(c.parts[0], ir.Level) for c in t.columns)), None)

