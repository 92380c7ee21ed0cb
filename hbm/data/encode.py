"""Encode a table into the arrays a lowered model reads, once, outside the model.

The layout is decided here: per-row arrays (response, population design matrix,
one int32 index and one multiplier matrix per plate) and constants (parent maps
of chains). ``plate_effects`` fixes the order in which the lowering stacks
group-level values, so both stages agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hbm.data.arrays import Consts, Rows
from hbm.ir import model as ir
from hbm.data.table import TableInfo
from hbm.ir.model import plate_effects, population_columns
from hbm.frontend.ast import Var
from hbm.ir.columns import formula_columns


@dataclass(frozen=True)
class Encoding:
    """What maps data to the model and back: level labels, transform statistics."""

    labels: dict[str, list[str]]               # plate -> level labels
    stats: dict[str, tuple[float, float]]      # center()/scale() statistics, by expression text
    factor_levels: dict[str, list[str]]        # categorical column -> its levels in the fit
    ranges: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # numeric column -> min, mean, max


def encode(model: ir.ModelIR, info: TableInfo) -> tuple[Rows, Consts, Encoding]:
    """Return (rows, consts, encoding): per-row arrays, model constants, and the level tables."""
    resp = model.response
    extras = {key: info.numeric(_var(getattr(resp, key))).astype(np.float32)
              for key in ("trials", "se", "weights") if getattr(resp, key)}
    offset = (np.sum([info.numeric(o) for o in model.offsets], axis=0).astype(np.float32)
              if model.offsets else None)
    cols = population_columns(model)
    X = np.stack([column_values(c, info) for c in cols], axis=1).astype(np.float32) if cols else None
    idx, Z, labels = {}, {}, {}
    for plate, effects in plate_effects(model).items():
        p = model.plate(plate)
        codes, labels[plate] = info.levels(p.columns)
        idx[plate] = codes.astype(np.int32)
        slopes = [e.column for e in effects if not e.column.is_intercept]
        if slopes:
            Z[plate] = np.stack([column_values(c, info) for c in slopes], axis=1).astype(np.float32)
    for p in model.plates:
        labels.setdefault(p.name, info.levels(p.columns)[1])
    factors = {}
    for t in model.population:
        for c in t.columns:
            for part in c.parts:
                if isinstance(part, ir.Level):
                    factors[part.column] = info.levels((part.column,))[1]
    y = info.numeric(_var(resp.column)).astype(np.float32)
    rows = Rows(y=y, X=X, offset=offset, idx=idx, Z=Z, **extras)
    return rows, encode_consts(model, info), Encoding(labels, dict(info.stats), factors, column_ranges(model, info))


def column_ranges(model: ir.ModelIR, info: TableInfo) -> dict[str, tuple[float, float, float]]:
    """(min, mean, max) of every numeric column the formula's predictors read, in the data's own units
    (what ``hbm effects`` draws its grids over and holds other predictors at)."""
    cols = formula_columns(model)
    out = {}
    for name in dict.fromkeys([*cols.numeric, *cols.group_only, *cols.extras]):
        x = info.numeric(Var(name))
        out[name] = (float(x.min()), float(x.mean()), float(x.max()))
    return out


def encode_consts(model: ir.ModelIR, info: TableInfo) -> Consts:
    """Model constants: the parent level of every level of a nested plate (from all the rows:
    a process holding a share of them passes a view of the whole table, ``hbm.pipeline.distributed``)."""
    parent = {}
    for child, parent_plate in model.nestings:
        ci, _ = info.levels(model.plate(child).columns)
        co, _ = info.levels(model.plate(parent_plate).columns)
        m = np.zeros(model.plate(child).size, np.int32)
        m[ci] = co
        parent[f"{child}>{parent_plate}"] = m
    return Consts(parent=parent)


def column_values(col: ir.DesignColumn, info: TableInfo) -> np.ndarray:
    """The values of one design column: the product of its numeric parts and level indicators."""
    x = np.ones(info.n)
    for part in col.parts:
        if isinstance(part, ir.Level):
            codes, labels = info.levels((part.column,))
            x = x * (codes == labels.index(part.level)) if part.level in labels else np.zeros(info.n)
        else:
            x = x * info.numeric(part)
    return x


def _var(name: str):
    return Var(name)
