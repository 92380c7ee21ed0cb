"""hbm.compile and hbm.fit through the Python API: inputs, encoding, engines."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import hbm
from hbm.errors import HbmError

SPEC = {"formula": "y ~ x + factor(k) + (1 | g)", "family": "normal",
        "inference": {"engine": "svi", "steps": 400, "draws": 50, "optimizer": "adam(lr=0.05)"}}


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(3)
    n = 240
    g = rng.integers(0, 8, n)
    k = rng.integers(0, 3, n)
    x = rng.normal(size=n)
    y = 0.5 + 1.5 * x + np.array([0.0, 0.7, -0.4])[k] + rng.normal(0, 0.5, 8)[g] + rng.normal(0, 0.3, n)
    return pd.DataFrame({"y": y, "x": x, "k": k, "g": [f"grp{i}" for i in g]})


def test_every_input_format_gives_the_same_model(table, tmp_path):
    table.to_parquet(tmp_path / "d.parquet", index=False)
    table.to_csv(tmp_path / "d.csv", index=False)
    table.to_feather(tmp_path / "d.arrow")
    inputs = [table, pa.Table.from_pandas(table), str(tmp_path / "d.parquet"), str(tmp_path / "d.csv"),
              str(tmp_path / "d.arrow")]
    models = [hbm.compile(SPEC, t) for t in inputs]
    for m in models[1:]:
        assert m.ir == models[0].ir
        np.testing.assert_allclose(np.asarray(m.rows.y), np.asarray(models[0].rows.y), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(m.rows.idx["g"]), np.asarray(models[0].rows.idx["g"]))
    m = models[0]
    assert m.encoding.labels["g"] == [f"grp{i}" for i in range(8)]
    assert [t.name for t in m.ir.population] == ["Intercept", "x", "factor(k)"]
    assert m.ir.population[2].levels == ("1", "2")
    assert m.rows.X.shape == (240, 3) and m.rows.X.dtype == np.float32
    assert m.rows.idx["g"].dtype == np.int32


def test_numpyro_model_runs_with_plain_numpyro(table):
    import jax
    import numpyro
    m = hbm.compile(SPEC, table)
    tr = numpyro.handlers.trace(numpyro.handlers.seed(m.numpyro_model, jax.random.PRNGKey(0))).get_trace(**m.data)
    assert "sd(1 | g)" in tr and tr["loglik"]["type"] == "sample"


@pytest.mark.parametrize("engine", ["map", "laplace"])
def test_point_and_laplace_engines_recover_the_slope(table, engine):
    m = hbm.compile(SPEC, table)
    s = hbm.fit(m, engine=engine, steps=1500).summary()
    assert abs(s.loc["x", "mean"] - 1.5) < 0.1
    assert abs(s.loc["factor(k)[1]", "mean"] - 0.7) < 0.2


def test_nesting_violation_names_the_level(table):
    df = table.assign(region=np.where(table["g"].isin(["grp0", "grp1"]), "north", "south"))
    df.loc[0, "region"] = "east" if df.loc[0, "g"] != "grp7" else "west"
    with pytest.raises(HbmError) as e:
        hbm.compile({"formula": "y ~ x | g/region"}, df)
    text = e.value.render()
    assert "'g' is not nested in 'region'" in text and f"g {df.loc[0, 'g']} is in 2 region levels" in text


def test_missing_values_name_the_column_and_count(table):
    df = table.copy()
    df.loc[[1, 5, 9], "g"] = None
    with pytest.raises(HbmError, match="column 'g' has 3 missing values"):
        hbm.compile(SPEC, df)


def test_unknown_inference_override(table):
    m = hbm.compile(SPEC, table)
    with pytest.raises(HbmError, match="unknown inference setting 'stpes'"):
        hbm.fit(m, stpes=10)


def test_fit_result_to_arviz_has_named_dims(table):
    m = hbm.compile(SPEC, table)
    r = hbm.fit(m, engine="svi", steps=200)
    idata = r.to_arviz()
    da = idata.posterior["Intercept[g]"]
    assert da.dims == ("chain", "draw", "g") and list(da.coords["g"].values) == [f"grp{i}" for i in range(8)]
    assert idata.observed_data["y"].shape == (240,)
    assert "loss" in idata.sample_stats
