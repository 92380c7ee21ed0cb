"""The log_likelihood and posterior_predictive groups of a run (hbm/results/pointwise.py), ppc.png and
``hbm ppc`` (hbm/results/ppc.py), ``hbm loo`` (hbm/pipeline/loo.py), and the ``outputs:`` spec key."""
from __future__ import annotations

import dataclasses
import io
import json

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

import hbm
from hbm.cli.main import main
from hbm.errors import HbmError
from hbm.results import pointwise
from hbm.results.ppc import plot_ppc
from hbm.results.summary import load_netcdf
from hbm.spec import load_spec

N, G = 120, 8
SVI = {"engine": "svi", "guide": "normal", "steps": 100, "draws": 100, "tolerance": 0, "optimizer": "adam(lr=0.05)"}
PNG = b"\x89PNG\r\n\x1a\n"


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(13)
    g = rng.integers(0, G, N)
    x = rng.normal(size=N)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.8, G)[g] + rng.normal(0, 0.4, N)
    count = rng.poisson(np.exp(0.4 + 0.3 * x + rng.normal(0, 0.5, G)[g]))
    return pd.DataFrame({"y": y, "x": x, "count": count, "g": [f"g{i}" for i in g], "w": rng.uniform(0.5, 2, N)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("checks")
    df = _data()
    out = {"dir": d, "df": df}
    for name, formula, family in (("grouped", "y ~ x + (1 | g)", "normal"), ("plain", "y ~ x", "normal"),
                                  ("counts", "count | weights(w) ~ x + (1 | g)", "poisson")):
        model = hbm.compile({"name": name, "formula": formula, "family": family, "inference": SVI}, df)
        result = hbm.fit(model)
        out[name] = result.save(d / name)
        out[f"{name}_result"] = result
    # the same fit, its spec saying outputs.log_likelihood: no
    r = out["counts_result"]
    spec = dataclasses.replace(r.model.spec, outputs=dataclasses.replace(r.model.spec.outputs, log_likelihood="no"))
    quiet = dataclasses.replace(r, model=dataclasses.replace(r.model, spec=spec), _pointwise=None)
    out["nolik"] = quiet.save(d / "nolik")
    return out


def _group_index(post, df):
    labels = [str(v) for v in post["g"].values]
    return np.array([labels.index(v) for v in df["g"]])


def test_log_likelihood_is_each_rows_density_at_each_draw(runs):
    """Normal: the group's values equal scipy's density at the saved draws, and az.loo of the saved
    file equals az.loo of that hand-made array."""
    df = runs["df"]
    idata = az.from_netcdf(str(runs["grouped"] / "posterior.nc"))    # ArviZ reads the file as it is
    post = idata.posterior
    ll = idata.log_likelihood["y"]
    assert ll.dims[:2] == ("chain", "draw") and ll.shape == (1, 100, N)
    mu = post["Intercept[g]"].values[..., _group_index(post, df)] + post["x"].values[..., None] * df["x"].values
    hand = stats.norm.logpdf(df["y"].values, mu, post["sigma"].values[..., None])
    np.testing.assert_allclose(ll.values, hand, rtol=1e-5, atol=2e-5)
    elpd = az.loo(idata).elpd_loo
    by_hand = az.InferenceData(posterior=post, log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), hand)}))
    assert elpd == pytest.approx(az.loo(by_hand).elpd_loo, rel=1e-6)


def test_poisson_log_likelihood_includes_the_constant_and_the_weights(runs):
    """Poisson fits keep -lgamma(y + 1) aside (rows.lp0); the group has it back, weighted as the fit's."""
    df = runs["df"]
    idata = load_netcdf(runs["counts"] / "posterior.nc")
    post = idata.posterior
    eta = post["Intercept[g]"].values[..., _group_index(post, df)] + post["x"].values[..., None] * df["x"].values
    hand = df["w"].values * stats.poisson.logpmf(df["count"].values, np.exp(eta))
    np.testing.assert_allclose(idata.log_likelihood["count"].values, hand, rtol=1e-5, atol=5e-5)


def test_posterior_predictive_is_named_after_the_response_with_each_rows_level(runs):
    df = runs["df"]
    for run, name, kind in ((runs["grouped"], "y", "f"), (runs["counts"], "count", "i")):
        idata = load_netcdf(run / "posterior.nc")
        pp = idata.posterior_predictive
        assert list(pp.data_vars) == [name] and pp[name].shape == (1, 100, N) and pp[name].dtype.kind == kind
        dim = pp[name].dims[2]
        assert dim == next(iter(idata.observed_data.data_vars.values())).dims[0]
        np.testing.assert_array_equal(pp[dim].values, np.arange(N))
        np.testing.assert_array_equal(pp["g"].values.astype(str), df["g"].to_numpy())
        # drawn from the fitted model: the simulated data sets' means sit around the data's
        assert abs(float(pp[name].mean()) - df[name].mean()) < 0.25 * df[name].std()
        assert (run / "ppc.png").read_bytes()[:8] == PNG
    info = json.loads((runs["grouped"] / "fit.json").read_text())["outputs"]
    assert info["log_likelihood"]["written"] and info["log_likelihood"]["values"] == 100 * N
    assert info["posterior_predictive"] == {"written": True, "draws": 100, "rows": N, "of_rows": N}


def test_the_limits_decide_what_is_written(runs, monkeypatch):
    model = runs["grouped_result"].model
    big = pointwise.plan(model, 4, 200_000)      # 800,000 draws x 120 rows: beyond auto's limit
    assert not big["log_likelihood"]["written"] and "beyond the 10,000,000" in big["log_likelihood"]["reason"]
    assert big["posterior_predictive"]["draws"] == 100
    yes = dataclasses.replace(model, spec=dataclasses.replace(
        model.spec, outputs=dataclasses.replace(model.spec.outputs, log_likelihood="yes")))
    assert pointwise.plan(yes, 4, 200_000)["log_likelihood"]["written"]
    # more rows than the predictive group keeps: a sorted random subset, the picture says so
    monkeypatch.setattr(pointwise, "PPC_MAX_ROWS", 50)
    no = dataclasses.replace(model, spec=dataclasses.replace(
        model.spec, outputs=dataclasses.replace(model.spec.outputs, log_likelihood="no")))
    groups, plan = pointwise.pointwise_groups(no, runs["grouped_result"].engine.samples, 0, "obs")
    assert list(groups) == ["posterior_predictive"] and plan["posterior_predictive"]["rows"] == 50
    pp = groups["posterior_predictive"]
    rows = pp["obs"].values
    assert pp["y"].shape == (1, 100, 50) and (np.diff(rows) > 0).all() and rows.max() < N
    np.testing.assert_array_equal(pp["draw"].values, np.arange(100))     # 100 draws: every one
    idata = az.InferenceData(observed_data=load_netcdf(runs["grouped"] / "posterior.nc").observed_data,
                             posterior_predictive=groups["posterior_predictive"])
    np.testing.assert_array_equal(idata.posterior_predictive["g"].values.astype(str),
                                  runs["df"]["g"].to_numpy()[groups["posterior_predictive"]["obs"].values])
    assert plot_ppc(idata, io.BytesIO())["rows"] == 50


def test_hbm_loo_compares_two_runs_and_writes_the_table(runs, capsys):
    a, b = runs["grouped"], runs["plain"]
    before = sorted(p.name for p in a.iterdir())
    assert main(["loo", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    elpd = {k: az.loo(load_netcdf(r / "posterior.nc")) for k, r in (("grouped", a), ("plain", b))}
    for k, e in elpd.items():
        assert f"{k} (svi): elpd_loo {e.elpd_loo:.1f} (se {e.se:.1f}), p_loo {e.p_loo:.1f}; {N} rows, 100 draws" in out
    assert "Pareto k:" in out and "comparison (ArviZ compare" in out
    head = next(line for line in out.splitlines() if line.startswith("run "))
    assert head.split() == ["run", "rank", "elpd_loo", "se", "p_loo", "elpd_diff", "dse", "weight"]
    assert "grouped leads plain by" in out
    csv = pd.read_csv(a.parent / "loo-grouped-vs-plain" / "loo.csv", index_col="run")
    assert list(csv.index) == ["grouped", "plain"] and csv.loc["grouped", "rank"] == 0
    assert csv.loc["plain", "elpd_loo"] == pytest.approx(elpd["plain"].elpd_loo, rel=1e-5)
    assert csv.loc["plain", "elpd_diff"] == pytest.approx(elpd["grouped"].elpd_loo - elpd["plain"].elpd_loo, rel=1e-4)
    assert (csv[["k_good", "k_bad", "k_very_bad"]].sum(axis=1) == N).all()
    assert sorted(p.name for p in a.iterdir()) == before       # a finished run is never changed
    assert main(["loo", str(a), str(b)]) == 0                  # a second time: a new directory
    assert (a.parent / "loo-grouped-vs-plain-2" / "loo.csv").is_file()
    capsys.readouterr()
    assert main(["loo", str(a), str(runs["counts"])]) == 2     # another response: nothing to compare
    assert "the runs model different responses (y, count)" in capsys.readouterr().err


def test_hbm_loo_without_a_log_likelihood_group_says_how_to_get_one(runs, capsys):
    info = json.loads((runs["nolik"] / "fit.json").read_text())["outputs"]["log_likelihood"]
    assert info["written"] is False and info["reason"] == "outputs.log_likelihood is no"
    assert "log_likelihood" not in load_netcdf(runs["nolik"] / "posterior.nc").groups()
    assert main(["loo", str(runs["nolik"])]) == 2
    err = capsys.readouterr().err
    assert "has no log_likelihood group (outputs.log_likelihood is no), which loo needs" in err
    assert "--set outputs.log_likelihood=yes" in err and "Traceback" not in err


def test_hbm_ppc_draws_a_panel_per_level(runs, tmp_path, capsys):
    out = tmp_path / "by_g.png"
    assert main(["ppc", str(runs["grouped"]), "--group", "g", "--out", str(out)]) == 0
    assert f"{G} levels of g" in capsys.readouterr().out and out.read_bytes()[:8] == PNG
    assert main(["ppc", str(runs["counts"])]) == 0            # default: beside the run, numbered when taken
    assert main(["ppc", str(runs["counts"])]) == 0
    assert (runs["dir"] / "ppc-counts.png").is_file() and (runs["dir"] / "ppc-counts-2.png").is_file()
    drawn = plot_ppc(load_netcdf(runs["grouped"] / "posterior.nc"), io.BytesIO(), group="g", max_panels=3)
    counts = runs["df"]["g"].value_counts()
    assert drawn["left_out"] == G - 3 and len(drawn["levels"]) == 3
    assert counts[drawn["levels"]].min() >= counts.drop(drawn["levels"]).max()   # the largest levels
    capsys.readouterr()
    assert main(["ppc", str(runs["grouped"]), "--group", "gg", "--out", str(tmp_path / "x.png")]) == 2
    assert "'gg' is not a grouping factor" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main(["ppc", str(runs["grouped"]), "--out", str(runs["grouped"] / "again.png")]) == 2
    assert "never changes a finished run" in capsys.readouterr().err


def test_the_outputs_key_is_checked_like_every_other():
    assert load_spec("formula: y ~ x").outputs.log_likelihood == "auto"
    for text, value in (("yes", "yes"), ("no", "no"), ("'no'", "no"), ("auto", "auto"), ("true", "yes")):
        s = load_spec(f"formula: y ~ x\noutputs: {{log_likelihood: {text}}}\n")
        assert s.outputs.log_likelihood == value and load_spec(s.to_dict()) == s
    with pytest.raises(HbmError, match="did you mean 'outputs.log_likelihood'"):
        load_spec({"formula": "y ~ x", "outputs": {"log_likelihod": "no"}})
    with pytest.raises(HbmError, match="outputs.log_likelihood must be one of auto, yes, no"):
        load_spec({"formula": "y ~ x", "outputs": {"log_likelihood": "sometimes"}})
    with pytest.raises(HbmError, match="did you mean 'outputs'"):
        load_spec({"formula": "y ~ x", "output": {"log_likelihood": "no"}})
    assert load_spec("formula: y ~ x").with_overrides(["outputs.log_likelihood=no"]).outputs.log_likelihood == "no"
