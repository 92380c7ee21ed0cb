"""``hbm.compile``: a spec and a table in, a NumPyro model with its data out.

    model = hbm.compile("spec.yaml", df)
    model.ir                          # the inspectable intermediate form
    model.numpyro_model(**model.data) # plain NumPyro

``model.rows`` are the per-row arrays of ``hbm.encode`` in the data's order (NumPy, on the
host, when the fit layout differs from them);
``model.data`` are what the engines fit: the same rows in the fit layout
(``hbm.layout``), placed on the devices (``hbm.devices``), or a stream of
minibatches (``hbm.batching``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd

from . import ast as A
from . import ir as ir_mod
from .centring import centred_sites
from .devices import data_mesh, place, resolve_devices, shard_rows  # noqa: F401 (shard_rows: API)
from .encode import Encoding, encode
from .errors import HbmError
from .layout import Layout, build_rows, plan_layout
from .lower import make_model
from .parse import parse_formula
from .resolve import resolve
from .spec import Spec, load_spec
from .table import TableInfo, as_dataframe, read_table
from .whiten import population_whitening, shear_means


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
    fit_rows: dict | None = None       # the rows as fitted (layout, devices); None: ``rows``
    fit_consts: dict | None = None
    layout: Layout | None = None
    batches: object = None             # hbm.batching.BatchStream when ``batch_size`` is set

    @property
    def data(self) -> dict:
        """Keyword arguments of ``numpyro_model`` for fitting."""
        if self.batches is not None:
            return self.batches.model_kwargs()
        if self.fit_rows is None:
            return {"rows": self.rows, "consts": self.consts}
        return {"rows": self.fit_rows, "consts": self.fit_consts}

    def describe(self) -> str:
        """What ``hbm check`` prints: the IR, the data size, the devices."""
        text = (self.ir.pretty() + f"\ndata      {self.n_rows:,} rows" +
                (f", sharded over {self.n_devices} devices" if self.n_devices > 1 else ""))
        if self.batches is not None:
            text += f", minibatches of {self.batches.batch_size:,} rows"
        return text


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


def compile_table(spec: Spec, df: pd.DataFrame, *, devices=None, noncentered=None,
                  layout: str | None = None, whiten: bool = True) -> CompiledModel:
    """Compile ``spec`` against the DataFrame ``df``; ``layout`` ("auto", "panel", "flat"; default
    ``HBM_LAYOUT`` or "auto") picks the fit layout (``hbm.layout``). ``whiten``: the population
    coefficients are sampled in centred, whitened coordinates (``hbm.whiten``); ``False`` keeps
    one sample site per coefficient (conditioning on them by name, as ``hbm.simulate`` does)."""
    if spec.params:  # a non-linear formula: hbm.nonlinear compiles it
        from .nonlinear import compile_nonlinear
        return compile_nonlinear(spec, df, devices=devices,
                                 noncentered=spec.noncentered if noncentered is None else noncentered)
    formula = parse_formula(spec.formula)
    info = TableInfo(df, formula.source)
    model_ir = resolve(formula, info, family=spec.family, priors=spec.priors,
                       noncentered=spec.noncentered if noncentered is None else noncentered)
    if whiten:
        model_ir = with_centring(model_ir, info)
    rows, consts, enc = encode(model_ir, info)
    if whiten:
        consts = with_whitening(consts, model_ir, info)
    n_dev = resolve_devices(devices if devices is not None else spec.devices)
    mesh = data_mesh(n_dev) if n_dev > 1 else None
    model_fn = make_model(model_ir, mesh)
    if spec.batch_size:
        from .batching import batched_model
        return batched_model(spec, formula, model_ir, enc, rows, consts, model_fn, mesh, fingerprint(df))
    plan = plan_layout(model_ir, rows["idx"], len(df), layout)
    fit_rows, fit_consts = place(*build_rows(model_ir, plan, rows), mesh)
    fit_consts = {**place({}, consts, mesh)[1], **fit_consts}
    if plan.kind == "flat" and mesh is None:
        rows, consts = fit_rows, fit_consts
    else:   # the per-row arrays stay on the host: a device holds only the rows it fits
        consts = place({}, consts, None)[1]
    return CompiledModel(spec, formula, model_ir, enc, rows, consts, model_fn, len(df), n_dev, fingerprint(df),
                         fit_rows, fit_consts, plan)


def with_centring(model_ir, info):
    """``model_ir`` with the group-level sites the data pin drawn centred (``hbm.centring``)."""
    return replace(model_ir, centred=centred_sites(model_ir, info))


def with_whitening(consts: dict, model_ir, info) -> dict:
    """``consts`` with the population block's whitening and the group-level shears
    (``hbm.whiten``), where the model has them."""
    white = population_whitening(model_ir, info)
    shear = shear_means(model_ir, info)
    return {**consts, **({"whiten": white} if white is not None else {}), **({"shear": shear} if shear else {})}


def fingerprint(df: pd.DataFrame) -> str:
    """A short hash of the table's contents, recorded with every fit."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]

