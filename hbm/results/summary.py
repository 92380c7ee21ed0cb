"""Posterior outputs: element names, ArviZ InferenceData, summary tables.

An engine's draws arrive as :class:`Outputs` (one :class:`OutputVar` per
parameter, named the way the formula writes it). This module turns them into

* an ``arviz.InferenceData`` (:func:`to_inference_data`), written and read by
  :func:`save_netcdf` / :func:`load_netcdf`;
* a summary ``DataFrame`` with one row per parameter element (:func:`summarize`);
* a terminal table (:func:`format_summary`).

Naming (SPEC section 2):

* variable (xarray) name: ``base`` when the variable has no plate dims, else
  ``base[d1,d2]`` listing its plate dims: ``log(price)[product]``;
* element (summary row) name: ``base`` for a scalar, else ``base[...]`` with
  ``dim=label`` for plate dims and ``label`` alone for other dims, joined by
  ``,``: ``log(price)[product=p000]``, ``factor(period)[2]``.

In the posterior group a dim that has the same name as a variable (a factor
``factor(period)`` whose levels are the dim ``factor(period)``), or is named
``chain``/``draw``, is called ``<dim>_level`` instead, since xarray cannot have
a variable and a dim of one name. Each variable keeps its formula name in the
attribute ``hbm_base`` and its original dims in ``hbm_dims`` (JSON), so
:func:`outputs_from_inference_data` rebuilds the :class:`Outputs` exactly.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

SUMMARY_COLUMNS = ("mean", "sd", "q5", "q25", "q50", "q75", "q95")
DIAGNOSTIC_COLUMNS = ("r_hat", "ess_bulk", "ess_tail")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
ELEMENT_SEP = ","
# How many float64 numbers one chunk of the summary works on at a time (bounds memory).
_CHUNK_VALUES = 1 << 20


@dataclass(frozen=True)
class OutputVar:
    base: str                 # the formula's name: "Intercept", "sd(1 | product)", "factor(period)"
    dims: tuple[str, ...]     # () for scalars; ("product",); ("factor(period)",)
    values: np.ndarray        # (chains, draws, *shape), shape matching dims

    def __post_init__(self):
        values = np.asarray(self.values)
        if values.ndim != 2 + len(self.dims):
            raise ValueError(f"OutputVar {self.base!r}: values of shape {values.shape} do not "
                             f"match (chain, draw, *{self.dims})")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "dims", tuple(self.dims))


@dataclass(frozen=True)
class Outputs:
    vars: tuple[OutputVar, ...]
    coords: dict[str, list[str]]   # dim -> level labels (the data's own labels, as strings)
    plate_dims: frozenset[str]     # which dims are grouping factors (plates)


# ---------------------------------------------------------------- names

def var_name(var: OutputVar, plate_dims) -> str:
    """The xarray name of ``var``: ``base``, or ``base[d1,d2]`` listing its plate dims."""
    plates = [d for d in var.dims if d in plate_dims]
    return f"{var.base}[{','.join(plates)}]" if plates else var.base


def _labels(coords: dict, dim: str, size: int) -> list[str]:
    labels = coords.get(dim)
    if labels is None:
        return [str(i) for i in range(size)]
    labels = [str(x) for x in labels]
    if len(labels) != size:
        raise ValueError(f"dim {dim!r} has {size} entries but {len(labels)} coordinate labels")
    return labels


def element_names(var: OutputVar, coords: dict, plate_dims) -> list[str]:
    """Row names of ``var``'s elements, in C order of its shape."""
    if not var.dims:
        return [var.base]
    parts = []
    for d, size in zip(var.dims, var.values.shape[2:]):
        labels = _labels(coords, d, size)
        parts.append([f"{d}={x}" for x in labels] if d in plate_dims else labels)
    if len(parts) == 1:
        return [f"{var.base}[{p}]" for p in parts[0]]
    return [f"{var.base}[{ELEMENT_SEP.join(p)}]" for p in itertools.product(*parts)]


# ---------------------------------------------------------------- InferenceData

def _netcdf_attr(value):
    if isinstance(value, (str, int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return value
    return json.dumps(value, default=str)


def to_inference_data(outputs: Outputs, sample_stats: dict | None = None,
                      loss: np.ndarray | None = None, observed: dict | None = None,
                      attrs: dict | None = None):
    """An ``arviz.InferenceData`` with posterior, sample_stats and observed_data groups.

    ``sample_stats`` arrays are (chains, draws); ``loss`` (the optimiser's loss
    history) becomes the sample_stats variable ``loss`` with its own dim
    ``step``; ``observed`` arrays get the row dim ``obs``. ``attrs`` go to the
    root of the InferenceData (values that are not str or numbers are stored
    as JSON text, since netCDF attributes cannot hold them).
    """
    import arviz as az
    from arviz.data.base import make_attrs

    if not outputs.vars:
        raise ValueError("Outputs has no variables")
    names = [var_name(v, outputs.plate_dims) for v in outputs.vars]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two output variables share the name(s) {dup}")
    chains, draws = outputs.vars[0].values.shape[:2]
    taken = set(names) | {"chain", "draw"}
    dim_map: dict[str, str] = {}
    for v in outputs.vars:
        if v.values.shape[:2] != (chains, draws):
            raise ValueError(f"{v.base!r} has {v.values.shape[:2]} (chain, draw), expected {(chains, draws)}")
        for d in v.dims:
            if d not in dim_map:
                x = d
                while x in taken:
                    x = f"{x}_level"
                taken.add(x)
                dim_map[d] = x

    data_vars, coords = {}, {"chain": np.arange(chains), "draw": np.arange(draws)}
    for v, name in zip(outputs.vars, names):
        xdims = ("chain", "draw") + tuple(dim_map[d] for d in v.dims)
        for d, size in zip(v.dims, v.values.shape[2:]):
            coords.setdefault(dim_map[d], np.asarray(_labels(outputs.coords, d, size), dtype=str))
        data_vars[name] = xr.Variable(xdims, v.values, attrs={
            "hbm_base": v.base, "hbm_dims": json.dumps(list(v.dims))})
    post_attrs = make_attrs({"hbm_plate_dims": json.dumps(sorted(outputs.plate_dims))})
    groups = {"posterior": xr.Dataset(data_vars, coords=coords, attrs=post_attrs)}

    stats = {}
    for k, a in (sample_stats or {}).items():
        a = np.asarray(a)
        if a.shape[:2] != (chains, draws):
            raise ValueError(f"sample stat {k!r} has shape {a.shape}, expected ({chains}, {draws}, ...)")
        stats[k] = (("chain", "draw") + tuple(f"{k}_dim_{i}" for i in range(a.ndim - 2)), a)
    if loss is not None:
        stats["loss"] = (("step",), np.asarray(loss).reshape(-1))
    if stats:
        scoords = {"chain": np.arange(chains), "draw": np.arange(draws)} if sample_stats else {}
        if loss is not None:
            scoords["step"] = np.arange(stats["loss"][1].size)
        groups["sample_stats"] = xr.Dataset(stats, coords=scoords, attrs=make_attrs())
    if observed:
        obs = {}
        for k, a in observed.items():
            a = np.asarray(a)
            if a.dtype == object:
                a = a.astype(str)
            obs[k] = (("obs",) + tuple(f"{k}_dim_{i}" for i in range(a.ndim - 1)), a)
        groups["observed_data"] = xr.Dataset(obs, attrs=make_attrs())
    root = {k: _netcdf_attr(v) for k, v in (attrs or {}).items()}
    return az.InferenceData(attrs=root or None, **groups)


def outputs_from_inference_data(idata) -> Outputs:
    """The :class:`Outputs` that :func:`to_inference_data` was given (posterior group only)."""
    post = idata.posterior
    plate_dims = frozenset(json.loads(post.attrs.get("hbm_plate_dims", "[]")))
    out_vars, coords = [], {}
    for name, da in post.data_vars.items():
        base = da.attrs.get("hbm_base", name)
        dims = tuple(json.loads(da.attrs["hbm_dims"])) if "hbm_dims" in da.attrs else tuple(da.dims[2:])
        for d, xd in zip(dims, da.dims[2:]):
            if xd in da.coords:
                coords[d] = [str(x) for x in da.coords[xd].values.tolist()]
        out_vars.append(OutputVar(base, dims, np.asarray(da.values)))
    return Outputs(tuple(out_vars), coords, plate_dims)


# netCDF (HDF5) names cannot contain "/" and cannot be "." or "..": such names are
# percent-encoded on save ("%" itself too, so the encoding is reversible) and decoded on load.
_ENCODING_ATTR = "hbm_name_encoding"
_BAD_CHARS = re.compile(r"[%/\x00-\x1f\x7f]")


def _encode(name: str) -> str:
    if name in (".", ".."):
        return name.replace(".", "%2E")
    return _BAD_CHARS.sub(lambda m: f"%{ord(m.group()):02X}", name)


def _decode(name: str) -> str:
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def _rename_groups(idata, fn):
    import arviz as az
    groups, changed = {}, False
    for g in idata.groups():
        ds = idata[g]
        names = set(ds.variables) | set(ds.dims)
        mapping = {n: fn(n) for n in names if fn(n) != n}
        changed |= bool(mapping)
        groups[g] = ds.rename(mapping) if mapping else ds
    return az.InferenceData(attrs=dict(idata.attrs) or None, **groups), changed


MEMORY_IMAGE_MAX = 1 << 30   # bytes of draws up to which posterior.nc is built in memory first


def save_netcdf(idata, path) -> Path:
    """Write ``idata`` to ``path`` (h5netcdf), encoding names netCDF cannot hold.

    The file is built in memory (ArviZ's layout: the attributes at the root, one compressed group
    each) and then written with plain file I/O, so a disk that fills up meanwhile is an ordinary
    ``OSError``, never HDF5 failing in its finalisers (tracebacks "ignored in __dealloc__", then a
    segmentation fault). Beyond ``MEMORY_IMAGE_MAX`` bytes of draws ArviZ writes the file itself."""
    encoded, changed = _rename_groups(idata, _encode)
    if changed:
        encoded.attrs[_ENCODING_ATTR] = "percent"
    groups = {g: getattr(encoded, g) for g in encoded.groups()}
    if sum(ds.nbytes for ds in groups.values()) > MEMORY_IMAGE_MAX:
        encoded.to_netcdf(str(path), engine="h5netcdf")
        return Path(path)
    image, mode = io.BytesIO(), "w"
    if encoded.attrs:
        xr.Dataset(attrs=dict(encoded.attrs)).to_netcdf(image, mode=mode, engine="h5netcdf")
        mode = "a"
    for g, ds in groups.items():
        zlib = {v: {"zlib": True} for v, x in ds.variables.items() if x.dtype.kind in "biufcS"}
        ds.to_netcdf(image, mode=mode, group=g, engine="h5netcdf", encoding=zlib)
        mode = "a"
    with open(path, "wb") as f:
        f.write(image.getbuffer())
    return Path(path)


def load_netcdf(path):
    """Read an InferenceData written by :func:`save_netcdf` fully into memory (file closed)."""
    import arviz as az
    with az.rc_context({"data.load": "eager"}):
        idata = az.from_netcdf(str(path), engine="h5netcdf")
    if idata.attrs.get(_ENCODING_ATTR) == "percent":
        idata, _ = _rename_groups(idata, _decode)
        del idata.attrs[_ENCODING_ATTR]
    return idata


# ---------------------------------------------------------------- diagnostics
# Vectorised ports of arviz.rhat(method="rank") and arviz.ess(method="bulk"/"tail")
# (Vehtari et al. 2021): ArviZ calls its 1-d functions once per element from a Python
# loop; these work on chunks of elements per numpy call (sorting and FFTs still cost
# about 2 ms per element for 4 x 1000 draws on one core), run on a thread pool, and
# agree with ArviZ to rounding (tests/test_results.py checks it).
# Every array below is (elements, chains, draws).

def _split_chains(x):
    half = x.shape[2] // 2
    return np.concatenate([x[:, :, :half], x[:, :, x.shape[2] - half:]], axis=1)


def _avg_ranks(flat, order=None):
    """Ranks 1..n along axis 1, ties sharing their mean rank (scipy's "average")."""
    k, n = flat.shape
    if order is None:
        order = np.argsort(flat, axis=1)
    s = np.take_along_axis(flat, order, axis=1)
    pos = np.arange(n)
    new = np.ones((k, n), bool)
    np.not_equal(s[:, 1:], s[:, :-1], out=new[:, 1:])
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    last = np.ones((k, n), bool)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((k, n))
    ranks[np.arange(k)[:, None], order] = (start + end) * 0.5 + 1.0
    return ranks


def _z_from_ranks(ranks, shape):
    from scipy.special import ndtri
    return ndtri((ranks - 0.375) / (ranks.shape[1] + 0.25)).reshape(shape)


def _rhat(x):
    n = x.shape[2]
    between = n * x.mean(axis=2).var(axis=1, ddof=1)
    within = x.var(axis=2, ddof=1).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _ess(x):
    """Geyer's initial monotone sequence estimate, as arviz.stats.diagnostics._ess."""
    from scipy.fft import next_fast_len
    k, c, n = x.shape
    size = c * n
    centred = x - x.mean(axis=2, keepdims=True)
    m = next_fast_len(2 * n)
    f = np.fft.rfft(centred, n=m, axis=2)
    acov = np.fft.irfft(f.real ** 2 + f.imag ** 2, n=m, axis=2)[:, :, :n] / n
    mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if c > 1:
        var_plus = var_plus + x.mean(axis=2).var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var[:, None] - acov.mean(axis=1)) / var_plus[:, None]
    rho[:, 0] = 1.0
    npairs = n // 2
    pairs = rho[:, 0:2 * npairs:2] + rho[:, 1:2 * npairs:2]          # P_m = rho[2m] + rho[2m+1]
    n_valid = sum(1 for m in range(1, npairs) if 2 * m - 1 < n - 3)  # pairs the scan may reach
    go = pairs[:, :n_valid] > 0                                      # pair m+1 computed iff P_m > 0
    m_last = np.cumprod(go, axis=1).sum(axis=1)                      # pairs computed after P_0
    running = np.minimum.accumulate(pairs, axis=1)                   # the monotone sequence
    body = np.where(np.arange(npairs) < m_last[:, None], running, 0.0).sum(axis=1)
    rows = np.arange(k)
    rho_end, p_end = rho[rows, 2 * m_last], pairs[rows, m_last]
    tail = np.where((m_last == 0) | (p_end >= 0) | (rho_end > 0), rho_end, 0.0)
    tau = np.maximum(-1.0 + 2.0 * body + tail, 1.0 / np.log10(size))
    ess = size / tau
    ess[np.isnan(rho[:, 1]) | np.isnan(body)] = np.nan
    ess[(x.max(axis=(1, 2)) - x.min(axis=(1, 2))) < np.finfo(float).resolution] = size
    return ess


def _quantiles(sorted_flat, probs):
    """numpy's default ("linear", R type 7) quantiles of each row of a sorted 2-d array."""
    n = sorted_flat.shape[1]
    h = (n - 1) * np.asarray(probs, dtype=float)
    lo = np.floor(h).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    a, b = sorted_flat[:, lo], sorted_flat[:, hi]
    return a + (h - lo) * (b - a)


def _tail_quantiles(sorted_flat, probs):
    """The same quantiles as ArviZ's tail ESS takes (scipy mquantiles, alphap=betap=1),
    rounding included: which draws count as "<= q" must match it exactly."""
    n = sorted_flat.shape[1]
    p = np.asarray(probs, dtype=float)
    aleph = n * p + (1.0 + p * (1.0 - 1.0 - 1.0))
    k = np.floor(aleph.clip(1, n - 1)).astype(int)
    gamma = (aleph - k).clip(0, 1)
    return (1.0 - gamma) * sorted_flat[:, k - 1] + gamma * sorted_flat[:, k]


def _block_stats(x, diag):
    """Summary columns (mean, sd, q5..q95, r_hat, ess_bulk, ess_tail) of each element of
    ``x`` (elements, chains, draws); the diagnostics are NaN unless ``diag``."""
    k, c, d = x.shape
    out = np.full((k, 10), np.nan)
    flat = x.reshape(k, c * d)
    diag = diag and d >= 4
    if diag and d % 2 == 0:     # the ranks for r_hat/ESS come from the same sort
        order = np.argsort(flat, axis=1)
        srt = np.take_along_axis(flat, order, axis=1)
    else:
        order, srt = None, np.sort(flat, axis=1)
    out[:, 0] = flat.mean(axis=1)
    out[:, 1] = flat.std(axis=1, ddof=1) if c * d > 1 else 0.0
    out[:, 2:7] = _quantiles(srt, QUANTILES)
    out[np.isnan(srt[:, -1]), 2:7] = np.nan    # NaN sorts last
    ok = np.isfinite(srt[:, 0]) & np.isfinite(srt[:, -1])
    if diag and ok.any():
        out[ok, 7:] = _diagnostics(x[ok], None if order is None else order[ok], srt[ok])
    return out


def _diagnostics(x, order=None, srt=None):
    """Rank-normalised split r_hat, bulk and tail ESS of each element of finite ``x``
    (elements, chains, draws); ``order``/``srt``: argsort and sorted values of the
    flattened draws when already at hand (``order`` only when draws are even)."""
    k, c, d = x.shape
    if srt is None:
        srt = np.sort(x.reshape(k, -1), axis=1)
    split = _split_chains(x)
    if order is not None:   # even draws: the split chains hold the same draws, reordered
        z = _split_chains(_z_from_ranks(_avg_ranks(x.reshape(k, -1), order), x.shape))
        mid = srt.shape[1] // 2          # even count: np.median's mean of the middle two
        median = (srt[:, mid - 1:mid] + srt[:, mid:mid + 1]) / 2.0
    else:
        z = _z_from_ranks(_avg_ranks(split.reshape(k, -1)), split.shape)
        median = np.median(split.reshape(k, -1), axis=1, keepdims=True)
    out = np.full((k, 3), np.nan)
    if c >= 2:
        folded = np.abs(split - median[:, :, None]).reshape(k, -1)
        out[:, 0] = np.maximum(_rhat(z), _rhat(_z_from_ranks(_avg_ranks(folded), split.shape)))
    out[:, 1] = _ess(z)
    q = _tail_quantiles(srt, [0.05, 0.95])
    out[:, 2] = np.minimum(*(_ess(_split_chains((x <= q[:, i, None, None]).astype(float)))
                             for i in range(2)))
    return out


# ---------------------------------------------------------------- summary

def summarize(outputs: Outputs, kind: str) -> pd.DataFrame:
    """One row per parameter element (index "parameter"): mean, sd (ddof=1), q5..q95;
    for ``kind == "sampler"`` with chains * draws >= 8 also r_hat, ess_bulk, ess_tail
    (NaN where ArviZ gives NaN: r_hat with one chain, fewer than 4 draws, non-finite
    draws). ``df.attrs["hbm_vars"]`` lists [variable name, row count] in row order.
    Chunks of elements run on a thread pool (numpy releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor
    diag = kind == "sampler"
    names, blocks, var_rows, jobs = [], [], [], []
    for v in outputs.vars:
        c, d = v.values.shape[:2]
        flat = v.values.reshape(c, d, -1)
        rows = element_names(v, outputs.coords, outputs.plate_dims)
        names += rows
        var_rows.append([var_name(v, outputs.plate_dims), len(rows)])
        block = np.empty((flat.shape[2], 10))
        blocks.append(block)
        step = max(1, _CHUNK_VALUES // max(1, c * d))
        for a in range(0, flat.shape[2], step):
            jobs.append((block, a, flat[:, :, a:a + step], diag and c * d >= 8))

    def run(job):
        block, a, part, diag_here = job
        x = np.ascontiguousarray(np.moveaxis(part, 2, 0), dtype=np.float64)
        block[a:a + len(x)] = _block_stats(x, diag_here)

    workers = min(8, os.cpu_count() or 1, len(jobs))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, jobs))
    else:
        for job in jobs:
            run(job)
    diag = diag and any(v.values.shape[0] * v.values.shape[1] >= 8 for v in outputs.vars)
    columns = list(SUMMARY_COLUMNS) + (list(DIAGNOSTIC_COLUMNS) if diag else [])
    data = np.concatenate(blocks)[:, :len(columns)] if blocks else np.empty((0, len(columns)))
    df = pd.DataFrame(data, index=pd.Index(names, name="parameter"), columns=columns)
    df.attrs["hbm_vars"] = var_rows
    return df


def _var_groups(df: pd.DataFrame) -> list[tuple[str, int]]:
    """(variable name, row count) for consecutive rows of one variable."""
    given = df.attrs.get("hbm_vars")
    if given and sum(n for _, n in given) == len(df):
        return [(str(name), int(n)) for name, n in given]
    groups: list[list] = []
    for row in df.index.astype(str):
        i = row.find("[")
        if i <= 0 or not row.endswith("]"):
            key = row
        else:
            inner = row[i + 1:-1]
            key = f"{row[:i]}[{inner.split('=', 1)[0]}]" if "=" in inner else row[:i]
        if groups and groups[-1][0] == key and key != row:
            groups[-1][1] += 1
        else:
            groups.append([key, 1])
    return [(k, n) for k, n in groups]


def _fmt(x: float, col: str, sci: bool) -> str:
    if not np.isfinite(x):
        return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")
    if col.startswith("ess"):
        return f"{x:,.0f}"
    if col == "r_hat":
        return f"{x:.3f}"
    return f"{x:.3e}" if sci else f"{x:.3f}"


def _row_cells(row: pd.Series, cols: list[str]) -> list[str]:
    """One row's cells; a row whose values are all tiny or huge is written in e-notation."""
    loc = [abs(float(row[c])) for c in ("mean", "sd", "q5", "q95") if c in row.index]
    scale = max((v for v in loc if np.isfinite(v)), default=1.0)
    sci = scale >= 1e5 or 0 < scale < 1e-3
    return [_fmt(float(row[c]), c, sci) for c in cols]


def format_summary(df: pd.DataFrame, max_rows: int = 30) -> str:
    """A fixed-width table: scalars first, then a few rows of each vector variable."""
    cols = [c for c in ("mean", "sd", "q5", "q50", "q95", *DIAGNOSTIC_COLUMNS) if c in df.columns]
    groups, start = [], 0
    for name, n in _var_groups(df):
        groups.append((name, start, n))
        start += n
    scalars = [g for g in groups if g[2] == 1 and "[" not in df.index[g[1]]]
    vectors = [g for g in groups if g not in scalars]
    budget = max_rows - len(scalars)
    per_var = max(3, budget // max(1, len(vectors)))
    lines: list[tuple[str, object]] = [("row", g[1]) for g in scalars]
    for name, s, n in vectors:
        show = n if n <= per_var else max(1, per_var - 1)
        lines += [("row", i) for i in range(s, s + show)]
        if show < n:
            lines.append(("more", f"... {n - show:,} more rows of {name} in summary.csv"))
    names = [str(df.index[i]) for kind, i in lines if kind == "row"]
    width = min(48, max([len("parameter")] + [len(x) for x in names]))
    cells = {i: _row_cells(df.iloc[i], cols) for kind, i in lines if kind == "row"}
    cw = [max([len(c)] + [len(cells[i][j]) for i in cells]) for j, c in enumerate(cols)]
    out = ["parameter".ljust(width) + "".join("  " + c.rjust(w) for c, w in zip(cols, cw))]
    out.append("-" * len(out[0]))
    for kind, item in lines:
        if kind == "more":
            out.append(item)
            continue
        name = str(df.index[item])
        if len(name) > width:
            name = name[:width - 3] + "..."
        out.append(name.ljust(width) + "".join("  " + v.rjust(w) for v, w in zip(cells[item], cw)))
    if "r_hat" in df.columns and len(df):
        rh = df["r_hat"].to_numpy(dtype=float)
        bad = np.flatnonzero(rh > 1.01)
        if bad.size:
            worst = bad[np.argmax(rh[bad])]
            out.append(f"warning: r_hat > 1.01 for {bad.size:,} of {len(df):,} parameters "
                       f"(worst {rh[worst]:.3f} at {df.index[worst]})")
    return "\n".join(out)
