"""Encode a table into the arrays a lowered model reads, once, outside the model.

The layout is decided here: per-row arrays (response, population design matrix,
one int32 index and one multiplier matrix per plate) and constants (parent maps
of chains). ``plate_effects`` fixes the order in which the lowering stacks
group-level values, so both stages agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hbm.ir import model as ir
from hbm.data.table import TableInfo
from hbm.ir.model import plate_effects, population_columns
from hbm.frontend.ast import Var


@dataclass(frozen=True)
class Encoding:
    """What maps data to the model and back: level labels, transform statistics."""

    labels: dict[str, list[str]]               # plate -> level labels
    stats: dict[str, tuple[float, float]]      # center()/scale() statistics, by expression text
    factor_levels: dict[str, list[str]]        # categorical column -> its levels in the fit


def encode(model: ir.ModelIR, info: TableInfo) -> tuple[dict, dict, Encoding]:
    """Return (rows, consts, encoding): per-row arrays, model constants, and the level tables."""
    n = info.n
    rows: dict = {}
    resp = model.response
    rows["y"] = info.numeric(_var(resp.column)).astype(np.float32)
    for key in ("trials", "se", "weights"):
        col = getattr(resp, key)
        if col:
            rows[key] = info.numeric(_var(col)).astype(np.float32)
    if model.offsets:
        rows["offset"] = np.sum([info.numeric(o) for o in model.offsets], axis=0).astype(np.float32)
    cols = population_columns(model)
    if cols:
        rows["X"] = np.stack([column_values(c, info) for c in cols], axis=1).astype(np.float32)
    rows["idx"], rows["Z"] = {}, {}
    labels = {}
    for plate, effects in plate_effects(model).items():
        p = model.plate(plate)
        codes, labels[plate] = info.levels(p.columns)
        rows["idx"][plate] = codes.astype(np.int32)
        slopes = [e.column for e in effects if not e.column.is_intercept]
        if slopes:
            rows["Z"][plate] = np.stack([column_values(c, info) for c in slopes], axis=1).astype(np.float32)
    for p in model.plates:
        labels.setdefault(p.name, info.levels(p.columns)[1])
    consts = encode_consts(model, info)
    factors = {}
    for t in model.population:
        for c in t.columns:
            for part in c.parts:
                if isinstance(part, ir.Level):
                    factors[part.column] = info.levels((part.column,))[1]
    assert all(len(v) == n for k, v in rows.items() if not isinstance(v, dict))
    return rows, consts, Encoding(labels, dict(info.stats), factors)


def encode_consts(model: ir.ModelIR, info: TableInfo) -> dict:
    """Model constants: the parent level of every level of a nested plate (from all the rows:
    a process holding a share of them passes a view of the whole table, ``hbm.pipeline.distributed``)."""
    consts = {"parent": {}}
    for child, parent in model.nestings:
        ci, _ = info.levels(model.plate(child).columns)
        co, _ = info.levels(model.plate(parent).columns)
        m = np.zeros(model.plate(child).size, np.int32)
        m[ci] = co
        consts["parent"][f"{child}>{parent}"] = m
    return consts


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
