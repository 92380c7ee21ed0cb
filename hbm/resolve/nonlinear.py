"""Resolve a non-linear formula: names, each parameter's linear formula, priors, stable forms and limits."""
from __future__ import annotations

import functools
import math
from dataclasses import replace
import numpy as np
from hbm.frontend import ast as A
from hbm.ir import model as ir
from hbm.frontend import nl_ast as N
from hbm.errors import HbmError, Problem, ProblemList, closest, did_you_mean
from hbm.frontend.priors import Fixed, OnNatural, PerLevel, Prior, check_fixed, to_distribution
from hbm.frontend.parse import parse_formula
from hbm.resolve.linear import _LinkScale, apply_priors, resolve
from hbm.data.table import TableInfo
from hbm.data.encode_nonlinear import parameter_table
from hbm.ir.nonlinear import Column
from hbm.ir.nonlinear import Const
from hbm.ir.nonlinear import Data
from hbm.ir.nonlinear import Expr
from hbm.ir.nonlinear import Limit
from hbm.ir.nonlinear import NonlinearIR
from hbm.ir.nonlinear import NonlinearParam
from hbm.ir.nonlinear import Op
from hbm.ir.nonlinear import Param
from hbm.ir.nonlinear import _cell_means
from hbm.ir.nonlinear import _intercept_only
from hbm.ir.nonlinear import _linear_name
from hbm.ir.nonlinear import _show
from hbm.ir.nonlinear import walk
from hbm.vocabulary.functions import NP_OPS
from hbm.vocabulary.functions import OPS
from hbm.vocabulary.functions import _BOUND_TEXT
from hbm.vocabulary.functions import _LINK

# A parameter whose formula is chains only is drawn centred when its innermost levels hold at least
# this many rows on average (see centring()).
CENTRE_ROWS = 50


# a bounded parameter of formula `1` is sampled itself; its default prior, on its own scale
DIRECT_PRIORS = {"positive": Prior("lognormal", (0.0, 2.5)), "unit": Prior("beta", (1.0, 1.0))}


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
    """A binary operation of an infinite constant (argument ``i``) and a finite expression: the
    operator's limit rule (``OpSpec.limit``, hbm/vocabulary/functions.py)."""
    inf, other = args[i].value, args[1 - i]
    rule = OPS[e.op].limit
    value = rule(inf, i, _sign(other, bound)) if rule is not None else None
    if isinstance(value, str):
        raise _Undefined(e, f"'{e}' is {value} '{other}', whose sign depends on '{other}'")
    if value is None:
        raise _Undefined(e, f"'{e}' has no limit the compiler can tell")
    return Const(value)


def _sign(e: Expr, bound: dict) -> int:
    """+1 or -1 when ``e`` is positive or negative for every parameter value, else 0."""
    if isinstance(e, Const):
        return int(np.sign(e.value))
    if isinstance(e, Param):
        return 1 if bound[e.name] in ("positive", "unit") else 0
    if isinstance(e, Data):
        return e.sign
    rule = OPS[e.op].sign    # hbm/vocabulary/functions.py
    return rule(*(_sign(a, bound) for a in e.args)) if rule is not None else 0


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

