"""Posterior predictions for new rows, in the fitting process or from a saved run directory.

    result.predict(new_df)                      # a finished fit
    hbm.pipeline.predict.predict("runs/first", new_df)   # a run directory, in any process
    hbm predict RUN_DIR DATA [--out FILE] [--draws]

New rows are encoded with the fit's own tables (:class:`hbm.data.encode.Encoding`):
grouping levels map to the fit's level indices, ``center()``/``scale()`` use the
fit's means and standard deviations, and a factor's levels must be the fit's.
Nothing is refitted. Each posterior draw gives the linear predictor of every row;
``what`` picks what is summarised: ``"response"`` (a draw of y per posterior
draw: the posterior predictive), ``"mean"`` (the family's mean, E[y]) or ``"eta"``
(the linear predictor). ``groups`` picks the group-level effects that enter: all (the
default), none (``False``: the population-level prediction, what ``hbm effects`` draws),
or the plates named.

A level of a grouping factor that the fit never saw is drawn from its
population, once per posterior draw: the deviations of a group block from
N(0, Sigma) (Sigma from that draw's standard deviations and correlations); a
level of a chain around its parent level's value when the new row's parent
level is known (else around the parent's own draw, and so on up to the
population coefficient). The column ``new_levels`` names the plates whose level
was new for each row ("" when none).

A non-linear formula (``params:``) is predicted the same way: each parameter's
linear predictor from its formula (new levels drawn as above, each parameter's
own), its bound's transform, then the expression in NumPy with the new rows'
data leaves and, where those are infinite (dose 0 in ``log(dose)``), the
expression's limit; ``"eta"`` is the expression (the link scale of the mean).

A run directory holds what this needs beside ``posterior.nc`` (whose group
values are the coefficients themselves, population value included):
``model.json`` (the IR, see :func:`ir_to_dict` and :func:`nonlinear_to_dict`) and ``encoding.json`` (level
labels per plate, transform statistics, factor levels, parent maps of chains).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hbm.frontend import ast as A

from hbm.ir import model as ir
from hbm.ir import nonlinear as NL
from hbm.ir.nonlinear import NonlinearIR, Param, evaluate
from hbm.data.encode_nonlinear import data_leaves
from hbm.vocabulary.functions import NP_OPS, _NP_BOUNDS
from hbm.data.encode import Encoding, column_values
from hbm.ir.model import plate_effects, population_columns
from hbm.errors import HbmError, did_you_mean, os_error
from hbm.frontend.priors import Fixed, Prior
from hbm.data.table import TableInfo, as_dataframe
from hbm.results.summary import outputs_from_inference_data
from hbm.io.rundir import damaged, load_run
from hbm.vocabulary.families import FAMILIES

FORMAT_VERSION = 1
WHAT = ("response", "mean", "eta")
SUMMARY = ("mean", "sd", "q5", "q50", "q95")
_CHUNK = 1 << 22  # draws x rows worked on at a time


# ---------------------------------------------------------------- the IR as JSON

def _expr(e) -> Any:
    if isinstance(e, A.Var):
        return {"var": e.name}
    if isinstance(e, A.Call):
        return {"call": e.func, "arg": _expr(e.arg)}
    if isinstance(e, A.Paren):
        return {"paren": _expr(e.body)}
    if isinstance(e, A.Num):
        return {"num": e.value}
    if isinstance(e, ir.Level):
        return {"level": [e.term, e.column, e.level]}
    raise TypeError(f"cannot save the expression {e!r}")


def _expr_back(d) -> Any:
    if "var" in d:
        return A.Var(d["var"])
    if "call" in d:
        return A.Call(d["call"], _expr_back(d["arg"]))
    if "paren" in d:
        return A.Paren(_expr_back(d["paren"]))
    if "num" in d:
        return A.Num(d["num"])
    if "level" in d:
        return ir.Level(*d["level"])
    raise ValueError(f"unknown expression {d!r}")


def _prior(p) -> Any:
    if p is None:
        return None
    if isinstance(p, Fixed):
        return {"fixed": p.value}
    return {"family": p.family, "args": list(p.args)}


def _prior_back(d):
    if d is None:
        return None
    return Fixed(d["fixed"]) if "fixed" in d else Prior(d["family"], tuple(d["args"]))


def _col(c: ir.DesignColumn) -> dict:
    return {"name": c.name, "parts": [_expr(p) for p in c.parts]}


def _col_back(d) -> ir.DesignColumn:
    return ir.DesignColumn(d["name"], tuple(_expr_back(p) for p in d["parts"]))


def _response_dict(r: ir.Response) -> dict:
    return {"column": r.column, "trials": r.trials, "se": r.se, "weights": r.weights}


def _family_dict(f: ir.Family) -> dict:
    return {"name": f.name, "link": f.link, "inferred": f.inferred,
            "params": [{"name": p.name, "prior": _prior(p.prior)} for p in f.params]}


def ir_to_dict(m: ir.ModelIR) -> dict:
    """The IR as plain JSON-able data (:func:`ir_from_dict` gives back an equal IR)."""
    return {
        "formula": m.formula,
        "response": _response_dict(m.response),
        "family": _family_dict(m.family),
        "plates": [{"name": p.name, "columns": list(p.columns), "size": p.size} for p in m.plates],
        "population": [{"name": t.name, "columns": [_col(c) for c in t.columns], "prior": _prior(t.prior),
                        "levels": list(t.levels), "in_chain": t.in_chain} for t in m.population],
        "groups": [{"plate": b.plate, "columns": [_col(c) for c in b.columns],
                    "sd_priors": [_prior(p) for p in b.sd_priors], "cor_prior": _prior(b.cor_prior)}
                   for b in m.groups],
        "chains": [{"term": c.term, "column": _col(c.column), "plates": list(c.plates),
                    "sd_priors": [_prior(p) for p in c.sd_priors], "top": c.top} for c in m.chains],
        "offsets": [_expr(o) for o in m.offsets],
        "nestings": [list(n) for n in m.nestings],
        "noncentered": m.noncentered,
        "centred": list(m.centred),
    }


def ir_from_dict(d: dict) -> ir.ModelIR:
    fam = d["family"]
    return ir.ModelIR(
        formula=d["formula"],
        response=ir.Response(**d["response"]),
        family=ir.Family(fam["name"], fam["link"],
                         tuple(ir.FamilyParam(p["name"], _prior_back(p["prior"])) for p in fam["params"]),
                         fam["inferred"]),
        plates=tuple(ir.Plate(p["name"], tuple(p["columns"]), p["size"]) for p in d["plates"]),
        population=tuple(ir.PopulationTerm(t["name"], tuple(_col_back(c) for c in t["columns"]),
                                           _prior_back(t["prior"]), tuple(t["levels"]), t["in_chain"])
                         for t in d["population"]),
        groups=tuple(ir.GroupBlock(b["plate"], tuple(_col_back(c) for c in b["columns"]),
                                   tuple(_prior_back(p) for p in b["sd_priors"]), _prior_back(b["cor_prior"]))
                     for b in d["groups"]),
        chains=tuple(ir.Chain(c["term"], _col_back(c["column"]), tuple(c["plates"]),
                              tuple(_prior_back(p) for p in c["sd_priors"]), c["top"]) for c in d["chains"]),
        offsets=tuple(_expr_back(o) for o in d["offsets"]),
        nestings=tuple(tuple(n) for n in d["nestings"]),
        noncentered=d["noncentered"],
        centred=tuple(d.get("centred", ())),
    )


def _nl_expr(e) -> Any:
    if isinstance(e, NL.Const):
        return {"const": e.value}
    if isinstance(e, NL.Param):
        return {"param": e.name}
    if isinstance(e, NL.Column):
        return {"column": e.name}
    if isinstance(e, NL.Data):
        return {"data": _nl_expr(e.expr), "sign": e.sign}
    if isinstance(e, NL.Op):
        return {"op": e.op, "args": [_nl_expr(a) for a in e.args]}
    raise TypeError(f"cannot save the expression {e!r}")


def _nl_expr_back(d) -> Any:
    if "const" in d:
        return NL.Const(float(d["const"]))
    if "param" in d:
        return NL.Param(d["param"])
    if "column" in d:
        return NL.Column(d["column"])
    if "data" in d:
        return NL.Data(_nl_expr_back(d["data"]), int(d["sign"]))
    if "op" in d:
        return NL.Op(d["op"], tuple(_nl_expr_back(a) for a in d["args"]))
    raise ValueError(f"unknown expression {d!r}")


def nonlinear_to_dict(m: NonlinearIR) -> dict:
    """A non-linear IR as plain JSON-able data: the expression, its limits (infinities as their
    sign), and each parameter's formula with its IR (:func:`ir_to_dict`)."""
    return {
        "formula": m.formula,
        "response": _response_dict(m.response),
        "family": _family_dict(m.family),
        "expr": _nl_expr(m.expr),
        "params": [{"name": p.name, "formula": p.formula, "bound": p.bound, "model": ir_to_dict(p.model)}
                   for p in m.params],
        "limits": [{"infinite": [[t, 1 if v > 0 else -1] for t, v in lim.infinite], "rows": lim.rows,
                    "expr": _nl_expr(lim.expr)} for lim in m.limits],
        "noncentered": m.noncentered,
    }


def nonlinear_from_dict(d: dict) -> NonlinearIR:
    fam = d["family"]
    return NonlinearIR(
        formula=d["formula"],
        response=ir.Response(**d["response"]),
        family=ir.Family(fam["name"], fam["link"],
                         tuple(ir.FamilyParam(p["name"], _prior_back(p["prior"])) for p in fam["params"]),
                         fam["inferred"]),
        expr=_nl_expr_back(d["expr"]),
        params=tuple(NL.NonlinearParam(p["name"], p["formula"], p["bound"], ir_from_dict(p["model"]))
                     for p in d["params"]),
        limits=tuple(NL.Limit(tuple((t, s * math.inf) for t, s in lim["infinite"]), int(lim["rows"]),
                              _nl_expr_back(lim["expr"])) for lim in d["limits"]),
        noncentered=d["noncentered"],
    )


def model_to_dict(m) -> dict:
    """``model.json``'s model: ``{"ir": ...}`` for a linear IR, ``{"nonlinear": ...}`` for a non-linear one."""
    return {"nonlinear": nonlinear_to_dict(m)} if isinstance(m, NonlinearIR) else {"ir": ir_to_dict(m)}


def model_from_dict(d: dict):
    return nonlinear_from_dict(d["nonlinear"]) if "nonlinear" in d else ir_from_dict(d["ir"])


def parent_maps(model) -> dict[str, np.ndarray]:
    """The chains' parent maps of a CompiledModel (each parameter's, for a non-linear formula)."""
    if isinstance(model.ir, NonlinearIR):
        out = {}
        for c in model.consts.params.values():
            out.update({k: np.asarray(v) for k, v in c.parent.items()})
        return out
    return {k: np.asarray(v) for k, v in model.consts.parent.items()}


def encoding_to_dict(enc: Encoding, parents: dict | None = None) -> dict:
    """The encoding (and the chains' parent maps, child level -> parent level index) as JSON-able data."""
    return {"labels": {k: list(v) for k, v in enc.labels.items()},
            "stats": {k: list(v) for k, v in enc.stats.items()},
            "factor_levels": {k: list(v) for k, v in enc.factor_levels.items()},
            "ranges": {k: list(v) for k, v in enc.ranges.items()},
            "parents": {k: np.asarray(v).astype(int).tolist() for k, v in (parents or {}).items()}}


def _encoding_from_dict(e: dict) -> tuple[Encoding, dict[str, np.ndarray]]:
    """``encoding.json`` back: the :class:`Encoding` and the parent maps (a wrong shape raises
    KeyError, TypeError or ValueError)."""
    def table(key, required=True) -> dict:
        v = e[key] if required else e.get(key, {})
        if not isinstance(v, dict):
            raise TypeError(f"'{key}' should be a mapping, found {json.dumps(v)[:40]}")
        for k, x in v.items():
            if not isinstance(x, list):
                raise TypeError(f"'{key}.{k}' should be a list, found {json.dumps(x)[:40]}")
        return v
    enc = Encoding({k: list(v) for k, v in table("labels").items()},
                   {k: tuple(v) for k, v in table("stats").items()},
                   {k: list(v) for k, v in table("factor_levels").items()},
                   {k: tuple(float(x) for x in v) for k, v in table("ranges", required=False).items()})
    return enc, {k: np.asarray(v, np.int64) for k, v in table("parents", required=False).items()}


def run_files(result) -> dict[str, str]:
    """``model.json`` and ``encoding.json`` of a :class:`hbm.pipeline.fit.FitResult`, for its run directory."""
    model = result.model
    parents = parent_maps(model)
    return {
        "model.json": json.dumps({"version": FORMAT_VERSION, **model_to_dict(model.ir)}, indent=1) + "\n",
        "encoding.json": json.dumps({"version": FORMAT_VERSION, **encoding_to_dict(model.encoding, parents)})
        + "\n",
    }


# ---------------------------------------------------------------- the predictor

@dataclass
class Predictor:
    """A fitted model's IR, encoding and posterior draws: all that predicting needs."""

    ir: ir.ModelIR | NonlinearIR
    encoding: Encoding
    parents: dict[str, np.ndarray]               # "child>parent" -> parent level of each child level
    draws: dict[tuple[str, tuple], np.ndarray]   # (base, dims) -> (draws, *shape), chains flattened

    @classmethod
    def from_outputs(cls, model_ir, enc: Encoding, parents: dict, outputs) -> "Predictor":
        draws = {}
        for v in outputs.vars:   # kept in their own precision (float32): the largest arrays here
            a = np.asarray(v.values)
            draws[(v.base, tuple(v.dims))] = a.reshape((-1,) + a.shape[2:])
        return cls(model_ir, enc, {k: np.asarray(p) for k, p in parents.items()}, draws)

    @classmethod
    def from_fit(cls, result) -> "Predictor":
        m = result.model
        return cls.from_outputs(m.ir, m.encoding, parent_maps(m), result.outputs)

    @classmethod
    def from_run(cls, run_dir: Path | str) -> "Predictor":
        rec = load_run(run_dir)
        p = rec.path
        docs = {}
        for name in ("model.json", "encoding.json"):
            f = p / name
            if not f.is_file():
                raise HbmError(f"run directory {p} has no {name}, which predicting needs",
                               where=str(f), hint="runs written by an older hbm lack it: fit the model again")
            try:
                docs[name] = json.loads(f.read_text(encoding="utf-8"))
            except OSError as e:
                raise os_error(e, "cannot read", f) from None
            except ValueError as e:
                raise damaged(p, name, f"is not valid JSON ({e})") from None
            if not isinstance(docs[name], dict):
                raise damaged(p, name, f"holds a {type(docs[name]).__name__}, not a JSON object")
            if docs[name].get("version") != FORMAT_VERSION:
                raise damaged(p, name, f"has format version {docs[name].get('version')!r}, expected "
                                       f"{FORMAT_VERSION}")
        try:
            model_ir = model_from_dict(docs["model.json"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise damaged(p, "model.json", f"does not describe a model ({type(err).__name__}: {err})") from None
        try:
            enc, parents = _encoding_from_dict(docs["encoding.json"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise damaged(p, "encoding.json", f"does not describe an encoding ({type(err).__name__}: {err})"
                          ) from None
        idata = rec.idata()
        try:
            outputs = outputs_from_inference_data(idata)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise damaged(p, "posterior.nc", f"holds no usable draws ({type(err).__name__}: {err})") from None
        return cls.from_outputs(model_ir, enc, parents, outputs)

    # ---- draws by name
    def _get(self, base: str, dims: tuple = ()) -> np.ndarray:
        try:
            return self.draws[(base, tuple(dims))]
        except KeyError:
            raise HbmError(f"the posterior has no draws of '{base}'" + (f" by {', '.join(dims)}" if dims else ""),
                           hint="posterior.nc does not belong to this model (was the run directory edited?)"
                           ) from None

    @property
    def n_draws(self) -> int:
        return next(iter(self.draws.values())).shape[0]

    # ---- encoding new rows
    def _codes(self, info: TableInfo, needed) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        """Per plate in ``needed``: each row's level index (the fit's, or ``size + j`` for the j-th new
        level) and the new levels' labels."""
        codes, new = {}, {}
        for p in self.ir.plates:
            if p.name not in needed:
                continue
            row_codes, labels = info.levels(p.columns)
            known = {lab: i for i, lab in enumerate(self.encoding.labels[p.name])}
            fresh = [lab for lab in labels if lab not in known]
            index = {**known, **{lab: len(known) + j for j, lab in enumerate(fresh)}}
            lookup = np.array([index[lab] for lab in labels], np.int64)
            codes[p.name], new[p.name] = lookup[row_codes], fresh
        return codes, new

    def _check_factors(self, info: TableInfo) -> None:
        for col, fit_levels in self.encoding.factor_levels.items():
            _, labels = info.levels((col,))
            unseen = [lab for lab in labels if lab not in set(fit_levels)]
            if unseen:
                shown = ", ".join(unseen[:5]) + (", ..." if len(unseen) > 5 else "")
                raise HbmError(f"column '{col}' has levels the fit never saw: {shown}",
                               where=f"column '{col}'",
                               hint=f"a factor has coefficients only for the fit's levels ({', '.join(fit_levels[:8])}"
                                    + (", ..." if len(fit_levels) > 8 else "") + "); drop those rows, or "
                                    "model the column as a grouping factor, e.g. (1 | " + col + ")")

    # ---- group values, seen and new
    def _kept_plates(self, groups) -> tuple[frozenset, frozenset]:
        """(the plates whose group-level values enter, the plates whose columns the rows need) for
        ``predict(groups=...)``: a chain needs its plates from the outermost down to the innermost kept one."""
        names = [p.name for p in self.ir.plates]
        if groups is True:
            keep = frozenset(names)
        elif groups is False or groups is None:
            keep = frozenset()
        else:
            keep = frozenset([groups] if isinstance(groups, str) else groups)
            unknown = sorted(keep - set(names))
            if unknown:
                raise HbmError(f"'{unknown[0]}' is not a grouping factor of the model",
                               hint=(did_you_mean(unknown[0], names) or "")
                               + f" the grouping factors are: {', '.join(names) or 'none'}")
        needed = set(keep)
        for m in _linear_parts(self.ir):
            for c in m.chains:
                kept = [k for k, p in enumerate(c.plates) if p in keep]
                if kept:
                    needed.update(c.plates[kept[0]:])
        return keep, frozenset(needed)

    def _block_tables(self, m: ir.ModelIR, codes, new, rng, keep) -> dict[str, dict[tuple[str, int], np.ndarray]]:
        """(block site, column) -> deviations (draws, size + new) for every block of ``m`` on a kept plate."""
        pop = {t.name: t for t in m.population}
        out: dict[tuple[str, int], np.ndarray] = {}
        S = self.n_draws
        for b in m.groups:
            if b.plate not in keep:
                continue
            K = len(b.columns)
            devs = []
            for col in b.columns:
                v = self._get(col.name, (b.plate,))
                t = pop.get(col.name)
                if t is not None and not t.is_vector:  # reported values are population + deviation
                    v = v.astype(np.float64) - self._get(t.name).astype(np.float64)[:, None]
                devs.append(v)
            n_new = len(new[b.plate])
            if n_new:
                sds = np.stack([self._get(b.sd_name(k)) for k in range(K)], -1)      # (S, K)
                z = rng.standard_normal((S, n_new, K))
                if b.cor_prior is not None and K > 1:
                    cor = np.broadcast_to(np.eye(K), (S, K, K)).copy()
                    labels = b.term_labels
                    for i in range(K):
                        for j in range(i + 1, K):
                            cor[:, i, j] = cor[:, j, i] = self._get(f"cor({labels[i]}, {labels[j]} | {b.plate})")
                    chol = _cholesky(cor)
                    z = np.einsum("sij,snj->sni", chol, z)
                fresh = z * sds[:, None, :]
                devs = [np.concatenate([d, fresh[:, :, k]], axis=1) for k, d in enumerate(devs)]
            for k, d in enumerate(devs):
                out[(b.site, k)] = d
        return out

    def _chain_tables(self, m: ir.ModelIR, codes, new, rng, keep) -> dict[str, tuple[np.ndarray, str | None]]:
        """Chain site of the innermost plate -> (values (draws, size + new), their plate) for every chain
        of ``m``: the values at its innermost kept plate, or (its population coefficient (draws, 1), None)
        where no plate of it is kept (a chain drawn around 0: absent)."""
        out = {}
        S = self.n_draws
        for c in m.chains:
            above = self._get(c.top)[:, None] if c.top else np.zeros((S, 1))
            kept = [k for k, p in enumerate(c.plates) if p in keep]
            if not kept:
                if c.top:
                    out[c.site(c.plates[0])] = (above, None)
                continue
            above_codes = None   # each row's level in the plate above (None: the population)
            for k in reversed(range(kept[0], len(c.plates))):
                plate = c.plates[k]
                known = self._get(c.term, (plate,))
                fresh_labels = new[plate]
                G = known.shape[1]
                row = codes[plate]
                if above_codes is not None:
                    self._check_parents(c, k, row, above_codes, G)
                if fresh_labels:
                    if above_codes is None:
                        loc = np.broadcast_to(above[:, :1], (S, len(fresh_labels)))
                    else:
                        parent = np.zeros(len(fresh_labels), np.int64)
                        parent[row[row >= G] - G] = above_codes[row >= G]
                        loc = above[:, parent]
                    sd = self._get(c.sd_name(k))[:, None]
                    known = np.concatenate([known, loc + sd * rng.standard_normal(loc.shape)], axis=1)
                above, above_codes = known, row
            out[c.site(c.plates[0])] = (above, c.plates[kept[0]])
        return out

    def _check_parents(self, c: ir.Chain, k: int, row, above_codes, G: int) -> None:
        """Rows must keep the chain's nesting: a level sits in one level of the plate above,
        and a level the fit saw sits where it sat in the fit."""
        plate, parent_plate = c.plates[k], c.plates[k + 1]
        labels = self.encoding.labels[plate] + ["?"] * max(0, int(row.max()) + 1 - G)
        pairs = np.unique(np.stack([row, above_codes], 1), axis=0)
        counts = np.bincount(pairs[:, 0])
        bad = np.flatnonzero(counts > 1)
        if bad.size:
            raise HbmError(f"'{plate}' is not nested in '{parent_plate}' in the new data: "
                           f"{bad.size} levels sit in several {parent_plate} levels",
                           where="data", hint="each level must sit inside exactly one level of the next group")
        fit_parent = self.parents.get(f"{plate}>{parent_plate}")
        if fit_parent is None:
            return
        seen = pairs[pairs[:, 0] < G]
        moved = seen[fit_parent[seen[:, 0]] != seen[:, 1]]
        if moved.size:
            i, j = moved[0]
            outer = self.encoding.labels[parent_plate]
            where_now = outer[j] if j < len(outer) else "a level the fit never saw"
            raise HbmError(f"level '{labels[i]}' of '{plate}' sits in {parent_plate} '{outer[fit_parent[i]]}' "
                           f"in the fit but in {where_now} in the new data",
                           where="data", hint=f"{len(moved)} levels moved; check the {parent_plate} column")

    # ---- predicting
    def predict(self, table, *, what: str = "response", seed: int = 0, draws: bool = False,
                max_draws: int | None = None, groups=True):
        """Summaries per row (a DataFrame: mean, sd, q5, q50, q95, new_levels), or with
        ``draws=True`` the draws themselves, an array (rows, draws).

        ``groups``: the group-level values that enter. True: all (the default). False: none, the
        population-level prediction (brms's ``re_formula = NA``): group deviations at zero, a chain at its
        population coefficient, no grouping columns needed. Plate names: those plates' values only (a
        chain's at its innermost named plate; the table needs the columns of its plates from there out)."""
        if what not in WHAT:
            raise HbmError(f"unknown prediction '{what}'", hint=(did_you_mean(what, WHAT) or "")
                           + f" choose one of {', '.join(WHAT)}")
        df = as_dataframe(table)
        info = TableInfo(df, self.ir.formula, stats=self.encoding.stats)
        self._check_factors(info)
        m = self.ir
        rng = np.random.default_rng(seed)
        keep, needed = self._kept_plates(groups)
        codes, new = self._codes(info, needed)

        S = self.n_draws
        sel = None
        if max_draws is not None and max_draws < S:
            sel = np.linspace(0, S - 1, max_draws).round().astype(int)
        pick = (lambda a: a) if sel is None else (lambda a: a[sel])
        n_draws = S if sel is None else len(sel)
        if isinstance(m, NonlinearIR):
            predictor = self._nonlinear(m, info, codes, new, rng, pick, n_draws, keep)
        else:
            predictor = self._linear(m, info, codes, new, rng, pick, n_draws, keep)
        aux = {p.name: pick(self._get(p.name)) for p in m.family.params}
        extra = self._extra(info)

        n = info.n
        chunk = max(1, _CHUNK // n_draws)
        key = None
        out = np.empty((n, n_draws), np.float64) if draws else np.empty((n, len(SUMMARY)))
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            eta = predictor(rows)
            if what != "eta":
                if key is None:
                    import jax
                    key = jax.random.PRNGKey(seed)
                eta = self._response(eta, aux, {k: v[rows] for k, v in extra.items()}, what,
                                     jax.random.fold_in(key, start))
            if draws:
                out[rows] = eta.T
            else:
                q = np.quantile(eta, (0.05, 0.5, 0.95), axis=0)
                sd = eta.std(axis=0, ddof=1) if n_draws > 1 else np.zeros(eta.shape[1])
                out[rows] = np.stack([eta.mean(axis=0), sd, q[0], q[1], q[2]], axis=1)
        if draws:
            return out
        res = pd.DataFrame(out, columns=list(SUMMARY), index=df.index)
        res["new_levels"] = _new_level_names(m, codes, n)
        return res

    def _linear(self, m: ir.ModelIR, info: TableInfo, codes, new, rng, pick, n_draws: int, keep):
        """The linear predictor of ``m`` with the group-level values of the plates in ``keep``: a function of
        a slice of the rows giving (draws, rows)."""
        blocks = self._block_tables(m, codes, new, rng, keep)
        chains = self._chain_tables(m, codes, new, rng, keep)
        intercept, coefs = None, []
        for t in m.population:
            if t.in_chain:
                continue
            v = self._get(t.name, (t.name,) if t.is_vector else ())
            if len(t.columns) == 1 and t.columns[0].is_intercept:
                intercept = pick(v)
            else:
                coefs.append(pick(v).reshape(n_draws, -1))
        cols = population_columns(m)
        X = np.stack([column_values(c, info) for c in cols], axis=1) if cols else None
        b = np.concatenate(coefs, axis=1) if coefs else None
        offset = np.sum([info.numeric(o) for o in m.offsets], axis=0) if m.offsets else None
        terms = []  # (values (S, levels), row codes, multiplier per row or None)
        for plate, effs in plate_effects(m).items():
            for e in effs:
                if e.owner in chains:
                    vals, at = chains[e.owner]
                    idx = codes[at] if at is not None else np.zeros(info.n, np.int64)
                elif (e.owner, e.index) in blocks:
                    vals, idx = blocks[(e.owner, e.index)], codes[plate]
                else:
                    continue     # a plate left out (groups=...), or a chain around 0 with none of its plates
                mult = None if e.column.is_intercept else column_values(e.column, info)
                terms.append((pick(vals), idx, mult))

        def eta_of(rows: slice) -> np.ndarray:
            eta = np.zeros((n_draws, rows.stop - rows.start))
            if intercept is not None:
                eta += intercept[:, None]
            if b is not None:
                eta += b @ X[rows].T
            if offset is not None:
                eta += offset[rows]
            for vals, idx, mult in terms:
                g = vals[:, idx[rows]]
                eta += g if mult is None else g * mult[rows]
            return eta
        return eta_of

    def _nonlinear(self, nl: NonlinearIR, info: TableInfo, codes, new, rng, pick, n_draws: int, keep):
        """The expression of a non-linear IR (link scale): each parameter's value from its formula's
        linear predictor (:meth:`_linear`) and its bound, the data leaves of the new rows, and the
        limits where those are infinite. A function of a slice of the rows giving (draws, rows)."""
        parts = {}
        for p in nl.params:
            if p.direct:     # the parameter itself, one value per draw
                v = pick(self._get(p.name)).astype(np.float64)[:, None]
                parts[p.name] = (lambda rows, v=v: v)
                continue
            lin = self._linear(p.model, info.view(f"{p.name} ~ {p.formula}"), codes, new, rng, pick, n_draws, keep)
            bound = _NP_BOUNDS.get(p.bound)
            parts[p.name] = lin if bound is None else (lambda rows, lin=lin, bound=bound: bound(lin(rows)))
        leaves, limits = data_leaves(nl, info)

        def eta_of(rows: slice) -> np.ndarray:
            values = {name: f(rows) for name, f in parts.items()}

            def leaf(e):
                return values[e.name] if isinstance(e, Param) else leaves[e.text][rows][None, :]
            with np.errstate(over="ignore"):
                out = evaluate(nl.expr, NP_OPS, leaf)
                for lim in nl.limits:
                    mask = limits[lim.key][rows]
                    if mask.any():
                        out = np.where(mask[None, :], evaluate(lim.expr, NP_OPS, leaf), out)
            return np.broadcast_to(np.asarray(out, np.float64), (n_draws, rows.stop - rows.start))
        return eta_of

    def _extra(self, info: TableInfo) -> dict[str, np.ndarray]:
        extra = {}
        r = self.ir.response
        for key, col in (("trials", r.trials), ("se", r.se)):
            if col:
                if col not in info.df.columns:
                    raise HbmError(f"the new data needs the column '{col}' ({key}() in the formula) to predict",
                                   where="data", hint=did_you_mean(col, info.columns))
                extra[key] = info.numeric(A.Var(col))
        return extra

    def _response(self, eta, aux, extra, what, key):
        import jax.numpy as jnp
        fam = FAMILIES[self.ir.family.name]
        d = fam.make(jnp.asarray(eta, jnp.float32), self.ir.family.link,
                     {k: jnp.asarray(v, jnp.float32)[:, None] for k, v in aux.items()},
                     {k: jnp.asarray(v, jnp.float32) for k, v in extra.items()})
        return np.asarray(d.mean if what == "mean" else d.sample(key), np.float64)


def _linear_parts(m) -> list[ir.ModelIR]:
    """The linear IRs of a model: itself, or a non-linear formula's parameters' formulas."""
    return [p.model for p in m.params if not p.direct] if isinstance(m, NonlinearIR) else [m]


def _cholesky(cor: np.ndarray) -> np.ndarray:
    """Cholesky factors of correlation matrices rebuilt from rounded draws (a little jitter if needed)."""
    eye = np.eye(cor.shape[-1])
    for jitter in (0.0, 1e-8, 1e-6, 1e-4):
        try:
            return np.linalg.cholesky(cor + jitter * eye)
        except np.linalg.LinAlgError:
            continue
    raise HbmError("the posterior's correlation matrices are not positive definite",
                   hint="posterior.nc may be damaged")


def _new_level_names(m, codes: dict[str, np.ndarray], n: int) -> list[str]:
    flags = [(p.name, codes[p.name] >= p.size) for p in m.plates if p.name in codes]
    names = [[] for _ in range(n)]
    for name, flag in flags:
        for i in np.flatnonzero(flag):
            names[i].append(name)
    return [",".join(x) for x in names]


# ---------------------------------------------------------------- entry points

def predict(source, table, *, what: str = "response", seed: int = 0, draws: bool = False):
    """Predict ``table``'s rows from ``source``: a run directory or a :class:`hbm.pipeline.fit.FitResult`."""
    pred = Predictor.from_run(source) if isinstance(source, (str, Path)) else Predictor.from_fit(source)
    return pred.predict(table, what=what, seed=seed, draws=draws)


def draws_frame(draws: np.ndarray, index=None) -> pd.DataFrame:
    """Raw draws (rows, draws) as a DataFrame with one column per draw: draw_0, draw_1, ..."""
    return pd.DataFrame(draws, columns=[f"draw_{i}" for i in range(draws.shape[1])], index=index)
