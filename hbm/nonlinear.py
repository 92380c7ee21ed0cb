"""Non-linear formulas: an expression over columns and parameters, each parameter a linear model.

    formula: response ~ bottom + (top - bottom) / (1 + exp(hill * (log(dose) - log_ic50)))
    params:  {bottom: 1 + (1 | plate), top: 1 + (1 | plate), log_ic50: 1 | compound/target, hill: 1}
    bounds:  {hill: positive}

The stages are the linear ones, reused rather than copied:

* resolve (:func:`resolve_nonlinear`): every name on the right side is a parameter
  declared under ``params:`` or a column. Each parameter's formula is resolved by
  :func:`hbm.resolve.resolve` as the linear formula ``p ~ <its formula>``, then its
  names are prefixed (SPEC section 2): ``Intercept`` -> ``p``, ``x`` -> ``p:x``,
  ``sd(1 | g)`` -> ``sd(p | g)``, group values ``p[g=level]`` (``log(p)``, ``log(p):x``,
  ... where a bound is a link, below). These names are the model's site names too. The
  response, family and link come from resolving ``<left side> ~ 1``. The expression becomes an :data:`Expr` tree in which every
  parameter-free part (``log(dose)``) is one data leaf, computed once.
* limits: a data leaf may be infinite (``log(dose)`` where dose = 0: the controls of an
  assay). For each pattern of infinite leaves the compiler derives the expression's
  limit symbolically (``exp(hill * (-inf - log_ic50))`` -> 0 when hill > 0, so the 4PL's
  controls read ``bottom + (top - bottom)``, the top asymptote) and fails with a clear
  error where there is none. At run time the data leaves hold finite stand-ins on those
  rows and one ``jnp.where`` picks the limit: values and gradients stay finite (the
  "double where"), with no per-step cost beyond one select per pattern.
* encode (:func:`encode_nonlinear`): each parameter's arrays by :func:`hbm.encode.encode`,
  the data leaves, one row mask per limit.
* lower (:func:`make_nonlinear_model`): each parameter's linear predictor by
  :func:`hbm.lower.make_model` (``mode="eta"``), its bound's transform, the expression,
  the family's log density.

Bounds. A bounded parameter of formula ``1`` (``hill: 1``, ``bounds: {hill: positive}``) is
sampled itself, on its own scale, and its prior is on it (a normal prior on a positive parameter
is its half-normal; default ``lognormal(0, 2.5)``, or ``beta(1, 1)`` for ``unit``). A bounded
parameter with a richer formula is ``exp`` (``inv_logit``) of its linear predictor; as in brms,
whose non-linear parameters' priors are on their linear predictors' coefficients, the coefficients
and their priors are on the log (logit) scale, and their names say so: ``log(p)``, ``log(p):x``,
``sd(log(p) | g)``, ``log(p)[g=level]``. The outputs add ``p`` = exp(``log(p)``) and the groups'
``p[g=level]`` on p's own scale (:func:`_natural`).

Priors (:func:`_route_priors`): by the names above; a parameter's linear-predictor name that is
no coefficient's (``b`` for ``b: 0 + factor(f)``) applies to each of its population coefficients,
as brms's ``nlpar`` priors do, and a level's key (``b:factor(f)[u]``) overrides it. A bounded
cell-means parameter (``b: 0 + factor(f)``, ``bounds: {b: positive}``) is one ``b`` per level, so a
prior keyed ``b`` is on each level's ``b`` itself (:class:`hbm.priors.OnNatural`, Jacobian included),
as for ``b: 1``; ``log(b)`` keys the log-scale coefficients.

Default priors: a real parameter's are scaled like a linear model's on the response
(intercept ``student_t(3, 0, 2.5 sd(y))``, group sds ``half_normal(2.5 sd(y))``); a linked
parameter's as on a unit scale (``student_t(3, 0, 2.5)``). A parameter on another scale
(``log_ic50`` lives on the log-dose scale) deserves a prior of its own.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from . import ast as A
from . import ir
from . import nl_ast as N
from .encode import Encoding, encode, population_columns
from .errors import HbmError, Problem, ProblemList, closest, did_you_mean
from .families import FAMILIES
from .lower import make_model, sample_param
from .priors import Fixed, OnNatural, PerLevel, Prior, check_fixed, domain, to_distribution
from .parse import parse_formula, parse_nonlinear
from .resolve import _LinkScale, apply_priors, resolve
from .table import TableInfo

BOUNDS: dict[str, Callable] = {"real": lambda eta: eta, "positive": jnp.exp, "unit": jax.nn.sigmoid}
# A parameter whose formula is chains only is drawn centred when its innermost levels hold at least
# this many rows on average (see centring()).
CENTRE_ROWS = 50
_BOUND_TEXT = {"positive": "exp", "unit": "inv_logit"}
_LINK = {"positive": "log", "unit": "logit"}            # the name a linked parameter's predictor takes
_NP_BOUNDS = {"positive": np.exp, "unit": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x))}
# a bounded parameter of formula `1` is sampled itself; its default prior, on its own scale
DIRECT_PRIORS = {"positive": Prior("lognormal", (0.0, 2.5)), "unit": Prior("beta", (1.0, 1.0))}


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
    """``+ - * / ^``, ``neg``, or a function of :data:`hbm.nl_ast.FUNCTIONS` applied to ``args``."""

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


def _logit_np(x):
    return np.log(x) - np.log1p(-x)


NP_OPS: dict[str, Callable] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power, "neg": np.negative,
    "exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1, "sqrt": np.sqrt, "abs": np.abs,
    "inv_logit": lambda x: 1.0 / (1.0 + np.exp(-x)), "logit": _logit_np,
    "softplus": lambda x: np.logaddexp(0.0, x),
}
JAX_OPS: dict[str, Callable] = {
    "+": jnp.add, "-": jnp.subtract, "*": jnp.multiply, "/": jnp.divide, "^": jnp.power,
    "neg": jnp.negative, "exp": jnp.exp, "log": jnp.log, "log1p": jnp.log1p, "expm1": jnp.expm1,
    "sqrt": jnp.sqrt, "abs": jnp.abs, "inv_logit": jax.nn.sigmoid, "logit": jax.scipy.special.logit,
    "softplus": jax.nn.softplus,
}


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
    """What a real-line prior means on a positive parameter (hbm.priors.to_distribution)."""
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


# ---------------------------------------------------------------------- resolve
def resolve_nonlinear(formula: N.NonlinearFormula, info: TableInfo, *, params: tuple[tuple[str, str], ...],
                      bounds: tuple[tuple[str, str], ...] = (), family: str | None = None,
                      priors: tuple = (), noncentered: bool = True) -> NonlinearIR:
    """The IR of a non-linear ``formula`` with ``params`` (name -> linear formula) on ``info``'s table."""
    src = formula.source or str(formula)
    declared = dict(params)
    bound = {k: "real" for k in declared} | dict(bounds)
    problems = ProblemList()
    columns = set(info.columns)
    response = formula.lhs.column

    # names: each a declared parameter or a column; every parameter used
    used: set[str] = set()
    for node in N.walk(formula.rhs):
        if not isinstance(node, N.Name):
            continue
        name = node.name
        if name in declared:
            used.add(name)
            if name in columns:
                problems.add(f"'{name}' is both a column and a parameter declared under params:",
                             span=node.span, source=src, where="formula",
                             hint="rename the parameter, or remove it from params: to use the column")
        elif name == response:
            problems.add(f"the response '{name}' cannot appear on the right side", span=node.span,
                         source=src, where="formula")
        elif name not in columns:
            best = closest(name, list(declared) + sorted(columns))
            problems.add(f"'{name}' is neither a column nor a parameter declared under params:",
                         span=node.span, source=src, where="formula",
                         hint=(f"did you mean '{best}'? " if best else "")
                         + f"parameters: {', '.join(declared)}; declare '{name}' under params: with its "
                           "formula (e.g. '1') if it is a parameter")
    for name in declared:
        if name not in used:
            problems.add(f"parameter '{name}' is declared under params: but the formula does not use it",
                         span=formula.rhs.span, source=src, where=f"params: {name}",
                         hint=did_you_mean(name, [n.name for n in N.walk(formula.rhs) if isinstance(n, N.Name)])
                         or "use it in the formula, or remove it")
    problems.raise_if_any()

    # response, family and link, as a linear model '<left side> ~ 1' would have them
    head = resolve(A.Formula(formula.lhs, A.Num(1.0), source=src), info, family=family, noncentered=noncentered)
    fam_names = [fp.name for fp in head.family.params]
    for n in declared:
        if n in ("sigma", "nu", "phi", "Intercept"):
            problems.add(f"the parameter name '{n}' is taken by the model's own parameters",
                         where=f"params: {n}", hint="choose another name")
    problems.raise_if_any()

    # each parameter's linear formula, resolved by the linear resolver, names prefixed
    y = info.numeric(A.Var(response))
    scale = _LinkScale(head.family.link, head.family.name, y).s
    subs: list[NonlinearParam] = []
    for name, text in params:
        sub_src = f"{name} ~ {text}"
        try:
            m = resolve(parse_formula(sub_src), parameter_table(info, name, sub_src, bound[name], scale),
                        family="normal", noncentered=noncentered)
        except HbmError as e:
            problems.extend(_where(e, f"params: {name}"))
            continue
        m = _prefixed(m, _linear_name(name, bound[name], m))
        if bound[name] != "real" and _intercept_only(m):
            m = replace(m, population=(replace(m.population[0], prior=DIRECT_PRIORS[bound[name]]),))
        subs.append(NonlinearParam(name, text, bound[name], centring(m, info.n)))
    problems.raise_if_any()

    subs, fam_priors = _route_priors(subs, fam_names, priors)
    head = apply_priors(head, fam_priors)

    expr, leaves = _Expressions(formula, info, src, bound).build()
    expr = stable(expr)
    limits = _limits(expr, leaves, bound, formula, src)
    return NonlinearIR(str(formula), head.response, head.family, expr, tuple(subs), limits, noncentered)


def _route_priors(subs: list[NonlinearParam], fam_names: list[str], priors: tuple):
    """Each prior of the spec to its parameter (names match ignoring spaces): (the parameters with
    their priors applied, the family's priors).

    Keys: a parameter's own names (``p``, ``p:x``, ``sd(p | g)``; ``log(p)``... for a linked one); a
    factor's level (``p:factor(f)[u]``); a parameter's linear-predictor name that names no coefficient
    (``p`` for ``p: 0 + factor(f)``), which applies to each of its population coefficients, as brms's
    ``nlpar`` priors do. A more specific key wins. A linked parameter's own name is refused: its
    coefficients are on the link scale, and their names say so."""
    problems = ProblemList()
    exact: dict[str, tuple[int | None, str]] = {_norm(n): (None, n) for n in fam_names}
    levels: dict[str, tuple[int, str, str]] = {}
    umbrella: dict[str, int] = {}
    natural: dict[str, int] = {}
    for i, p in enumerate(subs):
        exact.update({_norm(n): (i, n) for n in p.model.parameter_names()})
        levels.update({_norm(f"{t.name}[{lev}]"): (i, t.name, lev) for t in p.model.population for lev in t.levels})
    for i, p in enumerate(subs):
        if _norm(p.linear_name) not in exact:
            umbrella[_norm(p.linear_name)] = i
        if p.linear_name != p.name:
            natural[_norm(p.name)] = i
    known = list(dict.fromkeys([n for p in subs for n in p.model.parameter_names()]
                               + [subs[i].linear_name for i in umbrella.values()] + fam_names))
    own: list[dict] = [{} for _ in subs]          # parameter -> name -> (key, prior)
    family: dict[str, object] = {}
    wide: list[tuple | None] = [None] * len(subs)  # parameter -> (key, prior) for each coefficient
    by_level: list[dict] = [{} for _ in subs]     # parameter -> term -> level -> (key, prior)
    for key, prior in priors:
        k = _norm(key)
        if k in exact:
            i, name = exact[k]
            if i is None:
                family[name] = prior
            else:
                own[i][name] = (key, prior)
        elif k in levels:
            i, term, lev = levels[k]
            if isinstance(prior, Fixed):
                problems.add(f"a single level of '{term}' cannot be fixed ('{key}')", where=f"priors: {key}",
                             hint=f"give it a prior, or fix every level with '{term}: {prior}'")
            by_level[i].setdefault(term, {})[lev] = (key, prior)
        elif k in umbrella:
            wide[umbrella[k]] = (key, prior)
        elif k in natural and _cell_means(subs[natural[k]].model) and isinstance(prior, Prior):
            p = subs[natural[k]]    # one p per coefficient: the prior is on each level's p itself
            to_distribution(prior, p.bound, where=f"priors: {key}")
            wide[natural[k]] = (key, OnNatural(prior, p.bound))
        elif k in natural:
            p = subs[natural[k]]
            names = p.model.parameter_names()
            problems.add(f"prior for '{key}': {p.name} = {_BOUND_TEXT[p.bound]}(its linear predictor), so its "
                         f"coefficients and their priors are on the {_LINK[p.bound]} scale",
                         where=f"priors: {key}",
                         hint="give them as " + ", ".join(names)
                         + (f" ('{p.linear_name}' applies to each coefficient)"
                            if _norm(p.linear_name) in umbrella else ""))
        else:
            best = closest(key, known + [f"{t}[{lv}]" for _, t, lv in levels.values()])
            problems.add(f"prior for '{key}', which is not a parameter of this model", where=f"priors: {key}",
                         hint=(f"did you mean '{best}'? " if best else "") + "parameters: " + ", ".join(known))
    problems.raise_if_any()

    out = []
    for i, p in enumerate(subs):
        given = {name: pr for name, (_, pr) in own[i].items()}
        for t in p.model.population:
            base = own[i][t.name][1] if t.name in own[i] else wide[i][1] if wide[i] else None
            lev = by_level[i].get(t.name)
            if lev:
                base = t.prior if base is None else base
                if isinstance(base, Fixed):
                    problems.add(f"'{t.name}' is fixed to {base}, so its levels cannot have priors",
                                 where=f"priors: {next(iter(lev.values()))[0]}",
                                 hint=f"give '{t.name}' a prior instead of a number")
                    continue
                parts = tuple(lev[lv][1] if lv in lev else base for lv in t.levels)
                base = parts[0] if len(set(parts)) == 1 else PerLevel(parts, t.levels)
            if base is not None:
                given[t.name] = base
        if p.direct:
            t = p.model.population[0]
            prior = given.pop(t.name, t.prior)
            if isinstance(prior, Fixed):
                check_fixed(prior, p.bound, where=f"priors: {t.name}")
            else:
                to_distribution(prior, p.bound, where=f"priors: {t.name}")
            model = replace(p.model, population=(replace(t, prior=prior),))
        else:
            model = apply_priors(p.model, tuple(given.items()))
        out.append(replace(p, model=model))
    problems.raise_if_any()
    return out, tuple(family.items())


def centring(m: ir.ModelIR, n_rows: int) -> ir.ModelIR:
    """Draw a parameter's chains centred when the data pin each innermost level (``CENTRE_ROWS`` rows
    or more per level on average) and the formula has no group terms.

    Non-centred chains (``value = parent + sd * z``) suit levels the data say little about; for
    data-rich levels (a compound's ~130 rows pin its log IC50 to +-0.05) the posterior is a ridge
    along which a variational guide shrinks the upper levels: measured on the 4PL demo
    (specs/dose_response.yaml), 90% intervals of the 60 targets' log IC50s covered 2% of the true
    values non-centred (mean-field guide; 15% with the structured guide) and 88% centred, the
    compounds' 87% either way. Group terms keep the non-centred form: their values are deviations
    from the population value, and drawn centred they leave the same ridge between the two."""
    if not m.noncentered or m.groups or not m.chains:
        return m
    if min(n_rows / m.plate(c.plates[0]).size for c in m.chains) < CENTRE_ROWS:
        return m
    return replace(m, noncentered=False)


def _norm(name: str) -> str:
    return name.replace(" ", "")


def _where(err: HbmError, where: str) -> HbmError:
    return HbmError(problems=[Problem(p.message, p.span, p.source, p.hint, where) for p in err.problems])


def parameter_table(info: TableInfo, name: str, source: str, bound: str, scale: float) -> TableInfo:
    """The table as a parameter's formula ``name ~ ...`` sees it: a stand-in response named after
    the parameter, with mean 0 and the scale its default priors take (the response's sd for a real
    parameter, 1 for a bounded one)."""
    s = scale if bound == "real" else 1.0
    v = np.resize(np.array([s, -s]), info.n)
    if info.n % 2 and info.n >= 3:
        v[-3:] = (s * 1.5 ** 0.5, -s * 1.5 ** 0.5, 0.0)
    return info.view(source, {name: v})


def _prefixed(m: ir.ModelIR, p: str) -> ir.ModelIR:
    """A parameter's resolved formula with SPEC names: ``Intercept`` -> p, a term t -> p:t; the
    sd, cor, site and output names follow. The stand-in response's family parameters go."""
    def name(n: str) -> str:
        return p if n == "Intercept" else f"{p}:{n}"

    def col(c: ir.DesignColumn) -> ir.DesignColumn:
        return ir.DesignColumn(name(c.name), c.parts)

    return replace(
        m, formula=f"{p} ~ {m.formula.split('~', 1)[1].strip()}",
        family=ir.Family(m.family.name, m.family.link),
        population=tuple(replace(t, name=name(t.name), columns=tuple(map(col, t.columns))) for t in m.population),
        groups=tuple(replace(b, columns=tuple(map(col, b.columns))) for b in m.groups),
        chains=tuple(replace(c, term=name(c.term), column=col(c.column), top=c.top and name(c.top))
                     for c in m.chains))


class _Expressions:
    """The AST of the right side -> the expression IR, parameter-free parts computed into data leaves."""

    def __init__(self, formula: N.NonlinearFormula, info: TableInfo, src: str, bound: dict):
        self.f, self.info, self.src, self.params = formula, info, src, bound
        self.leaves: dict[str, np.ndarray] = {}

    def build(self) -> tuple[Expr, dict[str, np.ndarray]]:
        node, value = self.visit(self.f.rhs)
        if value is not None:  # cannot happen: a parameter is used (checked before)
            raise HbmError("the expression uses no parameter", where="formula")
        return node, self.leaves

    def visit(self, e: N.Expr):
        """(node, value): value is the per-row array (or float) of a parameter-free node, else None."""
        if isinstance(e, N.Number):
            return Const(e.value), e.value
        if isinstance(e, N.Name):
            if e.name in self.params:
                return Param(e.name), None
            return Column(e.name), self.info.numeric(A.Var(e.name, span=e.span))
        op, args = N.op_and_args(e)
        done = [self.visit(a) for a in args]
        if any(v is None for _, v in done):
            return Op(op, tuple(self.leaf(n, v) for n, v in done)), None
        values = [np.asarray(v, np.float64) for _, v in done]   # a number and a column broadcast
        with np.errstate(all="ignore"):
            value = NP_OPS[op](*values)
        nan = np.isnan(value) & ~functools.reduce(np.logical_or, [np.isnan(v) for v in values])
        if np.any(nan):
            count = int(np.count_nonzero(nan))
            where = f" in {count:,} row{'s' * (count != 1)}" if np.ndim(nan) else ""
            domain = op not in ("+", "-", "*", "/", "^", "neg")
            raise HbmError(f"'{e}' is undefined (not a number){where}",
                           span=e.span, source=self.src, where="formula",
                           hint=(f"the argument of {op}() is outside its domain" if domain else "")
                           + ("; filter those rows" if domain and where else "filter those rows" if where
                              else "" if domain else "rewrite it"))
        return Op(op, tuple(n for n, _ in done)), value[()] if np.ndim(value) == 0 else value

    def leaf(self, node, value):
        if value is None:
            return node
        if np.ndim(value) == 0:
            return Const(float(value))
        finite = value[np.isfinite(value)]
        sign = 1 if finite.size and (finite > 0).all() else -1 if finite.size and (finite < 0).all() else 0
        d = Data(node, sign)
        self.leaves[d.text] = np.asarray(value, np.float64)
        return d


# ---------------------------------------------------------------------- stable forms
def stable(e: Expr) -> Expr:
    """``e`` rewritten into forms that neither overflow nor lose their gradient:
    ``x / (1 + exp(z))`` -> ``x * inv_logit(-z)``, ``log(1 + exp(z))`` -> ``softplus(z)``
    (the 4PL's ``(top - bottom) / (1 + exp(...))`` would otherwise give NaN gradients once
    ``exp`` overflows), ``--x`` -> ``x``."""
    if not isinstance(e, Op):
        return e
    e = Op(e.op, tuple(stable(a) for a in e.args))
    z = _one_plus_exp(e.args[-1])
    if e.op == "/" and z is not None:
        return _identity(Op("*", (e.args[0], Op("inv_logit", (_negate(z),)))))
    if e.op == "log" and z is not None:
        return Op("softplus", (z,))
    if e.op == "neg":
        return _negate(e.args[0])
    return e


def _one_plus_exp(e: Expr) -> Expr | None:
    """z when ``e`` is ``1 + exp(z)`` or ``exp(z) + 1``."""
    if isinstance(e, Op) and e.op == "+":
        for one, other in (e.args, e.args[::-1]):
            if one == Const(1.0) and isinstance(other, Op) and other.op == "exp":
                return other.args[0]
    return None


def _negate(e: Expr) -> Expr:
    if isinstance(e, Op) and e.op == "neg":
        return e.args[0]
    if isinstance(e, Const):
        return Const(-e.value)
    return Op("neg", (e,))


# ---------------------------------------------------------------------- limits
class _Undefined(Exception):
    def __init__(self, node, why: str):
        super().__init__(why)
        self.node, self.why = node, why


def _limits(expr: Expr, leaves: dict[str, np.ndarray], bound: dict, formula, src) -> tuple[Limit, ...]:
    inf = {t: v for t, v in leaves.items() if not np.isfinite(v).all()}
    if not inf:
        return ()
    names = list(inf)
    state = np.stack([np.where(np.isfinite(inf[t]), 0, np.sign(inf[t])) for t in names], 1).astype(np.int8)
    patterns, counts = np.unique(state[(state != 0).any(1)], axis=0, return_counts=True)
    out = []
    for pat, count in zip(patterns, counts):
        where = tuple((t, float(s) * math.inf) for t, s in zip(names, pat) if s)
        try:
            limit = _limit(expr, dict(where), bound)
        except _Undefined as u:
            key = " & ".join(f"{t} = {'-inf' if v < 0 else 'inf'}" for t, v in where)
            node = next((n for n in N.walk(formula.rhs) if str(n) == str(u.node)), None)
            raise HbmError(f"where {key} ({int(count):,} rows) the formula has no limit: {u.why}",
                           span=getattr(node, "span", None), source=src, where="formula",
                           hint="bound the parameter it depends on (e.g. bounds: {p: positive}), "
                                "or drop those rows") from None
        if any(isinstance(n, Const) and not math.isfinite(n.value) for n in walk(limit)):
            raise HbmError(f"where {where[0][0]} is infinite ({int(count):,} rows) the formula is infinite",
                           where="formula", hint="drop those rows or rewrite the formula")
        out.append(Limit(where, int(count), limit))
    return tuple(out)


def _limit(e: Expr, inf: dict[str, float], bound: dict) -> Expr:
    """``e`` with the leaves in ``inf`` set to their infinities, simplified until none is left."""
    if isinstance(e, Data):
        return Const(inf[e.text]) if e.text in inf else e
    if not isinstance(e, Op):
        return e
    args = tuple(_limit(a, inf, bound) for a in e.args)
    if all(isinstance(a, Const) for a in args):
        with np.errstate(all="ignore"):
            v = float(NP_OPS[e.op](*(a.value for a in args)))
        if math.isnan(v):
            raise _Undefined(e, f"'{e}' is {_show(Op(e.op, args))[0]}")
        return Const(v)
    infinite = [i for i, a in enumerate(args) if isinstance(a, Const) and math.isinf(a.value)]
    if infinite:
        return _mixed(e, args, infinite[0], bound)
    return _identity(Op(e.op, args))


def _mixed(e: Op, args: tuple, i: int, bound: dict) -> Expr:
    """A binary operation of an infinite constant (argument ``i``) and a finite expression."""
    inf, other = args[i].value, args[1 - i]

    def signed(s: int, what: str) -> Const:
        if s == 0:
            raise _Undefined(e, f"'{e}' is {what}, whose sign depends on '{other}'")
        return Const(inf * s)
    s = _sign(other, bound)
    if e.op == "+":
        return Const(inf)
    if e.op == "-":
        return Const(inf if i == 0 else -inf)
    if e.op == "*":
        return signed(s, f"{'-' if inf < 0 else ''}inf times '{other}'")
    if e.op == "/":
        return signed(s, f"{'-' if inf < 0 else ''}inf divided by '{other}'") if i == 0 else Const(0.0)
    if e.op == "^" and i == 0 and inf > 0 and s != 0:
        return Const(inf if s > 0 else 0.0)
    raise _Undefined(e, f"'{e}' has no limit the compiler can tell")


def _sign(e: Expr, bound: dict) -> int:
    """+1 or -1 when ``e`` is positive or negative for every parameter value, else 0."""
    if isinstance(e, Const):
        return int(np.sign(e.value))
    if isinstance(e, Param):
        return 1 if bound[e.name] in ("positive", "unit") else 0
    if isinstance(e, Data):
        return e.sign
    s = [_sign(a, bound) for a in e.args]
    if e.op in ("exp", "softplus", "inv_logit"):
        return 1
    if e.op in ("sqrt", "abs"):
        return 1 if s[0] != 0 and (e.op == "abs" or s[0] > 0) else 0
    if e.op in ("neg",):
        return -s[0]
    if e.op in ("expm1", "log1p"):
        return s[0]
    if e.op in ("*", "/"):
        return s[0] * s[1]
    if e.op == "+":
        return s[0] if s[0] == s[1] else 0
    if e.op == "-":
        return s[0] if s[0] == -s[1] else 0
    if e.op == "^":
        return 1 if s[0] > 0 else 0
    return 0


def _identity(e: Op) -> Expr:
    """x + 0, x * 1, x / 1, x^1 -> x; 0 * x, 0 / x -> 0 (finite x)."""
    a = e.args
    c = [x.value if isinstance(x, Const) else None for x in a]
    if e.op == "+" and 0 in c:
        return a[1 - c.index(0)]
    if e.op == "-" and c[1] == 0:
        return a[0]
    if e.op == "*" and 1 in c:
        return a[1 - c.index(1)]
    if e.op == "*" and 0 in c or e.op == "/" and c[0] == 0:
        return Const(0.0)
    if e.op in ("/", "^") and c[1] == 1:
        return a[0]
    return e


# ---------------------------------------------------------------------- encode
def encode_nonlinear(model: NonlinearIR, info: TableInfo) -> tuple[dict, dict, Encoding]:
    """(rows, consts, encoding): the response, each parameter's arrays, the data leaves (finite:
    a typical value stands in where a leaf is infinite) and one row mask per limit."""
    resp = model.response
    rows: dict = {"y": info.numeric(A.Var(resp.column)).astype(np.float32)}
    for key in ("trials", "se", "weights"):
        col = getattr(resp, key)
        if col:
            rows[key] = info.numeric(A.Var(col)).astype(np.float32)
    rows["params"], consts = {}, {"params": {}}
    labels, factors = {}, {}
    for p in model.params:
        src = f"{p.name} ~ {p.formula}"
        r, c, enc = encode(p.model, parameter_table(info, p.name, src, p.bound, 1.0))
        r.pop("y")
        rows["params"][p.name], consts["params"][p.name] = r, c
        labels.update(enc.labels)
        factors.update(enc.factor_levels)
    with np.errstate(all="ignore"):  # infinities were checked by the resolver: they have limits
        values = {d.text: np.asarray(evaluate(d.expr, NP_OPS, lambda col: info.numeric(A.Var(col.name))),
                                     np.float64) for d in model.leaves}
    rows["data"] = {}
    for text, v in values.items():
        finite = np.isfinite(v)
        typical = float(np.median(v[finite])) if finite.any() else 0.0
        rows["data"][text] = np.where(finite, v, typical).astype(np.float32)
    rows["limits"] = {}
    for lim in model.limits:
        mask = np.ones(info.n, bool)
        for text in values:
            want = dict(lim.infinite).get(text)
            mask &= np.isfinite(values[text]) if want is None else (values[text] == want)
        rows["limits"][lim.key] = mask
    return rows, consts, Encoding(labels, dict(info.stats), factors)


# ---------------------------------------------------------------------- lower
def make_nonlinear_model(model: NonlinearIR, mesh=None) -> Callable:
    """The NumPyro model of a non-linear IR; its modes are those of :func:`hbm.lower.make_model`,
    plus ``mode="params"``, which returns each parameter's per-row values (curves, predictions).

    With several devices the rows are sharded and XLA partitions the sums (no ``shard_map``)."""
    subs = {p.name: make_model(p.model) for p in model.params if not p.direct}
    family = FAMILIES[model.family.name]
    one = np.zeros(1, np.float32)

    def model_fn(rows, consts, mode="fit", scale=None):
        values = {}
        for p in model.params:
            if p.direct:   # the parameter itself, on its own scale
                t = p.model.population[0]
                values[p.name] = jnp.reshape(sample_param(t.name, t.prior, p.bound), (1,))
                continue
            sub_rows = dict(rows["params"][p.name], y=rows["y"] if p.per_row else one)
            eta = subs[p.name](sub_rows, consts["params"][p.name], mode="latent" if mode == "latent" else "eta")
            if eta is not None:
                values[p.name] = BOUNDS[p.bound](eta)
        aux = {fp.name: sample_param(fp.name, fp.prior, "positive") for fp in model.family.params}
        if mode == "latent":
            return None
        if mode == "params":
            return values
        mean = predictor(model, values, rows)
        extra = {k: rows[k] for k in ("trials", "se") if k in rows}
        d = family.make(mean, model.family.link, aux, extra)
        if mode == "simulate":
            with numpyro.plate("obs", rows["y"].shape[0]):
                numpyro.sample("y", d)
        elif mode == "fit":
            ll = d.log_prob(rows["y"])
            if "weights" in rows:
                ll = ll * rows["weights"]
            if "mask" in rows:
                ll = jnp.where(rows["mask"], ll, 0.0)
            ll = jnp.sum(ll)
            numpyro.factor("loglik", ll if scale is None else ll * scale)
        return mean
    return model_fn


def predictor(model: NonlinearIR, values: dict, rows: dict):
    """The expression of every row (on the link scale), its limits where data leaves are infinite."""
    def leaf(e):
        return values[e.name] if isinstance(e, Param) else rows["data"][e.text]
    out = evaluate(model.expr, JAX_OPS, leaf)
    for lim in model.limits:
        out = jnp.where(rows["limits"][lim.key], evaluate(lim.expr, JAX_OPS, leaf), out)
    return out


# ---------------------------------------------------------------------- outputs
def build_nonlinear_outputs(model: NonlinearIR, sites: dict, enc: Encoding):
    """The named parameters of every parameter's formula, then the family's."""
    from .outputs import build_outputs
    from .results import Outputs, OutputVar
    vars_, coords = [], {}
    for p in model.params:
        o = build_outputs(p.model, sites, enc)
        coords.update(o.coords)
        if p.linear_name != p.name:
            for v, dim in _natural(p, o.vars):
                if dim:
                    coords[v.base] = coords[dim]
                vars_.append(v)
        vars_ += o.vars
    vars_ += [OutputVar(fp.name, (), sites[fp.name]) for fp in model.family.params]
    return Outputs(tuple(vars_), coords, frozenset(p.name for p in model.plates))


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


def _natural(p: NonlinearParam, link_vars):
    """A linked parameter's values on its own scale, from its link-scale outputs: ``p`` = exp(``log(p)``)
    (its value where the other terms and the group deviations are 0), each group's ``p[g=level]``, and in
    a formula without intercept the levels of its (fully coded) first factor, ``p:factor(f)[u]``. Slopes
    have no value on p's scale and are reported on the link scale only. Yields (var, its dim to copy
    coordinates from, or None)."""
    from .results import OutputVar
    lp, factor = p.linear_name, _first_factor(p.model)

    def value(v):
        a = np.asarray(v.values)
        return _NP_BOUNDS[p.bound](a.astype(np.float64)).astype(a.dtype)
    for v in link_vars:
        if v.base == lp:
            yield OutputVar(p.name, v.dims, value(v)), None
        elif v.base == factor and v.dims == (factor,):
            name = p.name + factor[len(lp):]
            yield OutputVar(name, (name,), value(v)), factor


# ---------------------------------------------------------------------- compile
def compile_nonlinear(spec, df, *, devices=None, noncentered: bool = True):
    """``hbm.compile_table`` for a spec with ``params:``: a :class:`hbm.compiler.CompiledModel`
    whose rows are flat (the order of the data), placed on the devices."""
    from .compiler import CompiledModel, fingerprint, resolve_devices
    if spec.batch_size:
        raise HbmError("batch_size is not supported for non-linear formulas yet", where="batch_size",
                       hint="remove batch_size; the full data is used at every step")
    formula = parse_nonlinear(spec.formula)
    info = TableInfo(df, formula.source)
    model = resolve_nonlinear(formula, info, params=spec.params, bounds=spec.bounds, family=spec.family,
                              priors=spec.priors, noncentered=noncentered)
    rows, consts, enc = encode_nonlinear(model, info)
    n_dev = resolve_devices(devices if devices is not None else spec.devices)
    mesh = None
    if n_dev > 1:
        rows, mesh = _shard(rows, n_dev)
    else:
        rows = jax.tree.map(jnp.asarray, rows)
    consts = jax.tree.map(jnp.asarray, consts)
    return CompiledModel(spec, formula, model, enc, rows, consts, make_nonlinear_model(model, mesh),
                         len(df), n_dev, fingerprint(df))


def _shard(rows: dict, n_dev: int):
    """Pad every per-row array (at any depth of ``rows``) to a multiple of ``n_dev``, padding masked,
    and split them over a 1-D ``data`` mesh; XLA partitions the model's sums."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(AxisType.Auto,))
    n = rows["y"].shape[0]
    pad = (-n) % n_dev
    rows = dict(rows, mask=np.concatenate([np.ones(n, bool), np.zeros(pad, bool)]))

    def put(a):
        a = np.asarray(a)
        if pad and a.ndim and a.shape[0] == n:
            a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
        return jax.device_put(a, NamedSharding(mesh, P("data")))
    return jax.tree.map(put, rows), mesh
