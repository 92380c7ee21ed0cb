"""Encode a non-linear IR: each parameter's arrays, the data leaves and the limits' row masks."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from hbm.frontend import ast as A
from hbm.data.arrays import Consts, NonlinearRows
from hbm.errors import HbmError
from hbm.data.encode import Encoding, encode
from hbm.data.table import TableInfo
from hbm.ir.nonlinear import NonlinearIR
from hbm.ir.nonlinear import evaluate
from hbm.vocabulary.functions import NP_OPS

def parameter_table(info: TableInfo, name: str, source: str, bound: str, scale: float) -> TableInfo:
    """The table as a parameter's formula ``name ~ ...`` sees it: a stand-in response named after
    the parameter, with mean 0 and the scale its default priors take (the response's sd for a real
    parameter, 1 for a bounded one)."""
    s = scale if bound == "real" else 1.0
    v = np.resize(np.array([s, -s]), info.n)
    if info.n % 2 and info.n >= 3:
        v[-3:] = (s * 1.5 ** 0.5, -s * 1.5 ** 0.5, 0.0)
    return info.view(source, {name: v})


# ---------------------------------------------------------------------- encode
def encode_nonlinear(model: NonlinearIR, info: TableInfo) -> tuple[NonlinearRows, Consts, Encoding]:
    """(rows, consts, encoding): the response, each parameter's arrays, the data leaves (finite:
    a typical value stands in where a leaf is infinite) and one row mask per limit."""
    resp = model.response
    extras = {key: info.numeric(A.Var(getattr(resp, key))).astype(np.float32)
              for key in ("trials", "se", "weights") if getattr(resp, key)}
    params, param_consts = {}, {}
    labels, factors = {}, {}
    for p in model.params:
        src = f"{p.name} ~ {p.formula}"
        r, c, enc = encode(p.model, parameter_table(info, p.name, src, p.bound, 1.0))
        params[p.name], param_consts[p.name] = replace(r, y=None), c
        labels.update(enc.labels)
        factors.update(enc.factor_levels)
    data, limits = data_leaves(model, info)
    rows = NonlinearRows(y=info.numeric(A.Var(resp.column)).astype(np.float32), params=params,
                         data={text: v.astype(np.float32) for text, v in data.items()}, limits=limits, **extras)
    return rows, Consts(params=param_consts), Encoding(labels, dict(info.stats), factors)


def data_leaves(model: NonlinearIR, info: TableInfo) -> tuple[dict, dict]:
    """(leaves, limits): each data leaf's values (float64; a typical finite value stands in where the
    leaf is infinite) and each limit's row mask. An infinite leaf outside every limit's pattern
    raises (the fit's data had no such rows, so no limit is known)."""
    with np.errstate(all="ignore"):  # infinities were checked by the resolver: they have limits
        values = {d.text: np.asarray(evaluate(d.expr, NP_OPS, lambda col: info.numeric(A.Var(col.name))),
                                     np.float64) for d in model.leaves}
    values = {t: np.broadcast_to(v, (info.n,)) for t, v in values.items()}
    leaves = {}
    for text, v in values.items():
        finite = np.isfinite(v)
        typical = float(np.median(v[finite])) if finite.any() else 0.0
        leaves[text] = np.where(finite, v, typical)
    limits, covered = {}, np.zeros(info.n, bool)
    for lim in model.limits:
        mask = np.ones(info.n, bool)
        for text in values:
            want = dict(lim.infinite).get(text)
            mask &= np.isfinite(values[text]) if want is None else (values[text] == want)
        limits[lim.key] = mask
        covered |= mask
    bad = np.zeros(info.n, bool)
    for v in values.values():
        bad |= ~np.isfinite(v)
    bad &= ~covered
    if bad.any():
        text = next(t for t, v in values.items() if not np.isfinite(v[bad]).all())
        raise HbmError(f"'{text}' is infinite or undefined in {int(bad.sum()):,} rows, where the fit's formula "
                       "has no limit", where="data",
                       hint="the fit's data had no such rows: drop them, or fit with rows like them")
    return leaves, limits
