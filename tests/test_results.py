"""hbm.results and hbm.io.rundir: names, summaries, InferenceData files, run directories."""
from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from hbm.errors import HbmError
from hbm.results.summary import OutputVar, Outputs, element_names, format_summary, load_netcdf, outputs_from_inference_data, save_netcdf, summarize, to_inference_data, var_name
from hbm.io.rundir import load_run, new_run_dir, save_fit, show_run, write_run

RNG = np.random.default_rng(1)


def _outputs(chains=2, draws=50, n_product=4):
    coords = {"product": [f"p{i:03d}" for i in range(n_product)], "factor(period)": ["2", "3"],
              "category:period": ["c01_3", "c02_4"], "Subject": ["308", "309"]}
    r = RNG.normal
    return Outputs(
        vars=(
            OutputVar("Intercept", (), r(size=(chains, draws))),
            OutputVar("log(price)", ("product",), r(size=(chains, draws, n_product))),
            OutputVar("sd(1 | product)", (), np.abs(r(size=(chains, draws)))),
            OutputVar("cor(1, Days | Subject)", (), np.tanh(r(size=(chains, draws)))),
            OutputVar("factor(period)", ("factor(period)",), r(size=(chains, draws, 2))),
            OutputVar("Intercept", ("category:period",), r(size=(chains, draws, 2))),
            OutputVar("Days", ("Subject", "factor(period)"), r(size=(chains, draws, 2, 2))),
        ),
        coords=coords,
        plate_dims=frozenset({"product", "category:period", "Subject"}),
    )


# ---------------------------------------------------------------- names

def test_element_and_variable_names():
    out = _outputs()
    v = {(x.base, x.dims): x for x in out.vars}
    pd_ = out.plate_dims
    assert element_names(v["Intercept", ()], out.coords, pd_) == ["Intercept"]
    assert element_names(v["log(price)", ("product",)], out.coords, pd_)[:2] == [
        "log(price)[product=p000]", "log(price)[product=p001]"]
    assert element_names(v["factor(period)", ("factor(period)",)], out.coords, pd_) == [
        "factor(period)[2]", "factor(period)[3]"]
    assert element_names(v["Intercept", ("category:period",)], out.coords, pd_)[0] == \
        "Intercept[category:period=c01_3]"
    assert element_names(v["Days", ("Subject", "factor(period)")], out.coords, pd_) == [
        "Days[Subject=308,2]", "Days[Subject=308,3]", "Days[Subject=309,2]", "Days[Subject=309,3]"]
    assert var_name(v["log(price)", ("product",)], pd_) == "log(price)[product]"
    assert var_name(v["factor(period)", ("factor(period)",)], pd_) == "factor(period)"
    assert var_name(v["Days", ("Subject", "factor(period)")], pd_) == "Days[Subject]"
    # a dim without coords is numbered
    x = OutputVar("b", ("k",), np.zeros((1, 2, 3)))
    assert element_names(x, {}, frozenset()) == ["b[0]", "b[1]", "b[2]"]
    with pytest.raises(ValueError):
        OutputVar("b", ("k",), np.zeros((1, 2)))


# ---------------------------------------------------------------- summary

def test_summary_matches_numpy():
    out = _outputs(chains=3, draws=40)
    df = summarize(out, "variational")
    assert df.index.name == "parameter"
    assert list(df.columns) == ["mean", "sd", "q5", "q25", "q50", "q75", "q95"]
    names = [n for v in out.vars for n in element_names(v, out.coords, out.plate_dims)]
    assert list(df.index) == names
    for v in out.vars:
        flat = v.values.reshape(v.values.shape[0] * v.values.shape[1], -1)   # (draws, elements)
        rows = element_names(v, out.coords, out.plate_dims)
        got = df.loc[rows]
        np.testing.assert_allclose(got["mean"], flat.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got["sd"], flat.std(0, ddof=1), rtol=1e-12)
        for col, q in zip(["q5", "q25", "q50", "q75", "q95"], [.05, .25, .5, .75, .95]):
            np.testing.assert_allclose(got[col], np.quantile(flat, q, axis=0), rtol=1e-12, atol=1e-14)


def test_summary_known_values_and_float32():
    vals = np.arange(100, dtype=np.float32).reshape(2, 50)   # 0..99
    df = summarize(Outputs((OutputVar("a", (), vals),), {}, frozenset()), "sampler")
    row = df.loc["a"]
    assert row["mean"] == pytest.approx(49.5)
    assert row["q50"] == pytest.approx(49.5)
    assert row["q5"] == pytest.approx(4.95)
    assert row["sd"] == pytest.approx(np.std(np.arange(100), ddof=1))
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(df.columns)
    # too few draws for diagnostics: no diagnostic columns
    tiny = summarize(Outputs((OutputVar("a", (), vals[:1, :5]),), {}, frozenset()), "sampler")
    assert "r_hat" not in tiny.columns


def test_rhat_mixed_vs_shifted_and_matches_arviz():
    import arviz as az
    mixed = RNG.normal(size=(4, 500, 3))
    shifted = mixed + np.array([0.0, 0.0, 3.0, 3.0])[:, None, None]
    out = Outputs((OutputVar("m", ("k",), mixed), OutputVar("s", ("k",), shifted)), {}, frozenset())
    df = summarize(out, "sampler")
    m, s = df.loc[[f"m[{i}]" for i in range(3)]], df.loc[[f"s[{i}]" for i in range(3)]]
    assert (m["r_hat"] < 1.01).all() and (m["r_hat"] > 0.99).all()
    assert (s["r_hat"] > 1.1).all()
    assert (m["ess_bulk"] > 1000).all() and (s["ess_bulk"] < 100).all()
    # the vectorised diagnostics agree with arviz, including odd draws and autocorrelation
    ar = np.cumsum(RNG.normal(size=(3, 61, 4)), axis=1) * 0.3 + RNG.normal(size=(3, 61, 4))
    walk = np.cumsum(RNG.normal(size=(1, 101, 6)), axis=1)      # one chain, odd draws, ties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in [mixed, shifted, ar, walk]:
            rows = summarize(Outputs((OutputVar("x", ("k",), data),), {}, frozenset()), "sampler")
            ds = az.convert_to_dataset(data)
            np.testing.assert_allclose(rows["r_hat"], az.rhat(ds)["x"].values, rtol=1e-10)
            np.testing.assert_allclose(rows["ess_bulk"], az.ess(ds, method="bulk")["x"].values, rtol=1e-10)
            np.testing.assert_allclose(rows["ess_tail"], az.ess(ds, method="tail")["x"].values, rtol=1e-10)


def test_rhat_single_chain_is_nan_and_nan_draws():
    vals = RNG.normal(size=(1, 100, 2))
    vals[0, 3, 1] = np.nan
    df = summarize(Outputs((OutputVar("a", ("k",), vals),), {}, frozenset()), "sampler")
    assert np.isnan(df.loc["a[0]", "r_hat"]) and df.loc["a[0]", "ess_bulk"] > 10
    assert df.loc["a[1]"].isna().all()


# ---------------------------------------------------------------- InferenceData

def test_netcdf_round_trip_names_dims_coords_loss(tmp_path):
    out = _outputs()
    stats = {"diverging": np.zeros((2, 50), bool), "accept_prob": RNG.uniform(size=(2, 50))}
    loss = np.linspace(100.0, 1.0, 30)
    observed = {"units": np.arange(7.0), "store": np.array(["a", "b"] * 3 + ["c"], dtype=object)}
    idata = to_inference_data(out, stats, loss, observed,
                              {"model": "m", "formula": "y ~ x", "info": {"a": [1, 2]}})
    post = idata.posterior
    expected = ["Intercept", "log(price)[product]", "sd(1 | product)", "cor(1, Days | Subject)",
                "factor(period)", "Intercept[category:period]", "Days[Subject]"]
    assert list(post.data_vars) == expected
    assert post["log(price)[product]"].dims == ("chain", "draw", "product")
    assert post["factor(period)"].dims == ("chain", "draw", "factor(period)_level")
    assert post["Days[Subject]"].dims == ("chain", "draw", "Subject", "factor(period)_level")
    assert list(post["product"].values) == ["p000", "p001", "p002", "p003"]

    path = tmp_path / "posterior.nc"
    save_netcdf(idata, path)
    back = load_netcdf(path)
    assert list(back.posterior.data_vars) == expected
    for name in expected:
        assert back.posterior[name].dims == post[name].dims
        np.testing.assert_array_equal(back.posterior[name].values, post[name].values)
    for dim in ("product", "category:period", "Subject", "factor(period)_level"):
        assert [str(x) for x in back.posterior[dim].values] == [str(x) for x in post[dim].values]
    assert back.sample_stats["loss"].dims == ("step",)
    np.testing.assert_array_equal(back.sample_stats["loss"].values, loss)
    np.testing.assert_array_equal(back.sample_stats["accept_prob"].values, stats["accept_prob"])
    assert back.observed_data["units"].dims == ("obs",)
    assert [str(x) for x in back.observed_data["store"].values] == ["a", "b"] * 3 + ["c"]
    assert back.attrs["model"] == "m" and json.loads(back.attrs["info"]) == {"a": [1, 2]}
    # the Outputs come back exactly
    again = outputs_from_inference_data(back)
    assert again.plate_dims == out.plate_dims
    for a, b in zip(again.vars, out.vars):
        assert (a.base, a.dims) == (b.base, b.dims)
        np.testing.assert_array_equal(a.values, b.values)
    assert again.coords["factor(period)"] == ["2", "3"]
    save_netcdf(back, path)      # the file was closed after loading: it can be rewritten
    assert list(load_netcdf(path).posterior.data_vars) == expected


def test_netcdf_encodes_slash_names(tmp_path):
    out = Outputs((OutputVar("sd(1 | a/b)", (), RNG.normal(size=(1, 5))),
                   OutputVar("x%y", ("g/h",), RNG.normal(size=(1, 5, 2)))),
                  {"g/h": ["u/v", "w"]}, frozenset({"g/h"}))
    idata = to_inference_data(out, None, RNG.normal(size=4), None, None)
    save_netcdf(idata, tmp_path / "p.nc")
    back = load_netcdf(tmp_path / "p.nc")
    assert list(back.posterior.data_vars) == ["sd(1 | a/b)", "x%y[g/h]"]
    assert back.posterior["x%y[g/h]"].dims == ("chain", "draw", "g/h")
    assert list(back.posterior["g/h"].values) == ["u/v", "w"]
    assert "hbm_name_encoding" not in back.attrs
    assert list(idata.posterior.data_vars) == ["sd(1 | a/b)", "x%y[g/h]"]   # input untouched


# ---------------------------------------------------------------- run directories

def _files_ok():
    return {"a.txt": b"hello", "b.txt": "text"}


def test_write_run_is_atomic_on_failure(tmp_path):
    target = tmp_path / "runs" / "r1"

    def boom(p):
        p.write_bytes(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_run(target, {"a.txt": b"first", "posterior.nc": boom, "z.txt": b"never"})
    assert not target.exists()
    assert os.listdir(tmp_path / "runs") == []     # no temp dir left behind

    def interrupt(p):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_run(target, {"a.txt": b"x", "b": interrupt})
    assert os.listdir(tmp_path / "runs") == []


def test_write_run_never_overwrites_without_flag(tmp_path):
    target = tmp_path / "run"
    write_run(target, {"fit.json": b"{}", "a.txt": b"old"})
    with pytest.raises(HbmError) as e:
        write_run(target, {"fit.json": b"{}", "a.txt": b"new"})
    assert "--overwrite" in e.value.render() and str(target) in e.value.message
    assert (target / "a.txt").read_bytes() == b"old"
    # a failing overwrite leaves the old run intact
    with pytest.raises(RuntimeError):
        write_run(target, {"a.txt": b"new", "x": lambda p: (_ for _ in ()).throw(RuntimeError())},
                  overwrite=True)
    assert (target / "a.txt").read_bytes() == b"old"
    write_run(target, {"fit.json": b"{}", "a.txt": b"new"}, overwrite=True)
    assert (target / "a.txt").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["run"]
    # an empty existing directory is fine; a non-run directory is never replaced
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "empty", _files_ok())
    assert (tmp_path / "empty" / "b.txt").read_text() == "text"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(HbmError, match="not an hbm run"):
        write_run(tmp_path / "mine", _files_ok(), overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_new_run_dir(tmp_path):
    import datetime as dt
    now = dt.datetime(2025, 3, 4, 5, 6, 7)
    p1 = new_run_dir(None, "price elasticity", root=tmp_path / "runs", now=now)
    assert p1 == tmp_path / "runs" / "price_elasticity-20250304-050607"
    p1.mkdir(parents=True)
    p2 = new_run_dir(None, "price elasticity", root=tmp_path / "runs", now=now)
    assert p2.name == "price_elasticity-20250304-050607-2"
    assert new_run_dir(tmp_path / "out", "m") == tmp_path / "out"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fit.json").write_text("{}")
    with pytest.raises(HbmError, match="already exists"):
        new_run_dir(tmp_path / "out", "m")
    assert new_run_dir(tmp_path / "out", "m", overwrite=True) == tmp_path / "out"


def test_save_load_show(tmp_path):
    out = _outputs(chains=2, draws=50)
    loss = np.exp(-np.linspace(0, 5, 200)) * 1000 + RNG.uniform(size=200)
    idata = to_inference_data(out, None, loss, None, None)
    df = summarize(out, "variational")
    spec = {"name": "price_elasticity", "formula": "log(units) ~ log(price) | product",
            "family": "poisson", "inference": {"engine": "svi", "steps": (1, 2)}}
    info = {"engine": "svi", "timings": {"compile_s": 1.25, "fit_s": 75.0},
            "convergence": {"converged": True, "pareto_k": 0.41}, "data": {"rows": 123456},
            "r": np.float32(1.5), "bad": float("nan")}
    run = save_fit(tmp_path / "run", idata, df, spec, info, loss)
    assert sorted(os.listdir(run)) == ["fit.json", "loss.png", "posterior.nc", "spec.yaml", "summary.csv"]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = load_run(run)
    assert rec.spec["inference"]["steps"] == [1, 2]
    assert rec.fit_info["r"] == 1.5 and rec.fit_info["bad"] is None
    assert list(rec.summary.index) == list(df.index)
    np.testing.assert_allclose(rec.summary.to_numpy(), df.to_numpy(), rtol=1e-7)
    assert list(rec.idata().posterior.data_vars)[1] == "log(price)[product]"
    np.testing.assert_array_equal(rec.loss(), loss)
    text = show_run(run)
    for s in ("price_elasticity", "log(units) ~ log(price) | product", "svi", "compile 1.25 s",
              "fit 1 min 15 s", "123,456 rows", "pareto_k: 0.41", "log(price)[product=p000]"):
        assert s in text, s
    # no loss: no loss.png
    run2 = save_fit(tmp_path / "run2", idata, df, spec, info, None)
    assert not (run2 / "loss.png").exists()


def test_load_run_errors(tmp_path):
    with pytest.raises(HbmError, match="no run directory at"):
        load_run(tmp_path / "nope")
    run = write_run(tmp_path / "runs" / "r1", {"fit.json": b"{}", "spec.yaml": b"name: m\n",
                                               "summary.csv": b"parameter,mean\na,1\n"})
    with pytest.raises(HbmError) as e:
        load_run(run)
    assert "posterior.nc" in e.value.message and str(run) in e.value.message
    with pytest.raises(HbmError) as e:
        load_run(tmp_path / "runs")
    assert "r1" in e.value.render()      # hint: the folder holds runs
    (tmp_path / "f").write_text("x")
    with pytest.raises(HbmError, match="not a run directory"):
        load_run(tmp_path / "f")


# ---------------------------------------------------------------- terminal table

def test_format_summary_truncates_big_variables():
    n = 10_000
    out = Outputs((OutputVar("log(price)", ("product",), RNG.normal(size=(1, 20, n))),
                   OutputVar("Intercept", (), RNG.normal(size=(1, 20)) * 1e-6),
                   OutputVar("sigma", (), RNG.normal(size=(1, 20)) + 5)),
                  {"product": [f"p{i:04d}" for i in range(n)]}, frozenset({"product"}))
    df = summarize(out, "variational")
    text = format_summary(df, max_rows=12)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["parameter", "mean", "sd", "q5"]
    assert lines[2].startswith("Intercept") and lines[3].startswith("sigma")   # scalars first
    assert "e-0" in lines[2]                                                   # tiny values readable
    shown = sum(1 for ln in lines if ln.startswith("log(price)[product="))
    m = re.search(r"^\.\.\. ([\d,]+) more rows of log\(price\)\[product\] in summary\.csv$", text, re.M)
    assert m and int(m.group(1).replace(",", "")) + shown == n
    assert len(lines) <= 12 + 3
    # the same table from a CSV round trip (no attrs)
    back = pd.read_csv(pd.io.common.StringIO(df.to_csv()), index_col="parameter")
    assert format_summary(back, max_rows=12) == text
    small = format_summary(summarize(_outputs(n_product=3), "variational"))
    assert "more rows" not in small and "Days[Subject=309,3]" in small


def test_format_summary_flags_rhat():
    vals = RNG.normal(size=(4, 100)) + np.arange(4)[:, None] * 3
    df = summarize(Outputs((OutputVar("a", (), vals),), {}, frozenset()), "sampler")
    assert "warning: r_hat > 1.01 for 1 of 1 parameters" in format_summary(df)
