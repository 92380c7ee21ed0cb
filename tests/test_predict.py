"""Posterior predictions: seen levels against the model itself, unseen levels from their population,
and a saved run predicting in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpyro import handlers

import hbm
from hbm import cli
from hbm.errors import HbmError
from hbm.pipeline.predict import Predictor, ir_from_dict, ir_to_dict

ROOT = Path(__file__).resolve().parent.parent
SPEC = """
name: predict_test
formula: y ~ x + z + x | g/region + (1 + z | h)
family: normal
inference:
  engine: svi
  steps: 1000
  draws: 200
  tolerance: 0
  optimizer: adam(lr=0.05)
"""


def _data(seed=3, n=400):
    rng = np.random.default_rng(seed)
    region_eff = rng.normal(0, 0.8, 4)
    g_eff = rng.normal(0, 0.3, 12)
    h_int, h_slope = rng.normal(0, 0.7, 8), rng.normal(0, 0.3, 8)
    g = rng.integers(0, 12, n)
    h = rng.integers(0, 8, n)
    x, z = rng.normal(size=n), rng.normal(size=n)
    slope = 0.5 + region_eff[g // 3] + g_eff[g]
    y = 1.0 + slope * x + 0.3 * z + h_int[h] + h_slope[h] * z + rng.normal(0, 0.3, n)
    return pd.DataFrame({"y": y, "x": x, "z": z, "g": [f"g{i:02d}" for i in g],
                         "region": [f"r{i // 3}" for i in g], "h": [f"h{i}" for i in h]})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    df = _data()
    model = hbm.compile(SPEC, df)
    result = hbm.fit(model)
    run = result.save(d / "run")
    return d, df, model, result, run


def _new_rows():
    # seen g and h; unseen h; unseen g in a seen region; unseen g in an unseen region
    return pd.DataFrame({"x": [2.0] * 4, "z": [0.5] * 4, "g": ["g00", "g00", "g99", "g98"],
                         "region": ["r0", "r0", "r0", "r9"], "h": ["h1", "h9", "h1", "h1"]})


def test_the_run_directory_holds_what_predicting_needs(fitted):
    _, _, model, _, run = fitted
    for f in ("model.json", "encoding.json", "posterior.nc", "spec.yaml"):
        assert (run / f).is_file(), f
    enc = json.loads((run / "encoding.json").read_text())
    assert enc["labels"]["g"] == model.encoding.labels["g"] and "g>region" in enc["parents"]
    assert ir_from_dict(json.loads((run / "model.json").read_text())["ir"]) == model.ir


def test_seen_levels_match_the_models_own_linear_predictor(fitted):
    _, df, model, result, _ = fitted
    rows = model.rows
    assert np.allclose(np.asarray(rows.y)[: len(df)], df["y"].to_numpy(), atol=1e-5)  # rows in data order
    eta = result.predict(df, what="eta", draws=True)              # (rows, draws)
    mean = result.predict(df, what="mean", draws=True)
    assert eta.shape == (len(df), 200)
    for s in (0, 199):
        latent = {k: np.asarray(v)[0, s] for k, v in result.engine.samples.items()}
        tr = handlers.trace(handlers.substitute(handlers.seed(model.numpyro_model, 0), latent)).get_trace(
            rows, model.consts, mode="simulate")
        direct = np.asarray(tr["y"]["fn"].mean)[: len(df)]
        np.testing.assert_allclose(eta[:, s], direct, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(mean[:, s], direct, rtol=1e-4, atol=1e-4)
    summary = result.predict(df.head(50), seed=1)
    assert list(summary.columns) == ["mean", "sd", "q5", "q50", "q95", "new_levels"]
    assert (summary["new_levels"] == "").all()
    # posterior predictive: centred on the mean, wider by the noise
    mc = 4 * summary["sd"] / np.sqrt(200)
    assert (np.abs(summary["mean"] - mean[:50].mean(axis=1)) < mc + 1e-6).mean() > 0.95
    sigma = result.summary().loc["sigma", "mean"]
    assert (summary["sd"] > 0.7 * sigma).all()
    assert (summary["q5"] < summary["q50"]).all() and (summary["q50"] < summary["q95"]).all()


def test_unseen_levels_are_drawn_from_their_population(fitted):
    _, _, _, result, _ = fitted
    new = _new_rows()
    eta = result.predict(new, what="eta", draws=True, seed=2)
    width = np.quantile(eta, 0.95, axis=1) - np.quantile(eta, 0.05, axis=1)
    seen, new_h, new_g, new_region = width
    assert new_h > 1.5 * seen and new_g > 1.2 * seen and new_region > new_g
    # a new g in a known region is drawn around that region's coefficient
    s = result.summary()
    centre = s.loc["Intercept[h=h1]", "mean"] + 2 * s.loc["x[region=r0]", "mean"] + 0.5 * s.loc["z[h=h1]", "mean"]
    assert abs(eta[2].mean() - centre) < 3 * eta[2].std() / np.sqrt(200) + 0.05
    out = result.predict(new, seed=2)
    assert [set(x.split(",")) - {""} for x in out["new_levels"]] == [set(), {"h"}, {"g"}, {"g", "region"}]
    assert out["sd"].iloc[0] < out["sd"].iloc[1]
    # same seed, same draws
    pd.testing.assert_frame_equal(out, result.predict(new, seed=2))


def test_a_saved_run_predicts_in_a_fresh_process(fitted):
    d, _, _, result, run = fitted
    new = _new_rows()
    new.to_csv(d / "new.csv", index=False)
    out = d / "pred.parquet"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "hbm.cli", "predict", str(run), str(d / "new.csv"),
                        "--out", str(out), "--seed", "5"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 with levels the fit never saw" in r.stderr
    got = pd.read_parquet(out)
    want = result.predict(new, seed=5)
    assert list(got["row"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(got[["mean", "sd", "q5", "q50", "q95"]].to_numpy(),
                               want[["mean", "sd", "q5", "q50", "q95"]].to_numpy(), rtol=1e-6, atol=1e-9)
    assert list(got["new_levels"]) == list(want["new_levels"])

def test_predict_never_writes_over_a_file(fitted, tmp_path, capsys):
    _, _, _, _, run = fitted
    _new_rows().to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred.csv"
    out.write_text("precious")
    assert cli.main(["predict", str(run), str(tmp_path / "new.csv"), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "precious"
    assert cli.main(["predict", str(run), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.txt")]) == 2
    assert ".parquet or .csv" in capsys.readouterr().err
    assert cli.main(["predict", str(run), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    assert pd.read_csv(tmp_path / "p.csv")["new_levels"].fillna("").tolist() == ["", "h", "g", "g,region"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv", "p.csv", "pred.csv"]   # no temporaries


def test_draws_come_back_as_parquet(fitted, tmp_path, capsys):
    d, _, _, result, run = fitted
    new = _new_rows()
    new.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "draws.parquet"
    assert cli.main(["predict", str(run), str(tmp_path / "new.csv"), "--out", str(out), "--draws", "--seed", "5"]) == 0
    draws = pd.read_parquet(out)
    assert draws.shape == (4, 201) and list(draws.columns[:3]) == ["row", "draw_0", "draw_1"]
    np.testing.assert_allclose(draws.drop(columns="row").to_numpy(), result.predict(new, seed=5, draws=True),
                               rtol=1e-6)
    assert cli.main(["predict", str(run), str(tmp_path / "new.csv"), "--draws"]) == 2
    assert "--out" in capsys.readouterr().err
    # summaries on stdout when no --out is given
    assert cli.main(["predict", str(run), str(tmp_path / "new.csv"), "--what", "mean"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "row,mean,sd,q5,q50,q95,new_levels" and len(text.splitlines()) == 5


def test_population_level_predictions_and_chosen_plates(fitted):
    """groups=False: no group-level values (the chain x | g/region at its population coefficient) and
    no grouping columns needed; groups={"g"}: g's chain values only, h's block at zero."""
    _, _, model, result, _ = fitted
    pred = Predictor.from_fit(result)

    def d(name, dims=()):
        return pred.draws[(name, dims)].astype(float)
    rows = pd.DataFrame({"x": [0.0, 1.0, 2.0], "z": [0.5, -1.0, 0.0]})
    eta = pred.predict(rows, what="eta", draws=True, groups=False)
    by_hand = d("Intercept")[:, None] + d("x")[:, None] * rows["x"].to_numpy() + d("z")[:, None] * rows["z"].to_numpy()
    np.testing.assert_allclose(eta, by_hand.T, rtol=1e-5, atol=1e-5)
    g00 = model.encoding.labels["g"].index("g00")
    rows = pd.DataFrame({"x": [2.0], "z": [0.5], "g": ["g00"], "region": ["r0"]})
    eta = pred.predict(rows, what="eta", draws=True, groups={"g"})[0]
    np.testing.assert_allclose(eta, d("Intercept") + 2.0 * d("x", ("g",))[:, g00] + 0.5 * d("z"), rtol=1e-5, atol=1e-5)
    assert pred.predict(rows, groups={"g"})["new_levels"].tolist() == [""]


def test_new_data_that_does_not_fit_the_model_is_refused(fitted):
    _, _, _, result, run = fitted
    pred = Predictor.from_run(run)
    new = _new_rows()
    with pytest.raises(HbmError, match="unknown column 'z'"):
        pred.predict(new.drop(columns="z"))
    moved = new.assign(region=["r1", "r1", "r0", "r0"])   # g00 sat in r0 in the fit
    with pytest.raises(HbmError, match="level 'g00' of 'g' sits in region 'r0' in the fit but in r1"):
        pred.predict(moved)
    split = new.assign(g=["g99", "g99", "g99", "g99"], region=["r0", "r1", "r0", "r0"])
    with pytest.raises(HbmError, match="not nested"):
        pred.predict(split)
    with pytest.raises(HbmError, match="missing values"):
        pred.predict(new.assign(x=[1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(HbmError, match="unknown prediction"):
        pred.predict(new, what="resp")


def test_factor_levels_and_transforms_use_the_fit(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(5, 2, n), "k": rng.choice(["a", "b", "c"], n),
                       "n": rng.integers(5, 10, n)})
    df["s"] = rng.binomial(df["n"], 0.4)
    model = hbm.compile({"formula": "s | trials(n) ~ scale(x) + k", "family": "binomial",
                         "inference": {"steps": 50, "draws": 20, "engine": "map"}}, df)
    assert ir_from_dict(json.loads(json.dumps(ir_to_dict(model.ir)))) == model.ir
    from hbm.results.summary import OutputVar, Outputs
    # hand-made draws: eta = 1 + 2 * scale(x) + [k = b] * 3
    outs = Outputs((OutputVar("Intercept", (), np.full((1, 2), 1.0)),
                    OutputVar("scale(x)", (), np.full((1, 2), 2.0)),
                    OutputVar("k", ("k",), np.tile([3.0, 0.0], (1, 2, 1)))), {"k": ["b", "c"]}, frozenset())
    pred = Predictor.from_outputs(model.ir, model.encoding, {}, outs)
    new = pd.DataFrame({"x": [5.0, float(df.x.mean())], "k": ["b", "a"], "n": [10, 10]})
    eta = pred.predict(new, what="eta", draws=True)
    mx, sx = df.x.mean(), df.x.std(ddof=0)
    np.testing.assert_allclose(eta[:, 0], [1 + 2 * (5 - mx) / sx + 3, 1.0], rtol=1e-9)
    mean = pred.predict(new, what="mean", draws=True)
    np.testing.assert_allclose(mean[:, 0], 10 / (1 + np.exp(-eta[:, 0])), rtol=1e-5)
    with pytest.raises(HbmError, match="levels the fit never saw: d"):
        pred.predict(new.assign(k=["d", "a"]))
    with pytest.raises(HbmError, match="needs the column 'n'"):
        pred.predict(new.drop(columns="n"))


def test_offsets_and_models_without_groups():
    rng = np.random.default_rng(0)
    n = 100
    df = pd.DataFrame({"c": rng.poisson(3, n), "x": rng.normal(size=n), "e": rng.uniform(1, 3, n)})
    model = hbm.compile({"formula": "log(c) ~ x + offset(log(e))", "family": "poisson"}, df)
    from hbm.results.summary import OutputVar, Outputs
    outs = Outputs((OutputVar("Intercept", (), np.full((1, 3), 0.5)), OutputVar("x", (), np.full((1, 3), 2.0))),
                   {}, frozenset())
    pred = Predictor.from_outputs(model.ir, model.encoding, {}, outs)
    new = pd.DataFrame({"x": [1.0, 0.0], "e": [2.0, 1.0]})
    np.testing.assert_allclose(pred.predict(new, what="eta", draws=True)[:, 0], [2.5 + np.log(2), 0.5])
    np.testing.assert_allclose(pred.predict(new, what="mean", draws=True)[:, 0], [2 * np.exp(2.5), np.exp(0.5)],
                               rtol=1e-6)
    out = pred.predict(new)
    assert list(out["new_levels"]) == ["", ""] and (out["q5"] >= 0).all()


@pytest.mark.parametrize("formula", [
    "y ~ x * k + offset(log(w)) + center(x)",
    "y ~ 0 + k + (1 | a/b)",
    "y ~ x + (1 + x || a) + (1 | a:b)",
    "log(w) ~ x | b/a + 1 | b",
    "y | se(w) ~ 1 + (1 | a)",
])
def test_the_ir_survives_json(formula):
    rng = np.random.default_rng(1)
    n = 60
    a = rng.integers(0, 3, n)
    df = pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n), "k": rng.choice(["p", "q"], n),
                       "w": rng.uniform(0.5, 2, n), "a": [f"a{i}" for i in a],
                       "b": [f"b{i}{j}" for i, j in zip(a, rng.integers(0, 2, n))]})
    model = hbm.compile({"formula": formula}, df)
    assert ir_from_dict(json.loads(json.dumps(ir_to_dict(model.ir)))) == model.ir
