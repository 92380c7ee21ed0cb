"""``hbm.compile``: a spec and a table in, a NumPyro model with its data out.

    model = hbm.compile("spec.yaml", df)
    model.ir                          # the inspectable intermediate form
    model.numpyro_model(**model.data) # plain NumPyro

``model.rows`` are the per-row arrays of ``hbm.data.encode`` in the data's order
(:class:`hbm.data.arrays.Rows`, or ``NonlinearRows``; NumPy, on the host, when the fit layout
differs from them), ``model.consts`` the model's constants (:class:`hbm.data.arrays.Consts`);
``model.data`` are what the engines fit: the same rows in the fit layout
(``hbm.data.layout``), placed on the devices (``hbm.data.devices``), or a stream of
minibatches (``hbm.data.batching``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd

from hbm.frontend import ast as A
from hbm.ir import model as ir_mod
from hbm.lowering.centring import centred_sites
from hbm.data.arrays import Consts, NonlinearRows, Rows, n_rows
from hbm.data.devices import data_mesh, place, place_consts, resolve_devices
from hbm.data.encode import Encoding, encode
from hbm.data.layout import Layout, build_nonlinear_rows, build_rows, layout_choice, nonlinear_codes, plan_layout
from hbm.lowering.model import make_model
from hbm.frontend.parse import parse_formula
from hbm.resolve.linear import resolve
from hbm.spec import Spec
from hbm.data.table import TableInfo
from hbm.lowering.whiten import population_whitening, shear_means
from hbm.frontend.parse import parse_nonlinear
from hbm.data.encode_nonlinear import encode_nonlinear
from hbm.lowering.nonlinear import make_nonlinear_model
from hbm.resolve.nonlinear import resolve_nonlinear
from hbm.data.batching import BatchStream, batched
from hbm.engines.registry import check_minibatches


@dataclass
class CompiledModel:
    """A model ready to fit: the spec, its IR, the encoded data and the NumPyro model."""

    spec: Spec
    formula: A.Formula
    ir: ir_mod.ModelIR
    encoding: Encoding
    rows: Rows | NonlinearRows
    consts: Consts
    numpyro_model: Callable
    n_rows: int
    n_devices: int
    fingerprint: str
    fit_rows: Rows | NonlinearRows | None = None   # the rows as fitted (layout, devices); None: ``rows``
    fit_consts: Consts | None = None
    layout: Layout | None = None
    batches: object = None             # hbm.data.batching.BatchStream when ``batch_size`` is set
    observed_y: object = None          # every row's response in the data's order, where ``rows`` hold a share
                                       # of them (several processes: hbm.pipeline.distributed)
    source: str | None = None          # where the rows came from: a file, "table", "simulated" (fit.json)

    @property
    def response_name(self) -> str:
        """The response column's name: what ``observed_data`` and the per-row groups of the
        InferenceData (log_likelihood, posterior_predictive) call the response."""
        return self.ir.response.column

    @property
    def response(self):
        """Every row's response, in the data's order (NumPy)."""
        y = self.rows.y if self.observed_y is None else self.observed_y
        return np.asarray(y)[: self.n_rows]

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


def compile_table(spec: Spec, df: pd.DataFrame, *, devices=None, noncentered=None,
                  layout: str | None = None, whiten: bool = True) -> CompiledModel:
    """Compile ``spec`` against the DataFrame ``df``; ``layout`` ("auto", "panel", "flat"; default
    ``HBM_LAYOUT`` or "auto") picks the fit layout (``hbm.data.layout``). ``whiten``: the population
    coefficients are sampled in centred, whitened coordinates (``hbm.lowering.whiten``); ``False`` keeps
    one sample site per coefficient (conditioning on them by name, as ``hbm.simulate`` does)."""
    if spec.params:  # a non-linear formula: the same stages, from its own resolve and encode
        return compile_nonlinear(spec, df, devices=devices, layout=layout,
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
        return batched_model(spec, formula, model_ir, enc, rows, consts, model_fn, mesh, fingerprint(df))
    plan = plan_layout(model_ir, rows.idx, len(df), layout)
    built, lay_consts = build_rows(model_ir, plan, rows)
    fit_rows, fit_consts = place(built, replace(consts, pattern=lay_consts.pattern), mesh)
    if plan.kind == "flat" and mesh is None:
        rows, consts = fit_rows, fit_consts
    else:   # the per-row arrays stay on the host: a device holds only the rows it fits
        consts = place_consts(consts, None)
    return CompiledModel(spec, formula, model_ir, enc, rows, consts, model_fn, len(df), n_dev, fingerprint(df),
                         fit_rows, fit_consts, plan)


def with_centring(model_ir, info):
    """``model_ir`` with the group-level sites the data pin drawn centred (``hbm.lowering.centring``)."""
    return replace(model_ir, centred=centred_sites(model_ir, info))


def with_whitening(consts: Consts, model_ir, info) -> Consts:
    """``consts`` with the population block's whitening and the group-level shears
    (``hbm.lowering.whiten``), where the model has them."""
    return replace(consts, whiten=population_whitening(model_ir, info), shear=shear_means(model_ir, info) or {})


def fingerprint(df: pd.DataFrame) -> str:
    """A short hash of the table's contents, recorded with every fit."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- compile
def compile_nonlinear(spec, df, *, devices=None, noncentered: bool = True, layout: str | None = None):
    """``hbm.compile_table`` for a spec with ``params:``: resolve, encode, then the same layout
    (planned from every parameter's plate codes; "auto" is flat here, "panel" must be asked for),
    devices and minibatches as a linear formula.
    With flat rows, ``rows`` are the fit rows (with ``lp0`` where the family has one, placed on the
    devices, padded and sharded with several); with a panel they stay the host's flat rows."""
    formula = parse_nonlinear(spec.formula)
    info = TableInfo(df, formula.source)
    model = resolve_nonlinear(formula, info, params=spec.params, bounds=spec.bounds, family=spec.family,
                              priors=spec.priors, noncentered=noncentered)
    rows, consts, enc = encode_nonlinear(model, info)
    n_dev = resolve_devices(devices if devices is not None else spec.devices)
    mesh = data_mesh(n_dev) if n_dev > 1 else None
    model_fn = make_nonlinear_model(model, mesh)
    if spec.batch_size:
        return batched_model(spec, formula, model, enc, rows, consts, model_fn, mesh, fingerprint(df))
    # "auto" keeps non-linear rows flat until the panel is benchmarked on them; "panel" asks for it
    kind = layout_choice(layout)
    plan = plan_layout(model, nonlinear_codes(model, rows), len(df), "flat" if kind == "auto" else kind)
    return nonlinear_compiled(spec, formula, model, enc, rows, consts, model_fn, mesh, len(df), fingerprint(df),
                              plan=plan)


def nonlinear_compiled(spec, formula, model, enc, rows, consts, model_fn, mesh, n, fp,
                       local_length: int | None = None, plan: Layout | None = None) -> CompiledModel:
    """The CompiledModel of a non-linear formula's encoded rows in ``plan`` (default flat). In one
    process with flat rows, ``rows`` are the fit rows (placed); with a panel, or several processes
    (``local_length``: every process's rows padded to it, ``hbm.pipeline.distributed``), ``rows``
    stay this process's flat host arrays, as a linear formula's do."""
    plan = plan or Layout("flat", n)
    fit_rows, lay_consts = build_nonlinear_rows(model, plan, rows, mask=local_length is not None)
    fit_rows, fit_consts = place(fit_rows, replace(consts, pattern=lay_consts.pattern), mesh,
                                 local_length=local_length)
    n_dev = 1 if mesh is None else mesh.devices.size
    if local_length is not None or plan.kind != "flat":
        return CompiledModel(spec, formula, model, enc, rows, place_consts(consts, None), model_fn, n, n_dev, fp,
                             fit_rows, fit_consts, plan)
    return CompiledModel(spec, formula, model, enc, fit_rows, fit_consts, model_fn, n, n_dev, fp,
                         layout=plan)


def batched_model(spec, formula, model_ir, enc, rows, consts, model_fn, mesh, fingerprint):
    """A CompiledModel that fits on minibatches of ``spec.batch_size`` rows (``hbm.pipeline.compiled``)."""

    if spec.inference.engine != "auto":   # the engine's own declaration (hbm.engines.base.Engine)
        check_minibatches(spec.inference.engine)
    n = n_rows(rows)
    build = build_nonlinear_rows if isinstance(rows, NonlinearRows) else build_rows
    host_rows, _ = build(model_ir, Layout("flat", n), rows)
    stream = BatchStream(host_rows, place_consts(consts, mesh), spec.batch_size,
                         seed=int(spec.inference.seed), mesh=mesh)
    n_dev = 1 if mesh is None else mesh.devices.size
    return CompiledModel(spec, formula, model_ir, enc, rows, consts, batched(model_fn), n, n_dev,
                         fingerprint, layout=Layout("flat", n), batches=stream)

