"""The command line, through a subprocess: fit, check, show, simulate, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def hbm(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "hbm.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(1)
    n, g = 300, 12
    grp = rng.integers(0, g, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.7, g)[grp] + rng.normal(0, 0.5, n)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in grp],
                       "count": rng.poisson(np.exp(0.5 + 0.3 * x)), "h": rng.integers(0, 3, n),
                       "region": [f"r{i % 3}" for i in grp]})
    df.to_csv(d / "data.csv", index=False)
    df.to_parquet(d / "data.parquet", index=False)
    (d / "spec.yaml").write_text(
        "name: small\nformula: y ~ x + (1 | g)\nfamily: normal\n"
        "inference:\n  engine: svi\n  steps: 300\n  draws: 100\n  optimizer: adam(lr=0.05)\n")
    return d


def test_fit_writes_a_run_and_show_prints_it(workdir):
    out = workdir / "run1"
    r = hbm("fit", workdir / "spec.yaml", workdir / "data.parquet", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "results written to" in r.stdout
    for f in ("posterior.nc", "summary.csv", "spec.yaml", "fit.json", "loss.png"):
        assert (out / f).exists(), f
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert {"Intercept", "x", "sd(1 | g)", "sigma", "Intercept[g=g00]"} <= set(summary.index)
    assert abs(summary.loc["x", "mean"] - 0.5) < 0.2
    info = json.loads((out / "fit.json").read_text())
    assert info["engine"] == "svi" and info["engine_kind"] == "variational"
    assert info["data"]["rows"] == 300 and info["seed"] == 0
    assert info["convergence"]["steps_run"] <= 300
    # the run is never overwritten
    again = hbm("fit", workdir / "spec.yaml", workdir / "data.parquet", "--out", out, "--quiet")
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert pd.read_csv(out / "summary.csv", index_col=0).equals(summary)
    shown = hbm("show", out)
    assert shown.returncode == 0 and "sd(1 | g)" in shown.stdout and "y ~ x + (1 | g)" in shown.stdout


def test_check_describes_the_model(workdir):
    r = hbm("check", workdir / "spec.yaml", workdir / "data.csv")
    assert r.returncode == 0, r.stderr
    assert "g " in r.stdout and "12 levels" in r.stdout
    assert "sd(1 | g)" in r.stdout and "family    normal" in r.stdout


def test_check_reports_inferred_family(workdir):
    spec = workdir / "pois.yaml"
    spec.write_text("formula: log(count) ~ x + (1 | g)\n")
    r = hbm("check", spec, workdir / "data.csv")
    assert r.returncode == 0, r.stderr
    assert "poisson" in r.stdout and "inferred" in r.stdout


def test_check_nonlinear_numbers_bounds_and_prior_scales(workdir):
    spec = workdir / "nonlinear.yaml"
    spec.write_text("formula: y ~ a + b * (x - 0.5) + c * exp(-0.5 * x)\n"
                    "params: {a: '1', b: 1 + (1 | g), c: '1'}\nbounds: {b: positive, c: positive}\n"
                    "family: normal\npriors: {c: 'normal(0, 1)', sd(log(b) | g): 'half_normal(0.5)'}\n")
    r = hbm("check", spec, workdir / "data.csv")
    assert r.returncode == 0, r.stderr
    for text in ["x - 0.5", "parameter c ~ 1   [positive: the prior is on c itself: normal(0, 1) means "
                 "half_normal(1)]", "[positive: b = exp(its linear predictor); coefficients and their priors "
                 "on the log scale", "sd(log(b) | g)                 ~ half_normal(0.5)",
                 "reported on b's scale too: b = exp(log(b)); b[g=level] = exp(log(b)[g=level])"]:
        assert text in r.stdout, text
    spec.write_text(spec.read_text().replace("c: 'normal(0, 1)'", "b: 'normal(0, 1)'"))
    r = hbm("check", spec, workdir / "data.csv")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "prior for 'b': b = exp(its linear predictor)" in r.stderr and "log(b)" in r.stderr


def test_simulate_writes_data_from_the_spec(workdir):
    out = workdir / "sim.parquet"
    r = hbm("simulate", ROOT / "specs" / "price_elasticity.yaml", "--rows", 2000, "--out", out)
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(out)
    assert len(df) == 2000 and {"units", "price", "product", "category", "period"} <= set(df.columns)
    assert (df["units"] >= 0).all() and df.groupby("product")["category"].nunique().max() == 1
    again = hbm("simulate", ROOT / "specs" / "price_elasticity.yaml", "--rows", 10, "--out", out)
    assert again.returncode == 2 and "exists" in again.stderr


BAD = [
    ("formula: y ~ x +\n", "the formula ends too early", "^"),
    ("formula: y ~ prce + (1 | g)\n", "unknown column 'prce'", None),
    ("formula: y ~ x\ninference:\n  stpes: 10\n", "unknown key 'inference.stpes'", "inference.steps"),
    ("formula: y ~ x\npriors:\n  z: normal(0, 1)\n", "not a parameter of this model", None),
    ("formula: log(y) ~ x\nfamily: normal\n", "cannot be used with family normal", "lognormal"),
    ("formula: y ~ x | region/g\n", "'region' is not nested in 'g'", "did you mean 'x | g/region'?"),
    ("formula: y ~ x | g/h\n", "'g' is not nested in 'h'", "g g00 is in 3 h levels"),
    ("formula: count ~ x\nfamily: poisson\n", None, None),  # valid: a control case
    ("- not a mapping\n", "mapping", None),
]


@pytest.mark.parametrize("text,message,extra", BAD)
def test_bad_input_gives_a_message_and_exit_2(workdir, tmp_path, text, message, extra):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    r = hbm("check", spec, workdir / "data.csv")
    if message is None:
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert message in r.stderr
    if extra:
        assert extra in r.stderr


def test_bad_data_messages(workdir, tmp_path):
    df = pd.read_csv(workdir / "data.csv")
    df.loc[[3, 7], "x"] = np.nan
    df.to_csv(tmp_path / "nan.csv", index=False)
    r = hbm("check", workdir / "spec.yaml", tmp_path / "nan.csv")
    assert r.returncode == 2 and "column 'x' has 2 missing values" in r.stderr

    df = pd.read_csv(workdir / "data.csv")
    df.loc[0, "count"] = -1
    df.to_csv(tmp_path / "neg.csv", index=False)
    spec = tmp_path / "pois.yaml"
    spec.write_text("formula: count ~ x\nfamily: poisson\n")
    r = hbm("check", spec, tmp_path / "neg.csv")
    assert r.returncode == 2 and "negative" in r.stderr and "count" in r.stderr

    (tmp_path / "junk.parquet").write_text("not parquet")
    r = hbm("check", workdir / "spec.yaml", tmp_path / "junk.parquet")
    assert r.returncode == 2 and "could not read" in r.stderr

    r = hbm("check", workdir / "spec.yaml", tmp_path / "missing.csv")
    assert r.returncode == 2 and "not found" in r.stderr


def test_unparseable_formula_shows_a_caret(workdir, tmp_path):
    spec = tmp_path / "caret.yaml"
    spec.write_text("formula: y ~ x + lg(x)\n")
    r = hbm("check", spec, workdir / "data.csv")
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    src = next(i for i, line in enumerate(lines) if "y ~ x + lg(x)" in line)
    caret = lines[src + 1]
    assert caret.index("^") == lines[src].index("lg(")
    assert "did you mean 'log'" in r.stderr
