"""The arrays encode hands to lowering: per-row arrays and model constants, with named fields.

:class:`Rows` (a linear formula) and :class:`NonlinearRows` (a non-linear one) hold what
varies by row, :class:`Consts` what does not; :class:`Batch` is what a minibatch fit's
model receives instead of rows (``hbm.data.batching``). All are frozen dataclasses
registered as JAX pytrees: a field that is ``None`` is absent (an empty subtree), so
``jax.tree.map``, ``jit``, ``shard_map`` and ``device_put`` see only the arrays, and a
stage that adds an array makes a new value with ``dataclasses.replace``.

Shapes: flat rows have the rows on axis 0 (``(n,)``, ``(n, k)``); a panel layout's
rows are ``(F, T)`` blocks with the same trailing axes (``hbm.data.layout``). Codes are
int32, masks bool, everything else float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import jax

Array = Any   # a NumPy or JAX array


@dataclass(frozen=True)
class _Response:
    """The response's arrays, shared by :class:`Rows` and :class:`NonlinearRows`."""

    y: Array | None
    trials: Array | None = None
    se: Array | None = None
    weights: Array | None = None
    mask: Array | None = None
    lp0: Array | None = None

    @property
    def extra(self) -> dict:
        """The family's extra arrays (``trials``, ``se``) that are present."""
        return {k: v for k, v in (("trials", self.trials), ("se", self.se)) if v is not None}


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Rows(_Response):
    """A linear formula's per-row arrays.

    ``y`` response; ``trials``/``se``/``weights`` the response's extras; ``offset`` summed
    offsets; ``X`` population columns ``(n, k)``; ``idx[plate]`` level codes; ``Z[plate]``
    group-level slope columns ``(n, k)``; ``mask`` False on padding and empty cells; ``lp0``
    the data-only log density, summed per block row (the layout's); ``pattern[plate]`` a
    pattern index per block row (panel layout). A non-linear parameter's rows have ``y=None``.
    """

    X: Array | None = None
    offset: Array | None = None
    idx: Mapping[str, Array] = field(default_factory=dict)
    Z: Mapping[str, Array] = field(default_factory=dict)
    pattern: Mapping[str, Array] = field(default_factory=dict)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class NonlinearRows(_Response):
    """A non-linear formula's per-row arrays: the response's (as :class:`Rows`), each parameter's
    own rows (``params[name]``, without ``y``), the data leaves of the expression (``data[text]``)
    and one row mask per limit (``limits[key]``: rows where a leaf is infinite)."""

    params: Mapping[str, Rows] = field(default_factory=dict)
    data: Mapping[str, Array] = field(default_factory=dict)
    limits: Mapping[str, Array] = field(default_factory=dict)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Consts:
    """Model constants, replicated on every device.

    ``parent["child>parent"]`` the parent level of every level of a nested plate; ``whiten``
    the population block's whitening (``B_inv``, ``c``, ``log_det``: ``hbm.lowering.whiten``);
    ``shear[plate]`` the group-level shears; ``pattern[plate]`` a panel layout's ``(G, T)``
    code patterns; ``params[name]`` a non-linear parameter's own constants."""

    parent: Mapping[str, Array] = field(default_factory=dict)
    whiten: Mapping[str, Array] | None = None
    shear: Mapping[str, Array] = field(default_factory=dict)
    pattern: Mapping[str, Array] = field(default_factory=dict)
    params: Mapping[str, "Consts"] = field(default_factory=dict)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Batch:
    """A minibatch fit's rows: the chunk of rows on the devices and the stream that owns it
    (``hbm.data.batching.BatchStream``, not an array: ``jit`` keeps it static)."""

    chunk: Rows | NonlinearRows
    stream: Any


def present(rows) -> dict:
    """The fields of ``rows`` that hold something, by name (a mapping field only when not empty)."""
    out = {}
    for f in fields(rows):
        v = getattr(rows, f.name)
        if v is not None and not (isinstance(v, Mapping) and not v):
            out[f.name] = v
    return out


def n_rows(rows) -> int:
    """The length of axis 0 (rows, or block rows of a panel)."""
    return int(rows.y.shape[0])
