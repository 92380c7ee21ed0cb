"""Several processes: ``hbm fit --distributed`` over 2 processes x 2 CPU devices on 127.0.0.1 gives the
loss trajectory of one process; each process reads only its share of the row groups; only process 0
prints (the summary, the convergence line, the verdict) and writes the run directory, the same files as
a one-process fit's."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hbm.pipeline.distributed import SharedLevels, shares
from hbm.errors import HbmError
from hbm.io.rundir import load_run
from hbm.data.table import TableInfo

SPEC = textwrap.dedent("""\
    name: dist
    formula: log(units) ~ 0 + log(price) | product/category + 1 | product + (1 | category:period)
    family: poisson
    priors:
      log(price): normal(-2, 1)
      sd(log(price) | category): 0.5
      sd(log(price) | product): 1
      sd(1 | product): 2
      sd(1 | category:period): 1
    inference: {engine: svi, steps: 60, tolerance: 0, draws: 20, seed: 3}
    """)


def _panel(products=40, periods=12, seed=0) -> pd.DataFrame:
    """Products nested in categories over periods, about 10% of the cells missing; the product labels
    are not in data order, so level codes depend on seeing the whole file."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 4, products)
    p, t = np.meshgrid(np.arange(products), np.arange(periods), indexing="ij")
    p, t = p.reshape(-1), t.reshape(-1)
    keep = rng.uniform(size=p.size) > 0.1
    p, t = p[keep], t[keep]
    price = np.exp(rng.normal(0, 0.3, p.size))
    a = rng.normal(-2, 0.5, products)
    units = rng.poisson(np.exp(2.0 + a[p] * np.log(price) + rng.normal(0, 0.3, products)[p]))
    names = np.array([f"p{(17 * i) % products:03d}" for i in range(products)])
    return pd.DataFrame({"product": names[p], "category": np.array(["c1", "c3", "c0", "c2"])[cat[p]],
                         "period": t, "price": price, "units": units})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hbm(args, devices: int, env_extra: dict | None = None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "hbm.cli", "fit", *map(str, args), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_match_one(tmp_path):
    df = _panel()
    data = tmp_path / "panel.parquet"
    df.to_parquet(data, index=False, row_group_size=97)   # row groups cut through products
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    port = _free_port()
    # one process, flat rows; two processes, panel layout with block rows cut between processes
    single = _hbm([spec, data, "--out", tmp_path / "one"], 1, {"HBM_LAYOUT": "flat"})
    # process 1 through the environment variables, process 0 through the flags
    procs = [_hbm([spec, data, "--out", tmp_path / "two", "--distributed", "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", 2, "--process-id", 0], 2, {"HBM_LAYOUT": "panel"}),
             _hbm([spec, data, "--out", tmp_path / "two", "--distributed"], 2,
                  {"HBM_COORDINATOR": f"127.0.0.1:{port}", "HBM_NUM_PROCESSES": "2", "HBM_PROCESS_ID": "1",
                   "HBM_LAYOUT": "panel"})]
    outs = [p.communicate(timeout=300) for p in [single] + procs]
    for p, (out, err) in zip([single] + procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "results written" in outs[1][0]
    # process 1 prints nothing of its own (the collectives' library announces its connections)
    assert [line for line in outs[2][0].splitlines()           # (blank lines: Gloo's threads interleave)
            if line.strip() and not line.startswith("[Gloo]")] == [], outs[2][0][-500:]
    one, two = load_run(tmp_path / "one"), load_run(tmp_path / "two")
    # the one `hbm fit` path: the same report (convergence line, PSIS verdict) and the same run files
    for (out, _), run in zip(outs[:2], (one, two)):
        assert "\nsvi: 60 steps, stopped: max_steps\n" in out
        verdict = run.fit_info["diagnostics"]["verdict"]
        assert verdict.startswith("Pareto k-hat") and f"\n{verdict}\n" in out.replace("\n    ", " ")   # wrapped
    # the same files, but the per-row groups and their picture (each process holds a share of the rows)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir() if p.name != "ppc.png")
    assert {"log_likelihood", "posterior_predictive"} <= set(one.idata().groups())
    assert not {"log_likelihood", "posterior_predictive"} & set(two.idata().groups())
    assert "distributed" in two.fit_info["outputs"]["log_likelihood"]["reason"]
    assert not list(tmp_path.glob("*.partial"))
    assert two.fit_info["devices"]["count"] == 4 and two.fit_info["data"]["rows"] == len(df)
    np.testing.assert_allclose(two.loss(), one.loss(), rtol=2e-4)
    assert len(one.loss()) == 60
    s1, s2 = one.summary, two.summary
    assert list(s1.index) == list(s2.index)
    np.testing.assert_allclose(s2["mean"].to_numpy(), s1["mean"].to_numpy(), rtol=1e-2, atol=1e-2)
    # the observed data are every row's response, in the file's order
    obs = two.idata().observed_data["units"].values.reshape(-1)
    np.testing.assert_array_equal(obs, df["units"].to_numpy().astype(np.float32))


def test_shares_are_contiguous_and_balanced():
    assert shares([10] * 4, 2) == [[0, 1], [2, 3]]
    assert shares([1, 1, 100], 2) == [[0, 1], [2]]
    parts = shares([3] * 10, 4)
    assert sum(parts, []) == list(range(10)) and all(parts)
    with pytest.raises(HbmError, match="fewer than the 3 processes"):
        shares([5, 5], 3)


def test_local_codes_follow_the_whole_table(tmp_path):
    df = _panel()
    path = tmp_path / "d.parquet"
    df.to_parquet(path, index=False, row_group_size=50)
    from hbm.pipeline.distributed import ColumnFrame
    pf = pq.ParquetFile(path)
    whole = TableInfo(ColumnFrame(pf), "")
    part = pf.read_row_groups([2, 3]).to_pandas()
    local = SharedLevels(part, "", whole)
    for cols in [("product",), ("category", "period")]:
        codes, labels = local.levels(cols)
        wcodes, wlabels = whole.levels(cols)
        assert labels == wlabels
        np.testing.assert_array_equal(codes, wcodes[100:100 + len(part)])


@pytest.mark.parametrize("layout", ["panel", "flat"])
def test_shares_of_the_rows_add_up_to_the_whole(layout):
    """What each process builds from its share (block rows cut between shares, padded to a common
    length) adds up to the single-process log-likelihood."""
    import jax
    from numpyro import handlers
    from numpyro.infer.util import log_density

    from hbm.pipeline.compiled import compile_table
    from hbm.data.devices import place
    from hbm.data.layout import build_rows
    from hbm.spec import load_spec

    df = _panel()
    spec = load_spec(SPEC)
    m = compile_table(spec, df, layout=layout)
    tr = handlers.trace(handlers.seed(m.numpyro_model, 0)).get_trace(m.rows, m.consts)
    params = {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
    logp = jax.jit(lambda p, r, c: log_density(m.numpyro_model, (r, c), {}, p)[0])
    flat_rows = jax.tree.map(np.asarray, m.rows)
    prior = float(jax.jit(lambda p: log_density(m.numpyro_model, (m.rows, m.consts), {"mode": "latent"}, p)[0])(
        params))
    whole = float(logp(params, m.rows, m.consts))
    cuts = [0, 130, 131, len(df)]              # the middle share is a single row
    blocks = [np.unique(m.layout.block[a:b]) if layout == "panel" else None for a, b in zip(cuts, cuts[1:])]
    length = max(len(b) for b in blocks) if layout == "panel" else max(np.diff(cuts))
    total = 0.0
    for (a, b), blk in zip(zip(cuts, cuts[1:]), blocks):
        part = jax.tree.map(lambda v: v[a:b], flat_rows)
        rows, lay = build_rows(m.ir, m.layout, part, np.arange(a, b), blk, mask=True)
        rows, consts = place(rows, dataclasses.replace(jax.tree.map(np.asarray, m.consts), pattern=lay.pattern), None)
        from hbm.data.layout import pad_rows
        rows = jax.tree.map(jax.numpy.asarray, pad_rows(jax.tree.map(np.asarray, rows), 1, length))
        total += float(logp(params, rows, consts)) - prior
    np.testing.assert_allclose(total + prior, whole, rtol=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--set", "inference.checkpoint_every=10"], "a distributed fit writes no checkpoints"),
    (["--set", "inference.checkpoint_seconds=5"], "a distributed fit writes no checkpoints"),
    (["--check-subset"], "--check-subset needs the whole table in one process"),
])
def test_distributed_refuses_what_it_cannot_do(tmp_path, capsys, extra, message):
    """Said (exit 2) before any process connects: no coordinator is running here."""
    from hbm.cli.main import main
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    data = tmp_path / "d.parquet"
    _panel(products=4, periods=3).to_parquet(data, index=False)
    code = main(["fit", str(spec), str(data), "--out", str(tmp_path / "x"), "--distributed", "--quiet",
                 "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0", *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_is_not_distributed(tmp_path, capsys):
    from hbm.cli.main import main
    assert main(["fit", "--resume", str(tmp_path / "x"), "--distributed"]) == 2
    assert "a distributed fit writes no checkpoints" in capsys.readouterr().err
