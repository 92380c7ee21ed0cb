"""Resolve a formula AST against the data's columns into the IR.

Expands ``a*b``, ``(1 | a/b)`` and chains, dummy-codes factors, decides the
plates and their sizes, checks nesting, picks the family and link, and gives
every parameter its prior (the spec's, or a weakly informative default scaled
to the data; see docs/priors.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hbm.frontend import ast as A
from hbm.ir import model as ir
from hbm.errors import HbmError, ProblemList, closest
from hbm.vocabulary.families import FAMILIES, check_response, infer_family
from hbm.frontend.priors import Fixed, Prior, check_fixed, to_distribution
from hbm.data.encode import column_values
from hbm.data.table import TableInfo
from hbm.vocabulary.limits import MANY_LEVELS, MAX_DESIGN_BYTES, MAX_EXPANDED_TERMS

Component = A.Var | A.Call
Term = tuple[Component, ...]          # () is the intercept


@dataclass(frozen=True)
class _Terms:
    """A sum of terms as written: the intercept flag and the terms in order."""

    intercept: bool
    terms: tuple[Term, ...]
    groups: tuple[A.GroupTerm, ...] = ()
    chains: tuple[A.Chain, ...] = ()
    offsets: tuple[A.Expr, ...] = ()


def resolve(formula: A.Formula, info: TableInfo, *, family: str | None = None,
            priors: tuple = (), noncentered: bool = True) -> ir.ModelIR:
    """The IR of ``formula`` on the table described by ``info``."""
    return _Resolver(formula, info).run(family, priors, noncentered)


def term_name(term: Term) -> str:
    return ":".join(str(c) for c in term) if term else "Intercept"


class _Resolver:
    def __init__(self, formula: A.Formula, info: TableInfo):
        self.f = formula
        self.src = formula.source or str(formula)
        self.info = info
        self.problems = ProblemList()
        self.design_columns = 0   # dense design columns so far (population and group terms), for MAX_DESIGN_BYTES

    def err(self, msg: str, node=None, hint: str | None = None) -> HbmError:
        return HbmError(msg, span=getattr(node, "span", None), source=self.src, where="formula", hint=hint)

    # ------------------------------------------------------------------ top level
    def run(self, family_name, priors, noncentered) -> ir.ModelIR:
        if self.info.n < 2:
            raise HbmError("the data has a single row; a model needs at least two", where="data",
                           hint="check the data file (or a filter that left one row)")
        top = self.split(self.f.rhs, allow_special=True)
        response, y, trials = self.response()
        fam, link, inferred = self.family(family_name, y, trials)
        self.problems.raise_if_any()
        self.scale = _LinkScale(link, fam, y)

        population: list[ir.PopulationTerm] = []
        if top.intercept:
            population.append(ir.PopulationTerm("Intercept", (ir.INTERCEPT,), self.scale.intercept_prior()))
        terms = list(top.terms)
        spanned = top.intercept  # the constant is in the column space (R: only the first factor is fully coded)
        for term in terms:
            cols, labels = self.columns(term, terms, spanned)
            spanned = spanned or (len(term) == 1 and bool(labels))
            population.append(ir.PopulationTerm(term_name(term), cols, self.scale.coef_prior(self.sd_x(cols)),
                                                labels))

        plates: dict[str, ir.Plate] = {}
        nestings: list[tuple[str, str]] = []
        chains = [self.chain(c, plates, nestings, population, top.intercept) for c in top.chains]
        seen_chain_terms: dict[str, A.Chain] = {}
        for node, c in zip(top.chains, chains):
            if c.term in seen_chain_terms:
                raise self.err(f"'{c.term}' has two chains; give each coefficient one chain", node,
                               hint="add further groups to the same chain, e.g. x | g1/g2/g3")
            seen_chain_terms[c.term] = node
        placed = [(b, g) for g in top.groups for b in self.group_blocks(g, plates)]
        self.check_duplicate_values(list(zip(chains, top.chains)) + placed)
        groups = [b for b, _ in placed]
        self.problems.raise_if_any()   # problems found in the group terms (a single level, ...)

        fam_params = tuple(ir.FamilyParam(p, self.scale.family_prior(p)) for p in FAMILIES[fam].params
                           if not (p == "sigma" and response.se))
        model = ir.ModelIR(
            formula=str(self.f), response=response,
            family=ir.Family(fam, link, fam_params, inferred),
            plates=tuple(plates.values()), population=tuple(population), groups=tuple(groups),
            chains=tuple(chains), offsets=top.offsets, nestings=tuple(nestings), noncentered=noncentered)
        return apply_priors(model, priors)

    # ------------------------------------------------------------------ sums and terms
    def split(self, expr: A.Expr, *, allow_special: bool) -> _Terms:
        """Flatten a sum into terms, tracking the intercept, group terms, chains and offsets."""
        intercept = True
        terms: list[Term] = []
        groups, chains, offsets = [], [], []

        def visit(e, sign):
            nonlocal intercept
            if isinstance(e, A.BinOp) and e.op in "+-":
                visit(e.left, sign)
                visit(e.right, sign if e.op == "+" else -sign)
            elif isinstance(e, A.Neg):
                visit(e.body, -sign)
            elif isinstance(e, A.Paren) and isinstance(e.body, (A.BinOp, A.Neg)) and \
                    (not isinstance(e.body, A.BinOp) or e.body.op in "+-"):
                visit(e.body, sign)
            elif isinstance(e, A.Num):
                if e.value not in (0, 1):
                    raise self.err(f"a number in a formula must be 0 or 1 (the intercept), not {e}", e)
                intercept = (e.value == 1) == (sign > 0)
            elif sign < 0:
                raise self.err("only the intercept can be removed with '-'", e,
                               hint="write '- 1' or '0 +' to drop the intercept")
            elif isinstance(e, A.GroupTerm):
                if not allow_special:
                    raise self.err("a group term cannot be nested in another group term", e)
                groups.append(e)
            elif isinstance(e, A.Chain):
                if not allow_special:
                    raise self.err("a chain cannot appear inside a group term", e)
                chains.append(e)
            elif isinstance(e, A.Call) and e.func == "offset":
                if not allow_special:
                    raise self.err("offset() belongs in the population-level part of the formula", e)
                self.info.numeric(e.arg)
                offsets.append(e.arg)
            else:
                for t in self.expand(e):
                    if t not in terms:
                        terms.append(t)

        visit(expr, 1)
        return _Terms(intercept, tuple(terms), tuple(groups), tuple(chains), tuple(offsets))

    def expand(self, e: A.Expr) -> list[Term]:
        """Products of components: ``a*b`` -> a, b, a:b; ``(a + b):c`` -> a:c, b:c."""
        if isinstance(e, A.Var):
            self.info.require(e.name, e.span)
            return [(e,)]
        if isinstance(e, A.Call):
            if e.func == "offset":
                raise self.err("offset() cannot be part of an interaction", e)
            if e.func == "factor":
                if not isinstance(e.arg, A.Var):
                    raise self.err("factor() takes a column name", e.arg)
                self.info.require(e.arg.name, e.arg.span)
            else:
                self.info.numeric(e)
            return [(e,)]
        if isinstance(e, A.Paren):
            return self.expand(e.body)
        if isinstance(e, A.BinOp) and e.op in ":*":
            left, right = self.expand(e.left), self.expand(e.right)
            count = len(left) * len(right) + (len(left) + len(right) if e.op == "*" else 0)
            if count > MAX_EXPANDED_TERMS:
                raise self.err(f"this product expands to {count:,} terms; at most {MAX_EXPANDED_TERMS:,} are "
                               "allowed", e, hint="a*b*c*... has a term for every subset of its factors: "
                                                  "write the interactions you mean with ':'")
            inter = [_merge(a, b) for a in left for b in right]
            out = (left + right + inter) if e.op == "*" else inter
            return list(dict.fromkeys(out))
        if isinstance(e, A.BinOp) and e.op == "+":
            return list(dict.fromkeys(self.expand(e.left) + self.expand(e.right)))
        if isinstance(e, A.Num):
            raise self.err("a number cannot be part of an interaction", e)
        if isinstance(e, (A.GroupTerm, A.Chain)):
            raise self.err("a group term cannot be part of an interaction", e)
        raise self.err(f"'{e}' cannot be used here", e)

    def categorical(self, c: Component) -> str | None:
        """The data column if ``c`` is categorical (factor(x) or a text column), else None."""
        if isinstance(c, A.Call) and c.func == "factor":
            return c.arg.name
        if isinstance(c, A.Var) and self.info.is_categorical(c.name):
            return c.name
        return None

    def columns(self, term: Term, all_terms: list[Term], intercept: bool) -> tuple[tuple[ir.DesignColumn, ...], tuple[str, ...]]:
        """Design columns of a term (treatment coding) and, for factor terms, their level labels."""
        present = {frozenset(map(str, t)) for t in all_terms}
        options: list[list[tuple[ir.Part | None, str]]] = []
        has_factor = False
        for c in term:
            col = self.categorical(c)
            if col is None:
                options.append([(c, "")])
                continue
            has_factor = True
            _, labels = self.info.levels((col,))
            margin = frozenset(str(x) for x in term if x is not c)
            full = (not margin and not intercept) or (margin and margin not in present)
            keep = labels if full else labels[1:]
            if not keep:
                raise self.err(f"'{c}' has a single level; it cannot be a predictor", c)
            options.append([(ir.Level(str(c), col, lev), lev) for lev in keep])
        self.reserve(term, options)
        cols, labels = [], []
        for combo in _product(options):
            parts = tuple(p for p, _ in combo)
            cols.append(ir.DesignColumn(":".join(str(p) for p in parts), parts))
            labels.append(":".join(lab for _, lab in combo if lab))
        return tuple(cols), (tuple(labels) if has_factor else ())

    def reserve(self, term: Term, options: list[list]) -> None:
        """Count a term's design columns; refuse a dense design (rows x columns x 4 bytes, float32)
        above MAX_DESIGN_BYTES before any column is built (a factor of 100,000 levels would be 40 GB)."""
        width = math.prod(len(o) for o in options)
        self.design_columns += width
        size = self.info.n * self.design_columns * 4
        if size <= MAX_DESIGN_BYTES:
            return
        many = [c for c, o in zip(term, options) if len(o) > MANY_LEVELS]
        hint = "use fewer or smaller factors, or a sample of the rows"
        if many:
            c = many[0]
            col = self.categorical(c)
            k = len(self.info.levels((col,))[1])
            hint = (f"'{c}' has {k:,} levels, a column for each: a varying intercept (1 | {col}) pools them "
                    "instead, with one value per level and no design column")
        spans = [c.span for c in term if c.span is not None]
        raise HbmError(f"the design matrix would take {size:,} bytes ({self.info.n:,} rows x "
                       f"{self.design_columns:,} columns x 4 bytes), more than the limit of {MAX_DESIGN_BYTES:,}",
                       span=spans[0] + spans[-1] if spans else None, source=self.src, where="formula", hint=hint)

    def sd_x(self, cols: tuple[ir.DesignColumn, ...]) -> float:
        sds = [float(np.std(column_values(c, self.info))) for c in cols if not c.is_intercept]
        sds = [s for s in sds if s > 0]
        return float(np.median(sds)) if sds else 1.0

    # ------------------------------------------------------------------ group terms and chains
    def plate(self, gf: A.GroupFactor, plates: dict[str, ir.Plate]) -> ir.Plate:
        name = ":".join(gf.names)
        if len(set(gf.names)) < len(gf.names):
            raise self.err(f"grouping factor '{name}' names a column twice", gf)
        if name not in plates:
            for n in gf.names:
                self.info.require(n, gf.span)
            _, labels = self.info.levels(gf.names)
            plates[name] = ir.Plate(name, gf.names, len(labels))
        return plates[name]

    def group_blocks(self, g: A.GroupTerm, plates: dict[str, ir.Plate]) -> list[ir.GroupBlock]:
        body = self.split(g.body, allow_special=False)
        terms = list(body.terms)
        cols: list[ir.DesignColumn] = [ir.INTERCEPT] if body.intercept else []
        spanned = body.intercept
        for t in terms:
            c, labels = self.columns(t, terms, spanned)
            spanned = spanned or (len(t) == 1 and bool(labels))
            cols.extend(c)
        if not cols:
            raise self.err("this group term has no terms", g)
        blocks = []
        # lme4 nesting, outer first: (1 | a/b) = (1 | a) + (1 | a:b)
        for depth in range(len(g.group.factors)):
            names = tuple(n for f in g.group.factors[:depth + 1] for n in f.names)
            plate = self.plate(A.GroupFactor(names, span=g.group.span), plates)
            if plate.size < 2:
                self.problems.add(f"grouping factor '{plate.name}' has a single level; a group term needs several",
                                  span=g.span, source=self.src, where="formula")
            sds = tuple(self.scale.sd_prior(self.sd_x((c,))) for c in cols)
            if g.correlated and len(cols) > 1:
                blocks.append(ir.GroupBlock(plate.name, tuple(cols), sds, Prior("lkj", (1.0,))))
            else:
                blocks += [ir.GroupBlock(plate.name, (c,), (s,)) for c, s in zip(cols, sds)]
        return blocks

    def chain(self, node: A.Chain, plates, nestings, population, intercept) -> ir.Chain:
        terms = [()] if isinstance(node.term, A.Num) and node.term.value == 1 else None
        if terms is None:
            if isinstance(node.term, A.Num):
                raise self.err("a chain starts from a predictor or 1", node.term)
            terms = self.expand(node.term)
            if len(terms) != 1 or any(self.categorical(c) for c in terms[0]):
                raise self.err("a chain needs one numeric predictor (or 1) before '|'", node.term,
                               hint="for a factor, use a group term such as (0 + factor(x) | g)")
        term = terms[0]
        name = term_name(term)
        column = ir.INTERCEPT if not term else self.columns(term, [term], True)[0][0]
        chain_plates = [self.plate(gf, plates) for gf in node.group.factors]
        single = [p for p in chain_plates if p.size < 2]
        if single:
            kept = [str(f) for f, p in zip(node.group.factors, chain_plates) if p.size >= 2]
            top = "top " if single[0] is chain_plates[-1] else ""
            raise self.err(f"the chain's {top}grouping '{single[0].name}' has a single level: there is nothing "
                           "to pool over", node.group,
                           hint=f"drop it from the chain: '{node.term} | {'/'.join(kept)}'" if kept else
                           f"drop the chain: '{node.term}' alone is a population coefficient")
        for inner, outer, gf in zip(chain_plates, chain_plates[1:], node.group.factors[1:]):
            self.check_nested(inner, outer, node)
            if (inner.name, outer.name) not in nestings:
                nestings.append((inner.name, outer.name))
        top = None
        if term or intercept:
            idx = next((i for i, p in enumerate(population) if p.name == name), None)
            if idx is None:
                population.append(ir.PopulationTerm(name, (column,), self.scale.coef_prior(self.sd_x((column,))),
                                                    in_chain=True))
            else:
                p = population[idx]
                population[idx] = ir.PopulationTerm(p.name, p.columns, p.prior, p.levels, in_chain=True)
            top = name
        sds = tuple(self.scale.sd_prior(self.sd_x((column,))) for _ in chain_plates)
        return ir.Chain(name, column, tuple(p.name for p in chain_plates), sds, top)

    def check_nested(self, inner: ir.Plate, outer: ir.Plate, node: A.Chain) -> None:
        ci, li = self.info.levels(inner.columns)
        co, lo = self.info.levels(outer.columns)
        pairs = np.unique(np.stack([ci, co], 1), axis=0)
        counts = np.bincount(pairs[:, 0], minlength=len(li))
        bad = np.flatnonzero(counts > 1)
        if len(bad):
            shown = []
            for b in bad[:3]:
                outs = [lo[o] for o in pairs[pairs[:, 0] == b, 1]]
                shown.append(f"{inner.name} {li[b]} is in {len(outs)} {outer.name} levels ({', '.join(outs[:4])})")
            better = self.nested_order(node)
            self.problems.add(
                f"'{inner.name}' is not nested in '{outer.name}': {len(bad)} levels break it; "
                + "; ".join(shown), span=node.group.span, source=self.src, where="formula",
                hint=f"a chain lists the innermost group first; did you mean '{node.term} | {better}'?"
                if better else "each level must sit inside exactly one level of the next group")
            self.problems.raise_if_any()

    def nested_order(self, node: A.Chain) -> str | None:
        """The chain's groups ordered finest first, if that order is nested in the data."""
        factors = sorted(node.group.factors, key=lambda f: -len(self.info.levels(f.names)[1]))
        codes = [self.info.levels(f.names)[0] for f in factors]
        if all(_nested(a, b) for a, b in zip(codes, codes[1:])):
            return "/".join(str(f) for f in factors)
        return None

    def check_duplicate_values(self, placed: list) -> None:
        """Each coefficient varies by a plate at most once (one chain or one group term)."""
        seen: dict[tuple[str, str], object] = {}
        for item, node in placed:
            pairs = [(item.term, p) for p in item.plates] if isinstance(item, ir.Chain) \
                else [(c.name, item.plate) for c in item.columns]
            for name, plate in pairs:
                if (name, plate) in seen and seen[(name, plate)] is not node:
                    raise self.err(f"'{name}' varies by '{plate}' twice", node,
                                   hint="each coefficient may vary by a grouping factor in one term only")
                seen[(name, plate)] = node

    # ------------------------------------------------------------------ response and family
    def response(self):
        lhs = self.f.lhs
        y = self._response_values(lhs.column, lhs.span)
        adds = {a.kind: a.column for a in lhs.additions}
        for a in lhs.additions:
            v = self._response_values(a.column, a.span)
            if a.kind == "se" and (v <= 0).any():
                self.problems.add(f"se() column '{a.column}' must be positive", where=f"column '{a.column}'")
            if a.kind == "weights" and (v < 0).any():
                self.problems.add(f"weights() column '{a.column}' must be >= 0", where=f"column '{a.column}'")
            if a.kind == "trials" and ((v < 0).any() or (v != np.round(v)).any()):
                self.problems.add(f"trials() column '{a.column}' must hold whole numbers >= 0",
                                  where=f"column '{a.column}'")
        trials = self._response_values(adds["trials"], lhs.span) if "trials" in adds else None
        return ir.Response(lhs.column, adds.get("trials"), adds.get("se"), adds.get("weights")), y, trials

    def _response_values(self, col: str, span) -> np.ndarray:
        return self.info.numeric(A.Var(col, span=span))

    def family(self, name, y, trials):
        link = self.f.lhs.link
        inferred = name is None
        if inferred:
            name = "binomial" if trials is not None else infer_family(link, y, False)
        spec = FAMILIES[name]
        if name == "lognormal" and link == "log":
            link = "identity"  # log(y) ~ ... with lognormal: the predictor is the location of log(y)
        if self.f.lhs.additions and any(a.kind == "trials" for a in self.f.lhs.additions) and name != "binomial":
            self.problems.add(f"trials() is for the binomial family, not {name}", span=self.f.lhs.span,
                              source=self.src, where="formula")
        if self.f.lhs.additions and any(a.kind == "se" for a in self.f.lhs.additions) \
                and name not in ("normal", "student_t"):
            self.problems.add(f"se() gives known standard deviations, which only the normal and student_t "
                              f"families have; not {name}", span=self.f.lhs.span, source=self.src, where="formula")
        if name == "binomial" and trials is None:
            self.problems.add("the binomial family needs the number of trials: write 'y | trials(n) ~ ...'",
                              span=self.f.lhs.span, source=self.src, where="formula")
        if link is not None and link not in spec.links:
            hint = "use family: lognormal to model log(y) as normal" if name in ("normal", "student_t") \
                and link == "log" else f"{name} takes the links {', '.join(spec.links)}"
            if name == "normal" and link == "log":
                hint = "did you mean family: lognormal? log(y) with a normal family is not a normal model"
            self.problems.add(f"the link {link}() cannot be used with family {name}", span=self.f.lhs.span,
                              source=self.src, where="formula", hint=hint)
            link = spec.default_link
        why = check_response(spec.support, y, trials)
        if why:
            self.problems.add(f"response '{self.f.lhs.column}' {why}", where=f"column '{self.f.lhs.column}'",
                              hint=f"check the data or choose another family than {name}"
                              + (" (inferred from the link and the data; set 'family:')" if inferred else ""))
        return name, link or spec.default_link, inferred


# ---------------------------------------------------------------------- priors
class _LinkScale:
    """Scales for default priors, on the link scale (rstanarm/brms-style autoscaling)."""

    def __init__(self, link: str, family: str, y: np.ndarray):
        if family == "lognormal":
            ly = np.log(y)
            self.m, self.s, self.sd_y = float(ly.mean()), float(ly.std()) or 1.0, float(ly.std()) or 1.0
        elif link == "identity":
            self.m, self.s, self.sd_y = float(y.mean()), float(y.std()) or 1.0, float(y.std()) or 1.0
        elif link == "log":
            self.m, self.s, self.sd_y = float(np.log(max(y.mean(), 1e-3))), 1.0, 1.0
        elif link == "inverse":
            self.m, self.s, self.sd_y = float(1.0 / y.mean()) if y.mean() != 0 else 1.0, 1.0, 1.0
        else:
            self.m, self.s, self.sd_y = 0.0, 1.0, 1.0

    def intercept_prior(self) -> Prior:
        return Prior("student_t", (3.0, _nice(self.m), _nice(2.5 * self.s)))

    def coef_prior(self, sd_x: float) -> Prior:
        return Prior("normal", (0.0, _nice(2.5 * self.s / sd_x)))

    def sd_prior(self, sd_x: float) -> Prior:
        return Prior("half_normal", (_nice(2.5 * self.s / sd_x),))

    def family_prior(self, name: str) -> Prior:
        if name == "sigma":
            return Prior("exponential", (_nice(1.0 / self.sd_y),))
        return Prior("gamma", (2.0, 0.1))


def _nice(v: float) -> float:
    if v == 0 or not math.isfinite(v):
        return 0.0 if v == 0 else 1.0
    return float(f"{v:.3g}")


def _support(name: str) -> str:
    if name.startswith("cor("):
        return "corr_cholesky"
    if name.startswith("sd(") or name in ("sigma", "phi", "nu"):
        return "positive"
    return "real"


def apply_priors(model: ir.ModelIR, priors: tuple) -> ir.ModelIR:
    """Replace default priors by the spec's (names match ignoring spaces); unknown names are errors."""
    given = {_norm(k): (k, v) for k, v in priors}
    names = model.parameter_names()
    known = {_norm(n) for n in names}
    problems = ProblemList()
    for key, (orig, _) in given.items():
        if key not in known:
            best = closest(orig, names)
            problems.add(f"prior for '{orig}', which is not a parameter of this model",
                         where=f"priors: {orig}",
                         hint=(f"did you mean '{best}'? " if best else "") + "parameters: " + ", ".join(names))
    problems.raise_if_any()

    def pick(name, default, dim=None):
        if _norm(name) not in given:
            return default
        p = given[_norm(name)][1]
        sup = _support(name)
        if isinstance(p, Fixed):
            if sup == "corr_cholesky":
                raise HbmError(f"a correlation cannot be fixed to a number ('{name}')", where=f"priors: {name}")
            check_fixed(p, sup, where=f"priors: {name}")
        else:
            to_distribution(p, sup, dim, where=name)
        return p

    pop = tuple(ir.PopulationTerm(t.name, t.columns, pick(t.name, t.prior), t.levels, t.in_chain)
                for t in model.population)
    groups = tuple(ir.GroupBlock(b.plate, b.columns,
                                 tuple(pick(b.sd_name(k), s) for k, s in enumerate(b.sd_priors)),
                                 pick(b.cor_name, b.cor_prior, len(b.columns)) if b.cor_prior else None)
                   for b in model.groups)
    chains = tuple(ir.Chain(c.term, c.column, c.plates,
                            tuple(pick(c.sd_name(k), s) for k, s in enumerate(c.sd_priors)), c.top)
                   for c in model.chains)
    fam = ir.Family(model.family.name, model.family.link,
                    tuple(ir.FamilyParam(p.name, pick(p.name, p.prior)) for p in model.family.params),
                    model.family.inferred)
    return ir.ModelIR(model.formula, model.response, fam, model.plates, pop, groups, chains,
                      model.offsets, model.nestings, model.noncentered)


def _norm(name: str) -> str:
    return name.replace(" ", "")


def _merge(a: Term, b: Term) -> Term:
    out = list(a)
    for c in b:
        if c not in out:
            out.append(c)
    return tuple(out)


def _product(options):
    out = [[]]
    for opts in options:
        out = [prev + [o] for prev in out for o in opts]
    return out


def _nested(child_codes: np.ndarray, parent_codes: np.ndarray) -> bool:
    pairs = np.unique(np.stack([child_codes, parent_codes], 1), axis=0)
    return bool((np.bincount(pairs[:, 0]) <= 1).all())
