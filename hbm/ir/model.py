"""The intermediate representation: what the model is, in names and shapes.

Plain frozen dataclasses that compare by value and carry no arrays or JAX
objects, so an IR can be a static argument to ``jit`` and ``hbm check`` can
print it (``ModelIR.pretty()``).
"""
from __future__ import annotations

from dataclasses import dataclass

from hbm.frontend import ast as A
from hbm.frontend.priors import Fixed, Prior
from hbm.ir import model as ir

PriorLike = Prior | Fixed


@dataclass(frozen=True, slots=True)
class Level:
    """One dummy-coded level of a categorical predictor: ``factor(period)`` == ``"2"``."""

    term: str      # text of the categorical component, e.g. "factor(period)" or "region"
    column: str    # data column
    level: str     # level label

    def __str__(self) -> str:
        return f"{self.term}[{self.level}]"


Part = A.Expr | Level  # a numeric expression (Var or transform Call) or a dummy level


@dataclass(frozen=True, slots=True)
class DesignColumn:
    """One column of a design matrix: the product of its parts (empty = the constant 1)."""

    name: str
    parts: tuple[Part, ...]

    @property
    def is_intercept(self) -> bool:
        return not self.parts


INTERCEPT = DesignColumn("Intercept", ())


@dataclass(frozen=True, slots=True)
class Plate:
    """A grouping factor: one level per distinct value (or tuple of values) of ``columns``."""

    name: str                  # "product", "category:period"
    columns: tuple[str, ...]
    size: int

    def __str__(self) -> str:
        return f"{self.name} ({self.size} levels)"


@dataclass(frozen=True, slots=True)
class PopulationTerm:
    """A population-level coefficient (scalar) or block of coefficients (a factor's levels)."""

    name: str                          # "Intercept", "log(price)", "factor(period)"
    columns: tuple[DesignColumn, ...]
    prior: PriorLike
    levels: tuple[str, ...] = ()       # labels of a vector term's elements (factor levels)
    in_chain: bool = False             # the top of a chain: enters the predictor through the chain

    @property
    def is_vector(self) -> bool:
        return bool(self.levels)


@dataclass(frozen=True, slots=True)
class GroupBlock:
    """Group-level deviations ``(t1 + t2 | plate)``: correlated (LKJ) or a single term."""

    plate: str
    columns: tuple[DesignColumn, ...]   # INTERCEPT for "1"
    sd_priors: tuple[PriorLike, ...]
    cor_prior: PriorLike | None = None  # set when correlated with more than one term

    @property
    def term_labels(self) -> tuple[str, ...]:
        # a renamed intercept (a non-linear parameter's, named after it) keeps its name
        return tuple("1" if c == INTERCEPT else c.name for c in self.columns)

    @property
    def label(self) -> str:
        return f"{' + '.join(self.term_labels)} | {self.plate}"

    @property
    def site(self) -> str:
        return f"r({self.label})"

    def sd_name(self, k: int) -> str:
        return f"sd({self.term_labels[k]} | {self.plate})"

    @property
    def cor_name(self) -> str:
        return f"cor({', '.join(self.term_labels)} | {self.plate})"


@dataclass(frozen=True, slots=True)
class Chain:
    """A hierarchical coefficient chain ``x | g1/g2/...``: innermost plate first."""

    term: str                          # "log(price)" or "Intercept"
    column: DesignColumn
    plates: tuple[str, ...]
    sd_priors: tuple[PriorLike, ...]   # one per plate, same order
    top: str | None                    # the population term it is drawn around; None: around 0

    @property
    def label(self) -> str:
        return "1" if self.column == INTERCEPT else self.term

    def site(self, plate: str) -> str:
        return f"{self.term}[{plate}]"

    def sd_name(self, k: int) -> str:
        return f"sd({self.label} | {self.plates[k]})"


@dataclass(frozen=True, slots=True)
class FamilyParam:
    name: str          # sigma, nu, phi
    prior: PriorLike


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    link: str
    params: tuple[FamilyParam, ...] = ()
    inferred: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    column: str
    trials: str | None = None
    se: str | None = None
    weights: str | None = None


@dataclass(frozen=True, slots=True)
class ModelIR:
    formula: str
    response: Response
    family: Family
    plates: tuple[Plate, ...]
    population: tuple[PopulationTerm, ...]
    groups: tuple[GroupBlock, ...]
    chains: tuple[Chain, ...]
    offsets: tuple[A.Expr, ...] = ()
    nestings: tuple[tuple[str, str], ...] = ()   # (child plate, parent plate) pairs the data must satisfy
    noncentered: bool = True
    centred: tuple[str, ...] = ()      # group-level sites drawn centred all the same (hbm.lowering.centring)

    def plate(self, name: str) -> Plate:
        return next(p for p in self.plates if p.name == name)

    def parameter_names(self) -> tuple[str, ...]:
        """Every name a prior can be set for, in model order."""
        names = [t.name for t in self.population]
        for b in self.groups:
            names += [b.sd_name(k) for k in range(len(b.columns))]
            if b.cor_prior is not None:
                names.append(b.cor_name)
        for c in self.chains:
            names += [c.sd_name(k) for k in range(len(c.plates))]
        names += [p.name for p in self.family.params]
        return tuple(names)

    def prior_list(self) -> tuple[tuple[str, PriorLike], ...]:
        """Every parameter's prior as resolved (the defaults too), by the name ``priors:`` gives it,
        in model order: what a run's spec.yaml records."""
        out = [(t.name, t.prior) for t in self.population]
        for b in self.groups:
            out += [(b.sd_name(k), b.sd_priors[k]) for k in range(len(b.columns))]
            if b.cor_prior is not None:
                out.append((b.cor_name, b.cor_prior))
        for c in self.chains:
            out += [(c.sd_name(k), c.sd_priors[k]) for k in range(len(c.plates))]
        out += [(p.name, p.prior) for p in self.family.params]
        return tuple(out)

    def pretty(self, header: bool = True) -> str:
        """A readable listing: what ``hbm check`` prints (``header=False``: from the plates on)."""
        out = [f"formula   {self.formula}",
               f"response  {self.response.column}" + "".join(
                   f"  {k}={v}" for k, v in (("trials", self.response.trials), ("se", self.response.se),
                                             ("weights", self.response.weights)) if v),
               f"family    {self.family.name} (link: {self.family.link})"
               + ("  [inferred from the data]" if self.family.inferred else ""),
               f"effects   {'non-centred' if self.noncentered else 'centred'}"
               + (f"; centred where the data pin the levels: {', '.join(self.centred)}" if self.centred else "")][: 4 if header else 0]
        parents = dict(self.nestings)
        if self.plates:
            out.append("plates")
        for p in self.plates:
            within = f"  within {parents[p.name]}" if p.name in parents else ""
            out.append(f"  {p.name:<24} {p.size:>9,} levels{within}")
        if self.population:
            out.append("population-level")
        for t in self.population:
            role = "  (top of its chain)" if t.in_chain else ""
            out.append(f"  {t.name:<32} {_dist(t.prior)}{role}")
            if t.is_vector:
                shown = ", ".join(t.levels[:8]) + (f", ... ({len(t.levels)} in all)" if len(t.levels) > 8 else "")
                out.append(f"    levels: {shown}")
        if self.chains:
            out.append("chains (innermost first)")
            for c in self.chains:
                top = c.top or "0"
                links = " <- ".join(f"{c.site(p)}" for p in reversed(c.plates))
                out.append(f"  {c.term}: {top} <- {links}")
                for k, p in enumerate(c.plates):
                    out.append(f"    {c.sd_name(k):<30} {_dist(c.sd_priors[k])}")
        if self.groups:
            out.append("group-level")
            for b in self.groups:
                out.append(f"  ({b.label})")
                for k in range(len(b.columns)):
                    out.append(f"    {b.sd_name(k):<30} {_dist(b.sd_priors[k])}")
                if b.cor_prior is not None:
                    out.append(f"    {b.cor_name:<30} {_dist(b.cor_prior)}")
        if self.offsets:
            out.append("offsets   " + ", ".join(str(o) for o in self.offsets))
        if self.family.params:
            out.append("family parameters")
            for fp in self.family.params:
                out.append(f"  {fp.name:<32} {_dist(fp.prior)}")
        return "\n".join(out)


def _dist(prior: PriorLike) -> str:
    return f"= {prior}" if isinstance(prior, Fixed) else f"~ {prior}"

@dataclass(frozen=True)
class Effect:
    """One group-level value per level of a plate, entering the predictor times a column."""

    owner: str               # the site it comes from: a block's "r(...)" or a chain's "x[plate]"
    index: int               # column of the block's matrix (0 for chains)
    column: ir.DesignColumn  # INTERCEPT or a slope column


def plate_effects(model: ir.ModelIR) -> dict[str, list[Effect]]:
    """Per plate, its effects: intercept-like first, then slopes (the column order of ``Z``)."""
    out: dict[str, list[Effect]] = {p.name: [] for p in model.plates}
    for c in model.chains:
        out[c.plates[0]].append(Effect(c.site(c.plates[0]), 0, c.column))
    for b in model.groups:
        for k, col in enumerate(b.columns):
            out[b.plate].append(Effect(b.site, k, col))
    return {p: sorted(e, key=lambda x: not x.column.is_intercept) for p, e in out.items() if e}


def population_columns(model: ir.ModelIR) -> list[ir.DesignColumn]:
    """Columns of the population design matrix ``X`` (the intercept and chain tops excluded)."""
    return [c for t in model.population if not t.in_chain for c in t.columns if not c.is_intercept]

