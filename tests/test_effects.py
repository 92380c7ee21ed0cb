"""``hbm effects`` and ``hbm contrast`` (hbm/pipeline/effects.py): their numbers against the predictor on
rows built here, and against the posterior draws by hand; the pictures; where the files go."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hbm
from hbm import cli
from hbm.errors import HbmError
from hbm.pipeline.effects import conditional_effects, contrasts, parse_at, resolve_term
from hbm.pipeline.predict import Predictor

SPEC = """
name: effects_test
formula: count ~ log(price) + scale(x) + region + (1 | g)
family: poisson
inference: {engine: svi, steps: 300, draws: 200, tolerance: 0, optimizer: adam(lr=0.05)}
"""
CHAIN_SPEC = """
name: effects_chain
formula: y ~ x + x | g/region + (1 | h)
family: normal
inference: {engine: svi, steps: 200, draws: 60, tolerance: 0, optimizer: adam(lr=0.05)}
"""


def _data(seed=5, n=300):
    rng = np.random.default_rng(seed)
    g, region = rng.integers(0, 8, n), rng.integers(0, 3, n)
    price = np.exp(rng.normal(1.0, 0.4, n))
    x = rng.normal(2.0, 1.5, n)
    eta = 1.0 - 0.8 * np.log(price) + 0.3 * (x - 2) / 1.5 + np.array([0, 0.4, -0.3])[region] \
        + rng.normal(0, 0.4, 8)[g]
    return pd.DataFrame({"count": rng.poisson(np.exp(eta)), "price": price, "x": x,
                         "region": [f"r{i}" for i in region], "g": [f"g{i}" for i in g]})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("effects")
    df = _data()
    run = hbm.fit(hbm.compile(SPEC, df)).save(d / "run")
    return d, df, run, Predictor.from_run(run)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _held(df) -> dict:
    return {"price": df["price"].to_numpy().mean(), "x": df["x"].to_numpy().mean(), "region": "r0"}


def test_effects_equal_predict_on_the_same_grid(fitted, tmp_path, capsys):
    _, df, run, pred = fitted
    code, out, err = _cli(capsys, "effects", run, "price", "--out", tmp_path / "e")
    assert code == 0, err
    assert "E[count] over price  (the model uses log(price))" in out and "region = r0 (reference)" in out
    csv = pd.read_csv(tmp_path / "e" / "effects.csv")
    assert list(csv.columns) == ["price", "mean", "q5", "q25", "q50", "q75", "q95"]
    # the grid is in price's own units, over its observed range (log-spaced: the formula uses log(price))
    grid = np.geomspace(df["price"].min(), df["price"].max(), 50)
    np.testing.assert_allclose(csv["price"], grid, rtol=1e-7)
    rows = pd.DataFrame({**_held(df), "price": grid})
    expect = pred.predict(rows, what="mean", groups=False)
    for col in ("mean", "q5", "q50", "q95"):
        np.testing.assert_allclose(csv[col], expect[col], rtol=1e-6, err_msg=col)
    # by hand: group effects at zero, scale(x) at x's mean is 0, region at its reference level
    a, b = pred.draws[("Intercept", ())].astype(float), pred.draws[("log(price)", ())].astype(float)
    by_hand = np.exp(a[:, None] + b[:, None] * np.log(grid)[None, :])
    np.testing.assert_allclose(csv["mean"], by_hand.mean(0), rtol=1e-4)
    assert (csv["q5"] <= csv["q25"]).all() and (csv["q25"] <= csv["q50"]).all() and (csv["q75"] <= csv["q95"]).all()
    png = (tmp_path / "e" / "effects.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_effects_by_a_factor_and_of_a_factor(fitted, tmp_path, capsys):
    _, df, run, pred = fitted
    code, _, err = _cli(capsys, "effects", run, "x", "--by", "region", "--at", "price=2", "--points", "7",
                        "--out", tmp_path / "by")
    assert code == 0, err
    csv = pd.read_csv(tmp_path / "by" / "effects.csv")
    assert list(csv.columns)[:2] == ["x", "region"] and len(csv) == 21
    rows = pd.DataFrame({"price": 2.0, "x": np.tile(np.linspace(df.x.min(), df.x.max(), 7), 3),
                         "region": np.repeat(["r0", "r1", "r2"], 7)})
    np.testing.assert_allclose(csv["mean"], pred.predict(rows, what="mean", groups=False)["mean"], rtol=1e-6)
    assert csv.groupby("region")["mean"].mean().nunique() == 3

    eff = conditional_effects(run, "region")
    assert eff.table["region"].tolist() == ["r0", "r1", "r2"]
    rows = pd.DataFrame({**_held(df), "region": ["r0", "r1", "r2"]})
    np.testing.assert_allclose(eff.table["q95"], pred.predict(rows, what="mean", groups=False)["q95"], rtol=1e-12)


def test_contrasts_equal_differences_of_predict_draws(fitted, tmp_path, capsys):
    _, df, run, pred = fitted
    code, out, err = _cli(capsys, "contrast", run, "region", "--pairs", "--out", tmp_path / "c")
    assert code == 0, err
    assert "r1 - r0" in out and "r2 - r1" in out and "P(>0)" in out
    csv = pd.read_csv(tmp_path / "c" / "contrast.csv")
    assert list(csv.columns) == ["contrast", "level", "reference", "mean", "sd", "q5", "q95", "p_gt_0"]
    d = pred.predict(pd.DataFrame({**_held(df), "region": ["r0", "r1", "r2"]}), what="mean", draws=True,
                     groups=False, seed=0)
    for row, (i, j) in zip(csv.itertuples(), [(0, 1), (0, 2), (1, 2)]):
        diff = d[j] - d[i]
        assert row.contrast == f"r{j} - r{i}"
        np.testing.assert_allclose([row.mean, row.sd, row.q5, row.q95, row.p_gt_0],
                                   [diff.mean(), diff.std(ddof=1), *np.quantile(diff, (0.05, 0.95)),
                                    (diff > 0).mean()], rtol=1e-6, atol=1e-12)
    one = contrasts(run, "region").table             # each level against the reference
    assert one["contrast"].tolist() == ["r1 - r0", "r2 - r0"]


def test_contrasts_of_a_grouping_factor_are_its_levels_effects(fitted):
    _, df, run, pred = fitted
    con = contrasts(run, "g")
    assert con.table["reference"].eq("g0").all() and len(con.table) == 7
    # by hand: E[count] at each g's own intercept, log(price) at mean price, scale(x) = 0, region r0
    a = pred.draws[("Intercept", ("g",))].astype(float)
    b = pred.draws[("log(price)", ())].astype(float)
    e = np.exp(a + b[:, None] * np.log(df["price"].to_numpy().mean()))
    np.testing.assert_allclose(con.table["mean"], (e[:, 1:] - e[:, :1]).mean(0), rtol=1e-4)


def test_the_run_directory_has_effects_png_and_outputs_never_go_into_a_run(fitted, capsys):
    d, _, run, _ = fitted
    png = (run / "effects.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    before = sorted(p.name for p in run.iterdir())
    for _ in range(2):
        code, _, err = _cli(capsys, "contrast", run, "g")
        assert code == 0, err
    assert (d / "run-contrast-g" / "contrast.csv").is_file() and (d / "run-contrast-g-2" / "contrast.csv").is_file()
    code, _, err = _cli(capsys, "effects", run, "price", "--out", run / "mine")
    assert code == 2 and "inside the run directory" in err
    code, _, err = _cli(capsys, "effects", run, "price", "--out", d / "run-contrast-g")
    assert code == 2 and "not empty" in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_names_are_checked(fitted, monkeypatch):
    _, _, run, pred = fitted
    assert resolve_term(pred, "log(price)").column == "price"
    assert resolve_term(pred, "scale( x )").uses == ("scale(x)",)
    with pytest.raises(HbmError, match="(?s)unknown TERM 'prise'.*did you mean 'price'"):
        resolve_term(pred, "prise")
    with pytest.raises(HbmError, match="'count' is the response"):
        resolve_term(pred, "count")
    with pytest.raises(HbmError, match="'x' is numeric and 'abc' is not a number"):
        parse_at(pred, ["x=abc"])
    with pytest.raises(HbmError, match="'r7' is not a level of 'region'"):
        parse_at(pred, ["region=r7"])
    with pytest.raises(HbmError, match="--at sets 'price', which this plot varies"):
        conditional_effects(pred, "price", at=["price=2"])
    monkeypatch.setattr("hbm.pipeline.effects.MAX_BY_LEVELS", 5)
    with pytest.raises(HbmError, match="--by 'g' has 8 levels"):
        conditional_effects(pred, "price", by="g")
    with pytest.raises(HbmError, match="'gg' is not a grouping factor"):
        pred.predict(pd.DataFrame({"price": [1.0], "x": [0.0], "region": ["r0"]}), groups={"gg"})


def test_a_chain_at_population_level_and_by_its_levels(tmp_path):
    rng = np.random.default_rng(2)
    n = 240
    g = rng.integers(0, 6, n)
    h = rng.integers(0, 4, n)
    x = rng.normal(1.5, 1.0, n)
    slope = 0.5 + np.array([0.6, -0.6])[g // 3] + rng.normal(0, 0.2, 6)[g]
    y = 1.0 + slope * x + rng.normal(0, 0.5, 4)[h] + rng.normal(0, 0.3, n)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g], "region": [f"r{i // 3}" for i in g],
                       "h": [f"h{i}" for i in h]})
    pred = Predictor.from_fit(hbm.fit(hbm.compile(CHAIN_SPEC, df)))
    a, b = pred.draws[("Intercept", ())].astype(float), pred.draws[("x", ())].astype(float)
    xs = np.array([0.0, 1.0, 2.5])
    eta = pred.predict(pd.DataFrame({"x": xs}), what="eta", draws=True, groups=False)   # no group columns
    np.testing.assert_allclose(eta, (a[:, None] + b[:, None] * xs).T, rtol=1e-5)
    xbar = x.mean()
    for factor in ("g", "region"):            # a chain's value at that level, the other plates at zero
        con = contrasts(pred, factor)
        v = pred.draws[("x", (factor,))].astype(float)
        np.testing.assert_allclose(con.table["mean"], (xbar * (v[:, 1:] - v[:, :1])).mean(0), rtol=1e-4,
                                   atol=1e-6, err_msg=factor)
    eff = conditional_effects(pred, "x", by="region", points=5)
    assert eff.table["region"].tolist() == ["r0"] * 5 + ["r1"] * 5
    assert pred.encoding.ranges["x"] == pytest.approx((x.min(), x.mean(), x.max()))
