"""``hbm.compile``: a spec and a table (given, the spec's file, or simulated from the spec) to a
:class:`CompiledModel`."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from hbm.data.table import as_dataframe, read_table
from hbm.errors import HbmError
from hbm.pipeline.compiled import CompiledModel, compile_table
from hbm.pipeline.simulate import simulate_table
from hbm.spec import Spec, load_spec


def load_data(spec: Spec, table=None) -> tuple[pd.DataFrame, str]:
    """The table to fit: given, the spec's ``data:`` file, or simulated from ``simulate:``."""
    if table is not None:
        return as_dataframe(table), str(table) if isinstance(table, (str, os.PathLike)) else "table"
    if spec.data:
        return read_table(spec.data), spec.data
    if spec.simulate is not None:
        return simulate_table(spec), "simulated"
    raise HbmError("no data: give a data file, set 'data:' in the spec, or add a 'simulate:' block",
                   where="data")


def compile(spec, table=None, *, devices: int | str | None = None) -> CompiledModel:  # noqa: A001
    """Compile ``spec`` (a path, YAML text, a formula such as ``"y ~ x + (1 | g)"``, a dict or a Spec)
    against ``table`` (a DataFrame, a file path, or None: the spec's data). A table given as a path is
    recorded as the spec's ``data`` (what the run's spec.yaml names)."""
    spec = load_spec(spec)
    df, source = load_data(spec, table)
    if isinstance(table, (str, os.PathLike)):
        spec = replace(spec, data=str(Path(table).resolve()))
        source = spec.data
    model = compile_table(spec, df, devices=devices)
    model.source = str(source)
    return model

