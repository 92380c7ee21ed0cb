"""``hbm.compile``: a spec and a table (given, the spec's file, or simulated from the spec) to a
:class:`CompiledModel`."""
from __future__ import annotations

import pandas as pd

from hbm.data.table import as_dataframe, read_table
from hbm.errors import HbmError
from hbm.pipeline.compiled import CompiledModel, compile_table
from hbm.pipeline.simulate import simulate_table
from hbm.spec import Spec, load_spec


def load_data(spec: Spec, table=None) -> tuple[pd.DataFrame, str]:
    """The table to fit: given, the spec's ``data:`` file, or simulated from ``simulate:``."""
    if table is not None:
        return as_dataframe(table), "table" if not isinstance(table, str) else table
    if spec.data:
        return read_table(spec.data), spec.data
    if spec.simulate is not None:
        return simulate_table(spec), "simulated"
    raise HbmError("no data: give a data file, set 'data:' in the spec, or add a 'simulate:' block",
                   where="data")


def compile(spec, table=None, *, devices: int | str | None = None) -> CompiledModel:  # noqa: A001
    """Compile ``spec`` (a path, YAML text, dict or Spec) against ``table`` (or the spec's data)."""
    spec = load_spec(spec)
    df, _ = load_data(spec, table)
    return compile_table(spec, df, devices=devices)

