"""The fit layout: how the row arrays of ``hbm.data.encode`` are arranged for the likelihood.

``encode`` gives flat per-row arrays in the data's order (the documented
interface). For fitting, the likelihood's cost on CPU is the gradient's
scatter-add of per-row terms into the group tables (``../shared/bench``), so
when the rows form a (nearly) complete panel the layout turns the scatters
into reductions:

- **panel**: a plate whose levels all have about the same number of rows
  (``F`` levels, at most ``T`` rows each, at least ``MIN_FILL`` of the
  ``F x T`` cells used) becomes the block row (of several, the one with the
  fewest empty cells and per-cell gathers, then the finest); every row array becomes an
  ``(F, T)`` block (empty cells masked). Within a block row, rows are ordered
  by the other plates' codes, so that plates that vary along a block row
  repeat the same few patterns (category-by-period codes are the same for
  every product of a category). Each plate then enters as

  ============ ============================================ ==============================
  plan         arrays                                        gradient
  ============ ============================================ ==============================
  ``row``      ``rows["idx"][p]``: a code per block row      a sum over T, then F scatters
  ``pattern``  ``consts["pattern"][p]`` ``(G, T)`` codes,    G x T scatters, then F row
               ``rows["pattern"][p]``: a pattern per row      scatters of T-vectors
  ``cell``     ``rows["idx"][p]``: ``(F, T)`` codes           n scatters (as flat)
  ============ ============================================ ==============================

- **flat**: the rows as ``encode`` gives them (order kept: on CPU, sorting
  rows by group made the flat gather's gradient slower, not faster); also
  what "auto" keeps below ``MIN_ROWS`` rows, where a step is cheap either way
  and bit-for-bit the same numerics as before matter more.

The data-only part of the log density (``-lgamma(y + 1)`` for Poisson) is
summed here once per block row (``rows["lp0"]``). The layout is planned from
the grouping codes of *all* rows (``plan_layout``) and built for any subset
of them (``build_rows``), so processes that each hold a share of the rows
build blocks that agree (``hbm.pipeline.distributed``).

Measured (value and grad of the seed model's likelihood, 1.56M rows, 2-core
CPU): flat stacked gather 50-100 ms, flat per-column gathers 12-20 ms, panel
with a pattern for category-by-period 6 ms.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from hbm.ir import model as ir
from hbm.vocabulary.families import FUSED

MIN_FILL = 0.8      # panel only when at least this share of the F x T cells hold a row
MIN_WIDTH = 2       # and block rows hold at least this many rows on average
MIN_ROWS = 20_000   # "auto": below this a step costs little either way; keep the rows as they are
LAYOUTS = ("auto", "panel", "flat")


def layout_choice(kind: str | None = None) -> str:
    """The layout asked for: ``kind``, else ``HBM_LAYOUT`` (auto | panel | flat), else auto."""
    kind = kind or os.environ.get("HBM_LAYOUT") or "auto"
    if kind not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {kind!r}")
    return kind


@dataclass(frozen=True)
class PlatePlan:
    kind: str                          # "row" | "pattern" | "cell"
    per_level: np.ndarray | None = None  # row: code per level of F; pattern: pattern index per level of F
    patterns: np.ndarray | None = None   # pattern: (G, T) codes


@dataclass(frozen=True)
class Layout:
    """A planned layout. ``kind`` "flat" or "panel"; for a panel, the block plate, its width,
    each row's (block row, cell) and each plate's plan."""

    kind: str
    n_rows: int
    plate: str | None = None
    width: int = 0
    levels: int = 0
    block: np.ndarray | None = field(default=None, repr=False)   # (n,) level of F per row
    cell: np.ndarray | None = field(default=None, repr=False)    # (n,) position in its block row
    plans: dict = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        if self.kind == "flat":
            return f"flat ({self.n_rows:,} rows)"
        plans = ", ".join(f"{p} {v.kind}" + (f" ({len(v.patterns)} patterns)" if v.kind == "pattern" else "")
                          for p, v in self.plans.items())
        fill = self.n_rows / max(self.levels * self.width, 1)
        return f"panel {self.plate} x {self.width} ({fill:.0%} full; {plans})"


def plan_layout(model: ir.ModelIR, codes: dict[str, np.ndarray], n: int, kind: str | None = None) -> Layout:
    """Choose the layout from every row's plate codes (``rows["idx"]`` of all rows); ``kind``
    "auto" (the default; ``HBM_LAYOUT`` overrides), "panel" (when the rows allow one) or "flat"."""
    kind = layout_choice(kind)
    if kind == "flat" or not codes or (kind == "auto" and n < MIN_ROWS):
        return Layout("flat", n)
    sizes = {p.name: p.size for p in model.plates}
    best, best_cost = None, None
    for plate, c in codes.items():
        width = int(np.bincount(c, minlength=sizes[plate]).max())
        fill = n / (sizes[plate] * width)
        if n / sizes[plate] < MIN_WIDTH or fill < MIN_FILL:
            continue
        plan = _plan_panel(plate, sizes[plate], codes, n)
        # cells to evaluate, plus one more pass per plate left to a per-cell gather
        cost = 1.0 / fill + sum(v.kind == "cell" for v in plan.plans.values())
        if best is None or cost < best_cost - 1e-9 or (abs(cost - best_cost) <= 1e-9 and plan.levels > best.levels):
            best, best_cost = plan, cost
    if best is None:
        return Layout("flat", n)
    return best


def _plan_panel(plate: str, levels: int, codes: dict[str, np.ndarray], n: int) -> Layout:
    f = codes[plate].astype(np.int64)
    others = sorted((p for p in codes if p != plate), key=lambda p: -int(codes[p].max(initial=0)))
    # block rows in level order; within one, rows ordered by the other plates' codes, then data order
    keys = [np.arange(n)] + [codes[p] for p in reversed(others)] + [f]
    order = np.lexsort(keys)
    counts = np.bincount(f, minlength=levels)
    width = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cell = np.empty(n, np.int64)
    cell[order] = np.arange(n) - starts[f[order]]
    plans = {}
    for p, c in codes.items():
        if p == plate:
            plans[p] = PlatePlan("row", np.arange(levels, dtype=np.int32))
            continue
        grid = np.full((levels, width), -1, np.int64)
        grid[f, cell] = c
        first = grid[:, :1]
        grid = np.where(grid < 0, first, grid)       # empty cells repeat the block row's first code
        if (grid == first).all():
            plans[p] = PlatePlan("row", first[:, 0].astype(np.int32))
            continue
        patterns, which = np.unique(grid, axis=0, return_inverse=True)
        if 2 * len(patterns) <= levels:
            plans[p] = PlatePlan("pattern", which.reshape(-1).astype(np.int32), patterns.astype(np.int32))
        else:
            plans[p] = PlatePlan("cell")
    return Layout("panel", n, plate, width, levels, f, cell, plans)


def build_rows(model: ir.ModelIR, layout: Layout, rows: dict, which: np.ndarray | None = None,
               blocks: np.ndarray | None = None, mask: bool = False, constant: bool = True) -> tuple[dict, dict]:
    """The fit arrays (rows, layout constants) for the flat ``rows``; ``which`` (global row ids
    of ``rows``, default all) says which of the planned rows they are, ``blocks`` which block
    rows to build (default: those the rows fall in); ``mask`` adds a mask even when every cell
    is used (processes' arrays must have the same keys); ``constant=False``: no ``lp0`` (a
    non-linear parameter's rows). NumPy in, NumPy out."""
    rows = dict(rows)
    lp0 = row_constant(model, rows) if constant else None
    if layout.kind == "flat":
        if lp0 is not None:
            rows["lp0"] = lp0
        if mask and "mask" not in rows:
            rows["mask"] = np.ones(len(rows["y"]), bool)
        return rows, {}
    n = len(rows["y"])
    which = np.arange(n) if which is None else np.asarray(which)
    f_glob, cell = layout.block[which], layout.cell[which]
    if blocks is None:
        blocks = np.unique(f_glob)
    local = np.searchsorted(blocks, f_glob)
    shape = (len(blocks), layout.width)

    def grid(a, fill=0):
        a = np.asarray(a)
        out = np.full(shape + a.shape[1:], fill, a.dtype)
        out[local, cell] = a
        return out

    out: dict = {}
    for key, a in rows.items():
        if key in ("idx", "Z", "mask"):
            continue
        out[key] = grid(a)
    out["Z"] = {p: grid(z) for p, z in rows.get("Z", {}).items()}
    filled = grid(np.asarray(rows["mask"]) if "mask" in rows else np.ones(n, bool), False)
    if mask or not filled.all():
        out["mask"] = filled
    if lp0 is not None:
        if "mask" in rows:
            lp0 = np.where(rows["mask"], lp0, 0.0)
        out["lp0"] = np.bincount(local, weights=lp0, minlength=len(blocks)).astype(np.float32)
    out["idx"], out["pattern"], consts = {}, {}, {"pattern": {}}
    for p, codes in rows["idx"].items():
        plan = layout.plans[p]
        if plan.kind == "row":
            out["idx"][p] = plan.per_level[blocks]
        elif plan.kind == "pattern":
            consts["pattern"][p] = plan.patterns
            if len(plan.patterns) > 1:
                out["pattern"][p] = plan.per_level[blocks]
        else:
            out["idx"][p] = grid(codes)
    if not out["pattern"]:
        del out["pattern"]
    if not consts["pattern"]:
        consts = {}
    return out, consts


def pad_rows(rows: dict, multiple: int, length: int | None = None) -> dict:
    """Pad axis 0 of every row array to ``length`` (default: the next multiple of ``multiple``),
    padding masked. NumPy in, NumPy out."""
    n = rows["y"].shape[0]
    target = length if length is not None else n + (-n) % multiple
    target += (-target) % multiple
    pad = target - n
    if pad == 0:
        return rows
    def pad_all(a):     # any depth: a non-linear formula's rows hold each parameter's arrays
        return {k: pad_all(v) for k, v in a.items()} if isinstance(a, dict) else _pad(a, pad)
    out = {key: pad_all(a) for key, a in rows.items()}
    if "mask" not in rows:
        out["mask"] = _pad(np.ones(rows["y"].shape, bool), pad)
    return out


def _pad(a, pad: int) -> np.ndarray:
    a = np.asarray(a)
    return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])

def row_constant(model: ir.ModelIR, rows: dict) -> np.ndarray | None:
    """The data-only part of each row's log density (weighted), or None when the family has none
    (``model``: a linear or a non-linear IR; only its family is read).

    Computed once by the layout (``rows["lp0"]``) instead of at every step."""
    fused = FUSED.get((model.family.name, model.family.link))
    if fused is None or fused.const is None:
        return None
    extra = {k: np.asarray(rows[k], np.float64) for k in ("trials", "se") if k in rows}
    c = fused.const(np.asarray(rows["y"], np.float64), extra, xp=np)
    if "weights" in rows:
        c = c * np.asarray(rows["weights"], np.float64)
    return c.astype(np.float32)



def nonlinear_codes(model, rows: dict) -> dict[str, np.ndarray]:
    """Every plate's row codes of a non-linear formula's rows (a plate shared by parameters has
    the same codes in each), what :func:`plan_layout` plans from."""
    codes: dict[str, np.ndarray] = {}
    for sub in rows["params"].values():
        codes.update(sub.get("idx", {}))
    return codes


def build_nonlinear_rows(model, layout: Layout, rows: dict, mask: bool = False) -> tuple[dict, dict]:
    """:func:`build_rows` for a non-linear formula's rows (``hbm.data.encode_nonlinear``): the
    response arrays, each parameter's arrays, the data leaves and the limits' masks, in ``layout``
    (flat: as given, with ``lp0``; panel: ``(F, T)`` blocks, each plate's plan shared by the
    parameters that use it)."""
    top = {k: v for k, v in rows.items() if not isinstance(v, dict)}
    if layout.kind == "flat":
        out, consts = build_rows(model, layout, top, mask=mask)
        return {**out, **{k: v for k, v in rows.items() if isinstance(v, dict)}}, consts
    leaves = {f"data:{k}": v for k, v in rows["data"].items()}
    leaves.update({f"limits:{k}": v for k, v in rows["limits"].items()})
    out, consts = build_rows(model, layout, {**top, **leaves, "idx": {}}, mask=mask)
    out.pop("idx")
    out.pop("Z")
    out["data"] = {k: out.pop(f"data:{k}") for k in rows["data"]}
    out["limits"] = {k: out.pop(f"limits:{k}") for k in rows["limits"]}
    out["params"] = {}
    for name, sub in rows["params"].items():
        built, c = build_rows(model, layout, dict(sub, y=rows["y"]), constant=False)
        for key in ("y", "mask", "lp0"):
            built.pop(key, None)
        out["params"][name] = built
        for plate, pat in c.get("pattern", {}).items():
            consts.setdefault("pattern", {})[plate] = pat
    return out, consts

