"""``hbm.compile``: a spec and a table in, a NumPyro model with its data out.

    model = hbm.compile("spec.yaml", df)
    model.ir                          # the inspectable intermediate form
    model.numpyro_model(**model.data) # plain NumPyro
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import jax
import numpy as np
import pandas as pd

from . import ast as A
from . import ir as ir_mod
from .encode import Encoding, encode
from .errors import HbmError
from .lower import make_model
from .parse import parse_formula
from .resolve import resolve
from .spec import Spec, load_spec
from .table import TableInfo, as_dataframe, read_table


@dataclass
class CompiledModel:
    """A model ready to fit: the spec, its IR, the encoded data and the NumPyro model."""

    spec: Spec
    formula: A.Formula
    ir: ir_mod.ModelIR
    encoding: Encoding
    rows: dict
    consts: dict
    numpyro_model: Callable
    n_rows: int
    n_devices: int
    fingerprint: str

    @property
    def data(self) -> dict:
        """Keyword arguments of ``numpyro_model``."""
        return {"rows": self.rows, "consts": self.consts}

    def describe(self) -> str:
        """What ``hbm check`` prints: the IR, the data size, the devices."""
        return (self.ir.pretty() + f"\ndata      {self.n_rows:,} rows" +
                (f", sharded over {self.n_devices} devices" if self.n_devices > 1 else ""))


def load_data(spec: Spec, table=None) -> tuple[pd.DataFrame, str]:
    """The table to fit: given, the spec's ``data:`` file, or simulated from ``simulate:``."""
    if table is not None:
        return as_dataframe(table), "table" if not isinstance(table, str) else table
    if spec.data:
        return read_table(spec.data), spec.data
    if spec.simulate is not None:
        from .simulate import simulate_table
        return simulate_table(spec), "simulated"
    raise HbmError("no data: give a data file, set 'data:' in the spec, or add a 'simulate:' block",
                   where="data")


def compile(spec, table=None, *, devices: int | str | None = None) -> CompiledModel:  # noqa: A001
    """Compile ``spec`` (a path, YAML text, dict or Spec) against ``table`` (or the spec's data)."""
    spec = load_spec(spec)
    df, _ = load_data(spec, table)
    return compile_table(spec, df, devices=devices)


def compile_table(spec: Spec, df: pd.DataFrame, *, devices=None, noncentered=None) -> CompiledModel:
    if spec.params:  # a non-linear formula: hbm.nonlinear compiles it
        from .nonlinear import compile_nonlinear
        return compile_nonlinear(spec, df, devices=devices,
                                 noncentered=spec.noncentered if noncentered is None else noncentered)
    formula = parse_formula(spec.formula)
    info = TableInfo(df, formula.source)
    model_ir = resolve(formula, info, family=spec.family, priors=spec.priors,
                       noncentered=spec.noncentered if noncentered is None else noncentered)
    rows, consts, enc = encode(model_ir, info)
    n_dev = resolve_devices(devices if devices is not None else spec.devices)
    mesh = None
    if n_dev > 1:
        rows, mesh = shard_rows(rows, n_dev)
    else:
        rows = jax.tree_util.tree_map(jax.numpy.asarray, rows)
    consts = jax.tree_util.tree_map(jax.numpy.asarray, consts)
    return CompiledModel(spec, formula, model_ir, enc, rows, consts, make_model(model_ir, mesh),
                         len(df), n_dev, fingerprint(df))


def resolve_devices(devices) -> int:
    """How many devices to shard over: ``auto`` takes every local device."""
    available = jax.local_device_count()
    if devices in (None, "auto"):
        return available
    n = int(devices)
    if n > available:
        raise HbmError(f"devices: {n} asked for, but only {available} available",
                       where="devices", hint="on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                       "before starting, or use devices: auto")
    return n


def shard_rows(rows: dict, n_dev: int):
    """Pad rows to a multiple of ``n_dev`` (padding masked) and place them on a 1-D ``data`` mesh."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(AxisType.Auto,))
    n = rows["y"].shape[0]
    pad = (-n) % n_dev
    rows = dict(rows)
    rows["mask"] = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])

    def put(a):
        a = np.asarray(a)
        if pad and a.shape[0] == n:
            a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
        return jax.device_put(a, NamedSharding(mesh, P("data")))
    return jax.tree_util.tree_map(put, rows), mesh


def fingerprint(df: pd.DataFrame) -> str:
    """A short hash of the table's contents, recorded with every fit."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]

