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
  ``row``      ``rows.idx[p]``: a code per block row         a sum over T, then F scatters
  ``pattern``  ``consts.pattern[p]`` ``(G, T)`` codes,       G x T scatters, then F row
               ``rows.pattern[p]``: a pattern per row         scatters of T-vectors
  ``cell``     ``rows.idx[p]``: ``(F, T)`` codes              n scatters (as flat)
  ============ ============================================ ==============================

- **flat**: the rows as ``encode`` gives them (order kept: on CPU, sorting
  rows by group made the flat gather's gradient slower, not faster); also
  what "auto" keeps below ``MIN_ROWS`` rows, where a step is cheap either way
  and bit-for-bit the same numerics as before matter more.

The data-only part of the log density (``-lgamma(y + 1)`` for Poisson) is
summed here once per block row (``rows.lp0``). The layout is planned from
the grouping codes of *all* rows (``plan_layout``) and built for any subset
of them (``build_rows``), so processes that each hold a share of the rows
build blocks that agree (``hbm.pipeline.distributed``).

Measured (value and grad of the seed model's likelihood, 1.56M rows, 2-core
CPU): flat stacked gather 50-100 ms, flat per-column gathers 12-20 ms, panel
with a pattern for category-by-period 6 ms.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import jax
import numpy as np

from hbm.data.arrays import Consts, NonlinearRows, Rows, n_rows
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
    """Choose the layout from every row's plate codes (``rows.idx`` of all rows); ``kind``
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


class _Grid:
    """Scatters flat row arrays into the ``(blocks, width)`` cells of a panel layout."""

    def __init__(self, layout: Layout, n: int, which, blocks):
        which = np.arange(n) if which is None else np.asarray(which)
        f_glob, self.cell = layout.block[which], layout.cell[which]
        self.blocks = np.unique(f_glob) if blocks is None else blocks
        self.local = np.searchsorted(self.blocks, f_glob)
        self.shape = (len(self.blocks), layout.width)

    def __call__(self, a, fill=0) -> np.ndarray:
        a = np.asarray(a)
        out = np.full(self.shape + a.shape[1:], fill, a.dtype)
        out[self.local, self.cell] = a
        return out


_ROW_ARRAYS = ("y", "X", "offset", "trials", "se", "weights")   # gridded as they are


def build_rows(model: ir.ModelIR, layout: Layout, rows: Rows, which: np.ndarray | None = None,
               blocks: np.ndarray | None = None, mask: bool = False, constant: bool = True) -> tuple[Rows, Consts]:
    """The fit arrays (rows, layout constants) for the flat ``rows``; ``which`` (global row ids
    of ``rows``, default all) says which of the planned rows they are, ``blocks`` which block
    rows to build (default: those the rows fall in); ``mask`` adds a mask even when every cell
    is used (processes' arrays must have the same fields); ``constant=False``: no ``lp0`` (a
    non-linear parameter's rows). NumPy in, NumPy out."""
    lp0 = row_constant(model, rows) if constant else None
    n = n_rows(rows)
    if layout.kind == "flat":
        if mask and rows.mask is None:
            rows = replace(rows, mask=np.ones(n, bool))
        return (rows if lp0 is None else replace(rows, lp0=lp0)), Consts()
    grid = _Grid(layout, n, which, blocks)
    arrays = {k: grid(getattr(rows, k)) for k in _ROW_ARRAYS if getattr(rows, k) is not None}
    filled = grid(np.asarray(rows.mask) if rows.mask is not None else np.ones(n, bool), False)
    if lp0 is not None:
        if rows.mask is not None:
            lp0 = np.where(rows.mask, lp0, 0.0)
        lp0 = np.bincount(grid.local, weights=lp0, minlength=len(grid.blocks)).astype(np.float32)
    idx, pattern, patterns = {}, {}, {}
    for p, codes in rows.idx.items():
        plan = layout.plans[p]
        if plan.kind == "row":
            idx[p] = plan.per_level[grid.blocks]
        elif plan.kind == "pattern":
            patterns[p] = plan.patterns
            if len(plan.patterns) > 1:
                pattern[p] = plan.per_level[grid.blocks]
        else:
            idx[p] = grid(codes)
    out = Rows(**arrays, Z={p: grid(z) for p, z in rows.Z.items()},
               mask=filled if mask or not filled.all() else None, lp0=lp0, idx=idx, pattern=pattern)
    return out, Consts(pattern=patterns)


def pad_rows(rows, multiple: int, length: int | None = None):
    """Pad axis 0 of every row array (:class:`Rows` or :class:`NonlinearRows`, a parameter's
    arrays too) to ``length`` (default: the next multiple of ``multiple``), padding masked.
    NumPy in, NumPy out."""
    n = n_rows(rows)
    target = length if length is not None else n + (-n) % multiple
    target += (-target) % multiple
    pad = target - n
    if pad == 0:
        return rows
    out = jax.tree.map(lambda a: _pad(a, pad), rows)
    if rows.mask is None:
        out = replace(out, mask=_pad(np.ones(rows.y.shape, bool), pad))
    return out


def _pad(a, pad: int) -> np.ndarray:
    a = np.asarray(a)
    return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])

def row_constant(model: ir.ModelIR, rows) -> np.ndarray | None:
    """The data-only part of each row's log density (weighted), or None when the family has none
    (``model``: a linear or a non-linear IR; only its family is read).

    Computed once by the layout (``rows.lp0``) instead of at every step."""
    fused = FUSED.get((model.family.name, model.family.link))
    if fused is None or fused.const is None:
        return None
    extra = {k: np.asarray(v, np.float64) for k, v in rows.extra.items()}
    c = fused.const(np.asarray(rows.y, np.float64), extra, xp=np)
    if rows.weights is not None:
        c = c * np.asarray(rows.weights, np.float64)
    return c.astype(np.float32)


def nonlinear_codes(model, rows: NonlinearRows) -> dict[str, np.ndarray]:
    """Every plate's row codes of a non-linear formula's rows (a plate shared by parameters has
    the same codes in each), what :func:`plan_layout` plans from."""
    codes: dict[str, np.ndarray] = {}
    for sub in rows.params.values():
        codes.update(sub.idx)
    return codes


_RESPONSE = ("y", "trials", "se", "weights", "mask")


def build_nonlinear_rows(model, layout: Layout, rows: NonlinearRows, mask: bool = False
                         ) -> tuple[NonlinearRows, Consts]:
    """:func:`build_rows` for a non-linear formula's rows (``hbm.data.encode_nonlinear``): the
    response arrays, each parameter's arrays, the data leaves and the limits' masks, in ``layout``
    (flat: as given, with ``lp0``; panel: ``(F, T)`` blocks, each plate's plan shared by the
    parameters that use it)."""
    response, consts = build_rows(model, layout, Rows(**{k: getattr(rows, k) for k in _RESPONSE}), mask=mask)
    top = {k: getattr(response, k) for k in _RESPONSE + ("lp0",)}
    if layout.kind == "flat":
        return replace(rows, **top), consts
    grid = _Grid(layout, n_rows(rows), None, None)
    params, patterns = {}, dict(consts.pattern)
    for name, sub in rows.params.items():
        built, c = build_rows(model, layout, replace(sub, y=rows.y), constant=False)
        params[name] = replace(built, y=None, mask=None, lp0=None)
        patterns.update(c.pattern)
    out = NonlinearRows(**top, params=params, data={k: grid(v) for k, v in rows.data.items()},
                        limits={k: grid(v) for k, v in rows.limits.items()})
    return out, Consts(pattern=patterns)
