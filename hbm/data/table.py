"""The data table as the compiler sees it: columns, kinds, levels, numeric expressions.

Reading files, validating columns (missing values, domains) and factorizing
grouping columns happen here once, before any model exists.
"""
from __future__ import annotations

import copy
import csv
import datetime
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from hbm.frontend import ast as A
from hbm.errors import HbmError, did_you_mean
from hbm.vocabulary.functions import OPS
from hbm.vocabulary.limits import check_regular_file

READERS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "ipc",
           ".feather": "ipc", ".ipc": "ipc"}


def not_a_url(path, where: str = "data") -> None:
    """hbm reads local files only: a URL is said to be one (checked on the text, before ``Path``
    folds its ``//`` into ``/``)."""
    if isinstance(path, str) and "://" in path:
        raise HbmError(f"the data '{path}' is a URL; hbm reads local files only", where=where,
                       hint="download it first (e.g. curl -O URL) and give the local file")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a Parquet, CSV or Arrow IPC file into a DataFrame."""
    not_a_url(path)
    p = Path(path)
    if not p.exists():
        raise HbmError(f"data file not found: {p}", where="data")
    kind = READERS.get(p.suffix.lower())
    if kind is None:
        raise HbmError(f"cannot tell the format of data file {p}",
                       hint="use a .parquet, .csv or .arrow/.feather file", where="data")
    check_regular_file(p, "data")   # a FIFO would hang the reader, /dev/zero never ends
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq
            schema = pq.read_schema(p)
            check_unique_columns(schema.names, str(p))
            nested = _nested_types(schema)
            df = pd.read_parquet(p)
        elif kind == "csv":
            _check_csv_header(p)
            nested = {}
            df = pd.read_csv(p)
        else:
            import pyarrow.feather as feather
            table = feather.read_table(p)
            check_unique_columns(table.schema.names, str(p))
            nested = _nested_types(table.schema)
            df = table.to_pandas()
    except HbmError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file, said plainly
        raise HbmError(f"could not read {p} as {kind}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                       where="data") from None
    check_unique_columns([str(c) for c in df.columns], str(p))
    if nested:
        df.attrs["nested_types"] = nested   # the file's own type names, for TableInfo's message
    return df


def _nested_types(schema) -> dict[str, str]:
    """Arrow type names of the columns that hold structs, lists or maps."""
    return {f.name: str(f.type) for f in schema if _is_nested(f.type)}


def _is_nested(arrow_type) -> bool:
    import pyarrow as pa
    return pa.types.is_nested(arrow_type)


_FLAT_HINT = ("a formula uses flat columns: unpack the field you need into a column of its own "
              "(pyarrow's Table.flatten, pandas' json_normalize) before fitting")


def _check_csv_header(path: Path) -> None:
    """A CSV header that names a column twice: pandas would rename the second to ``x.1`` silently."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    check_unique_columns([h.strip() for h in header], str(path))


def check_unique_columns(names: list[str], where: str) -> None:
    """An HbmError naming the columns that appear more than once in ``names``."""
    dups = [n for n, k in Counter(names).items() if k > 1]
    if dups:
        shown = ", ".join(f"'{n}' ({Counter(names)[n]} times)" for n in dups[:5])
        raise HbmError(f"the data names {'a column' if len(dups) == 1 else 'columns'} more than once: {shown}",
                       where=f"data {where}", hint="rename or drop the repeated columns: a formula names "
                                                 "each column once, so which one it means is unclear")


def as_dataframe(table) -> pd.DataFrame:
    """A pandas DataFrame from a DataFrame, a pyarrow Table, a dict of columns or a path."""
    if isinstance(table, pd.DataFrame):
        return table
    if isinstance(table, (str, Path)):
        return read_table(table)
    try:
        import pyarrow as pa
        if isinstance(table, pa.Table):
            return table.to_pandas()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(table, dict):
        return pd.DataFrame(table)
    raise HbmError(f"cannot use a {type(table).__name__} as data",
                   hint="pass a pandas DataFrame, a pyarrow Table or a file path")


class TableInfo:
    """Columns of one table, with cached factorizations and evaluated expressions.

    ``stats`` holds the means and standard deviations used by ``center()`` and
    ``scale()``; when predicting, pass the fit's stats so new data is transformed
    the same way.
    """

    def __init__(self, df: pd.DataFrame, formula: str = "", stats: dict | None = None):
        if len(df) == 0:
            raise HbmError("the data has no rows", where="data")
        check_unique_columns([str(c) for c in df.columns], "table")
        self.df = df
        self.formula = formula
        self.n = len(df)
        self.stats: dict[str, tuple[float, float]] = dict(stats or {})
        self._levels: dict[tuple[str, ...], tuple[np.ndarray, list[str]]] = {}
        self._single: dict[str, tuple[np.ndarray, list[str]]] = {}
        self._numeric: dict[str, np.ndarray] = {}

    def view(self, formula: str, extra: dict[str, np.ndarray] | None = None) -> "TableInfo":
        """The same table seen from another formula: errors point into ``formula``; the level
        tables and center()/scale() statistics are shared; ``extra`` adds named numeric values that
        are not columns (the stand-in response of a non-linear parameter's formula)."""
        v = copy.copy(self)
        v.formula = formula
        v._numeric = {**self._numeric, **(extra or {})}
        return v

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.df.columns]

    def _missing(self, name: str, span=None) -> HbmError:
        return HbmError(f"unknown column '{name}'", span=span, source=self.formula or None,
                        where="formula", hint=did_you_mean(name, self.columns)
                        or f"the data's columns are: {', '.join(self.columns[:20])}")

    def require(self, name: str, span=None) -> pd.Series:
        if name not in self.df.columns:
            raise self._missing(name, span)
        s = self.df[name]
        self._check_flat(name, s)
        bad = s.isna().to_numpy()
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise HbmError(f"column '{name}' has {len(rows)} missing values (NaN) in rows {shown}",
                           where=f"column '{name}'",
                           hint="drop or fill those rows before fitting")
        return s

    def _check_flat(self, name: str, s: pd.Series) -> None:
        """A column of structs, lists or maps (Parquet, Arrow) is neither numbers nor labels."""
        arrow = getattr(s.dtype, "pyarrow_dtype", None)   # a pandas ArrowDtype column
        if arrow is not None and _is_nested(arrow):
            raise HbmError(f"column '{name}' holds values of type {arrow}, not numbers or labels",
                           where=f"column '{name}'", hint=_FLAT_HINT)
        if s.dtype != object:
            return
        first = s.head(1000).dropna().iloc[:1]       # a sample: the column may have 10^8 rows
        types = getattr(self.df, "attrs", {}).get("nested_types", {})
        if name in types or (len(first) and isinstance(first.iloc[0], (dict, list, tuple, set, np.ndarray))):
            kind = types.get(name) or type(first.iloc[0]).__name__.replace("ndarray", "list").replace("dict", "struct")
            raise HbmError(f"column '{name}' holds values of type {kind}, not numbers or labels",
                           where=f"column '{name}'", hint=_FLAT_HINT)

    def is_categorical(self, name: str) -> bool:
        """Whether a column used as a predictor is text (a factor); dates and times are refused."""
        s = self.df[name]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            return False
        self._check_not_dates(name, s)
        self._check_mostly_numbers(name, s)
        return True

    def _check_not_dates(self, name: str, s: pd.Series) -> None:
        """Dates and times (a datetime column, or ISO dates as text) are not a predictor as they are:
        as numbers their unit is arbitrary (nanoseconds), as a factor every date is a level."""
        dtype = s.dtype
        if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype) \
                or isinstance(dtype, pd.PeriodDtype):
            kind = str(dtype)
        else:
            sample = s.head(10_000).dropna().iloc[:100]
            if not len(sample):
                return
            values = sample.tolist()
            if all(isinstance(v, (datetime.date, datetime.time, datetime.timedelta)) for v in values):
                kind = type(values[0]).__name__
            elif all(isinstance(v, str) and _ISO_DATE.match(v.strip()) for v in values):
                kind = "dates written as text"
            else:
                return
        raise HbmError(f"column '{name}' holds dates or times ({kind}); a formula cannot use them as a "
                       "predictor as they are", where=f"column '{name}'",
                       hint=f"convert '{name}' to a number first (e.g. days since the first date), or use it "
                            f"as categories: factor({name}) or a group term (1 | {name})")

    def _check_mostly_numbers(self, name: str, s: pd.Series) -> None:
        """A column of numbers with a few stray strings ("abc", "n/a") is a data error, not a factor."""
        if isinstance(s.dtype, pd.CategoricalDtype):
            return
        values = s.dropna()
        parsed = pd.to_numeric(values, errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any() and (~bad).sum() >= max(1, len(values) // 2):
            rows = np.flatnonzero(bad)
            shown = ", ".join(f"{values.iloc[r]!r} (row {values.index[r]})" for r in rows[:3])
            raise HbmError(f"column '{name}' has values that are not numbers: {shown}"
                           + (f" and {len(rows) - 3} more" if len(rows) > 3 else ""),
                           where=f"column '{name}'",
                           hint="fix or drop those rows; if the column really is categorical, write "
                                f"factor({name})")

    # ---- grouping factors
    def levels(self, columns: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
        """int32 codes per row and level labels for the distinct values of ``columns``."""
        if columns not in self._levels:
            if len(columns) == 1:
                self._levels[columns] = self._factorize(columns[0])
            else:
                parts = [self._factorize(c) for c in columns]
                combined = np.zeros(self.n, np.int64)
                for codes, labels in parts:
                    combined = combined * len(labels) + codes
                uniq, inverse = np.unique(combined, return_inverse=True)
                labels = []
                for u in uniq.tolist():
                    names = []
                    for _, labs in reversed(parts):
                        names.append(labs[u % len(labs)])
                        u //= len(labs)
                    labels.append(":".join(reversed(names)))
                self._levels[columns] = (inverse.astype(np.int32), labels)
        return self._levels[columns]

    def _factorize(self, col: str) -> tuple[np.ndarray, list[str]]:
        if col not in self._single:
            s = self.require(col)
            if isinstance(s.dtype, pd.CategoricalDtype):
                s = s.cat.remove_unused_categories()
                codes = s.cat.codes.to_numpy().astype(np.int32)
                labels = [str(c) for c in s.cat.categories]
            else:
                uniq, codes = np.unique(s.to_numpy(), return_inverse=True)
                codes = codes.astype(np.int32)
                labels = [_label(u) for u in uniq]
            self._single[col] = (codes, labels)
        return self._single[col]

    # ---- numeric expressions
    def numeric(self, expr: A.Expr) -> np.ndarray:
        """Evaluate a numeric predictor expression (a column or transforms of one) as float64."""
        key = str(expr)
        if key not in self._numeric:
            self._numeric[key] = self._eval(expr)
        return self._numeric[key]

    def _eval(self, expr: A.Expr) -> np.ndarray:
        if isinstance(expr, A.Var):
            s = self.require(expr.name, expr.span)
            if self.is_categorical(expr.name):
                raise HbmError(f"column '{expr.name}' holds text, not numbers", span=expr.span,
                               source=self.formula or None, where="formula",
                               hint="use it as a factor or a grouping variable")
            x = s.to_numpy().astype(np.float64)
            if not np.isfinite(x).all():
                raise HbmError(f"column '{expr.name}' has {int((~np.isfinite(x)).sum())} infinite values",
                               where=f"column '{expr.name}'")
            return x
        if isinstance(expr, A.Paren):
            return self._eval(expr.body)
        fn = OPS.get(expr.func) if isinstance(expr, A.Call) else None
        if fn is not None and fn.formula and (fn.np is not None or fn.standardize is not None):
            x = self._eval(expr.arg)   # a function of the formula's table (hbm/vocabulary/functions.py)
            if fn.domain is not None:
                outside = fn.domain.outside(x)
                if outside.any():
                    self._domain(expr, f"{int(outside.sum())} values {fn.domain.text}", x)
            if fn.standardize is None:
                return fn.np(x)
            key = str(expr)
            if key not in self.stats:
                sd = float(x.std())
                self.stats[key] = (float(x.mean()), sd if sd > 0 else 1.0)
            mean, sd = self.stats[key]
            return fn.standardize(x, mean, sd)
        raise HbmError(f"'{expr}' is not a numeric predictor", span=getattr(expr, "span", None),
                       source=self.formula or None, where="formula")

    def _domain(self, expr: A.Call, what: str, x) -> None:
        raise HbmError(f"{expr.func}() of '{expr.arg}' is undefined: {what}", span=expr.span,
                       source=self.formula or None, where="formula",
                       hint="filter those rows, or transform the column differently")


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?")


def _label(v) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)
