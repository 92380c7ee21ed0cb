"""Several processes (hosts): one ``data`` mesh over every process's devices.

    hbm fit spec.yaml data.parquet --out runs/x --distributed \\
        --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0     # on each host, its own id

(or ``HBM_COORDINATOR``, ``HBM_NUM_PROCESSES``, ``HBM_PROCESS_ID``). Every
process runs the same program on its own rows:

- ``jax.distributed.initialize``; the mesh spans every process's devices.
- The model is resolved on a view of the whole Parquet file that reads a
  column only when the compiler asks for it (the grouping columns for the
  level tables and nesting maps, the response and predictors for the checks
  and the default priors), so the IR, the level tables (codes) and the
  ``center()``/``scale()`` statistics are the same in every process.
- The row arrays come from this process's share of the row groups only
  (``ParquetFile.read_row_groups``; contiguous groups, balanced by rows),
  encoded with those global level tables, laid out (``hbm.data.layout``; the
  plan is made from every row's grouping codes, so block rows agree), padded
  to the same length in every process, and assembled into global arrays
  (``jax.make_array_from_process_local_data``).
- Only process 0 prints the summary and writes the run directory.

A non-linear formula (``params:``) goes the same way: resolved on the whole
file, each parameter's parent maps from the whole file, its rows flat (no
panel layout for non-linear formulas yet).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from dataclasses import replace

import numpy as np
import pandas as pd

from hbm.errors import HbmError
from hbm.vocabulary.limits import check_regular_file
from hbm.data.table import TableInfo
from hbm.pipeline.compiled import CompiledModel, nonlinear_compiled, with_centring, with_whitening
from hbm.data.devices import data_mesh, place, resolve_devices
from hbm.data.arrays import Consts
from hbm.data.encode import column_ranges, encode, encode_consts
from hbm.data.layout import build_rows, plan_layout
from hbm.lowering.model import make_model
from hbm.frontend.parse import parse_formula, parse_nonlinear
from hbm.data.encode_nonlinear import encode_nonlinear
from hbm.lowering.nonlinear import make_nonlinear_model
from hbm.resolve.nonlinear import resolve_nonlinear
from hbm.resolve.linear import resolve
from hbm.frontend.ast import Var

ENV = {"coordinator": "HBM_COORDINATOR", "num_processes": "HBM_NUM_PROCESSES", "process_id": "HBM_PROCESS_ID"}


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` from the arguments, or the ``HBM_*`` environment variables."""
    import jax

    coordinator = coordinator or os.environ.get(ENV["coordinator"])
    num_processes = num_processes if num_processes is not None else _env_int("num_processes")
    process_id = process_id if process_id is not None else _env_int("process_id")
    missing = [f"--{k.replace('_', '-')} (or {ENV[k]})" for k, v in
               (("coordinator", coordinator), ("num_processes", num_processes), ("process_id", process_id))
               if v is None]
    if missing:
        raise HbmError("--distributed needs " + ", ".join(missing), where="command line",
                       hint="e.g. --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0")
    if not 0 <= process_id < num_processes:
        raise HbmError(f"process id {process_id} is not in 0..{num_processes - 1}", where="--process-id")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def _env_int(key: str) -> int | None:
    v = os.environ.get(ENV[key])
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise HbmError(f"{ENV[key]} must be an integer, got {v!r}", where=ENV[key]) from None


# ---------------------------------------------------------------------- the whole file, column by column
class ColumnFrame:
    """What ``TableInfo`` reads of a DataFrame, over a Parquet file: a column is read (whole) when
    first asked for."""

    def __init__(self, pf):
        self._pf = pf
        self.columns = [str(c) for c in pf.schema_arrow.names]
        self._cache: dict[str, pd.Series] = {}

    def __len__(self) -> int:
        return self._pf.metadata.num_rows

    def __getitem__(self, name: str) -> pd.Series:
        if name not in self._cache:
            self._cache[name] = self._pf.read(columns=[name]).to_pandas()[name]
        return self._cache[name]


class SharedLevels(TableInfo):
    """This process's rows, with the level tables of the whole table (codes agree across processes)."""

    def __init__(self, df: pd.DataFrame, formula: str, whole: TableInfo):
        super().__init__(df, formula, stats=whole.stats)
        self._whole = whole

    def levels(self, columns: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
        if columns not in self._levels:
            codes, labels = TableInfo.levels(self, columns)
            whole_codes, whole_labels = self._whole.levels(columns)
            index = {label: i for i, label in enumerate(whole_labels)}
            lut = np.array([index[label] for label in labels], np.int32)
            self._levels[columns] = (lut[codes], list(whole_labels))
        return self._levels[columns]


def shares(group_rows: list[int], processes: int) -> list[list[int]]:
    """Contiguous row groups per process (at least one each), balanced by rows."""
    g = len(group_rows)
    if g < processes:
        raise HbmError(f"the data has {g} Parquet row groups, fewer than the {processes} processes",
                       where="data", hint="write it with smaller row groups, e.g. "
                       "df.to_parquet(path, row_group_size=100_000)")
    ends = np.cumsum(group_rows)
    total = int(ends[-1])
    cuts = [0]
    for p in range(1, processes):
        c = int(np.searchsorted(ends, p * total / processes)) + 1
        cuts.append(min(max(c, cuts[-1] + 1), g - (processes - p)))
    cuts.append(g)
    return [list(range(cuts[p], cuts[p + 1])) for p in range(processes)]


def compile_file(spec, path: str | Path, layout: str | None = None):
    """A ``CompiledModel`` of this process's share of the Parquet file ``path`` (see the module docstring)."""
    import jax
    import pyarrow.parquet as pq

    path = Path(path)
    if spec.batch_size:
        raise HbmError("batch_size is not supported with --distributed yet", where="batch_size",
                       hint="remove batch_size: the processes' devices hold the rows between them")
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise HbmError(f"--distributed reads Parquet row groups; {path.name} is not a Parquet file",
                       where="data", hint="convert it: pandas.read_csv(...).to_parquet('data.parquet')")
    if not path.exists():
        raise HbmError(f"data file not found: {path}", where="data")
    check_regular_file(path, "data")
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as e:    # pyarrow's ArrowInvalid is a ValueError: not Parquet, or damaged
        raise HbmError(f"could not read {path} as parquet: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                       where="data") from None
    if spec.params:
        return compile_nonlinear_file(spec, pf)
    formula = parse_formula(spec.formula)
    whole = TableInfo(ColumnFrame(pf), formula.source)
    model_ir = with_centring(resolve(formula, whole, family=spec.family, priors=spec.priors,
                                     noncentered=spec.noncentered), whole)

    n_proc, me = jax.process_count(), jax.process_index()
    group_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    share = shares(group_rows, n_proc)
    first = [int(np.sum(group_rows[: s[0]])) for s in share]
    counts = [int(np.sum([group_rows[g] for g in s])) for s in share]
    local = pf.read_row_groups(share[me]).to_pandas()
    info = SharedLevels(local, formula.source, whole)
    rows, _, enc = encode(model_ir, info)
    enc = replace(enc, ranges=column_ranges(model_ir, whole))   # the whole file's, as one process has them
    consts = with_whitening(encode_consts(model_ir, whole), model_ir, whole)

    n = len(whole.df)
    codes = {p: whole.levels(model_ir.plate(p).columns)[0] for p in rows.idx}
    plan = plan_layout(model_ir, codes, n, layout)
    which = np.arange(first[me], first[me] + counts[me])
    if plan.kind == "panel":
        blocks = [np.unique(plan.block[first[q]:first[q] + counts[q]]) for q in range(n_proc)]
        length = max(len(b) for b in blocks)
        fit_rows, lay_consts = build_rows(model_ir, plan, rows, which, blocks[me], mask=True)
    else:
        length = max(counts)
        fit_rows, lay_consts = build_rows(model_ir, plan, rows, mask=True)
    n_dev = resolve_devices(spec.devices)
    mesh = data_mesh(n_dev)
    fit_rows, fit_consts = place(fit_rows, replace(consts, pattern=lay_consts.pattern), mesh, local_length=length)
    model = CompiledModel(spec, formula, model_ir, enc, rows, consts, make_model(model_ir, mesh), n, n_dev,
                          fingerprint(pf), fit_rows, fit_consts, plan)
    model.observed_y = whole.numeric(_var(model_ir.response.column)).astype(np.float32)
    return model


def compile_nonlinear_file(spec, pf):
    """:func:`compile_file` for a non-linear formula: resolved on the whole file, this process's rows
    encoded with the whole file's level tables and parent maps, flat, padded to the longest share."""
    import jax

    formula = parse_nonlinear(spec.formula)
    whole = TableInfo(ColumnFrame(pf), formula.source)
    model = resolve_nonlinear(formula, whole, params=spec.params, bounds=spec.bounds, family=spec.family,
                              priors=spec.priors, noncentered=spec.noncentered)
    n_proc, me = jax.process_count(), jax.process_index()
    group_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    share = shares(group_rows, n_proc)
    counts = [int(np.sum([group_rows[g] for g in s])) for s in share]
    info = SharedLevels(pf.read_row_groups(share[me]).to_pandas(), formula.source, whole)
    rows, _, enc = encode_nonlinear(model, info)
    consts = Consts(params={p.name: encode_consts(p.model, whole) for p in model.params})
    mesh = data_mesh(resolve_devices(spec.devices))
    out = nonlinear_compiled(spec, formula, model, enc, rows, consts, make_nonlinear_model(model, mesh), mesh,
                             len(whole.df), fingerprint(pf), local_length=max(counts))
    out.observed_y = whole.numeric(_var(model.response.column)).astype(np.float32)
    return out


def _var(name: str):
    return Var(name)


def fingerprint(pf) -> str:
    """A short hash of the file's Parquet metadata (schema, sizes, column statistics): the same in
    every process, without reading the data."""
    h = hashlib.sha256(str(pf.metadata.to_dict()).encode())
    return h.hexdigest()[:16]
