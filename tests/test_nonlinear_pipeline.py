"""Non-linear formulas through the linear pipeline (issue #11, "one IR, one driver"), on the
dose-response spec (``specs/dose_response.yaml``, shrunk): the same likelihood tail (fused
families with ``lp0``, ``shard_map`` over several devices), minibatches, ``hbm predict`` and
``--distributed``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest
import yaml
from numpyro import handlers
from numpyro.infer.util import log_density

import hbm
from hbm.data.batching import window
from hbm.errors import HbmError
from hbm.pipeline.compiled import compile_table
from hbm.pipeline.predict import Predictor, model_from_dict, model_to_dict
from hbm.pipeline.simulate import simulate
from hbm.spec import load_spec

from hand_4pl import codes, hand_4pl, prior_draw

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

SMALL = {"rows": 600, "seed": 3,
         "columns": {"target": {"levels": 3}, "compound": {"levels": 15, "within": "target"},
                     "plate": {"levels": 5},
                     "dose": {"doses": [0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100],
                              "per": "compound", "count": [8, 10]}}}


def dose_spec(**over) -> dict:
    """specs/dose_response.yaml with a small simulate: block (its own parameter values)."""
    d = yaml.safe_load((ROOT / "specs" / "dose_response.yaml").read_text())
    d["simulate"] = {**SMALL, "params": d["simulate"]["params"]}
    d["inference"] = {**d["inference"], "steps": 1500, "draws": 100, "tolerance": 0}
    return {**d, **over}


def dose_data(seed=3, rows=600):
    spec = load_spec(dose_spec())
    return simulate(spec, rows=rows, seed=seed)


DF, TRUTH = dose_data()


def hand_student_4pl(df):
    """The dose-response spec's model written by hand in NumPyro (centred), with hbm's site names."""
    return hand_4pl(df, student_t=True)


def compiled(df=DF, devices=1, layout=None, **over):
    return compile_table(load_spec(dose_spec(**over)), df, devices=devices, noncentered=False, layout=layout)


def _logp(m, params, data=None):
    return float(jax.jit(lambda p, d: log_density(m.numpyro_model, (), d, p)[0])(params, data or m.data))


# ====================================================================== one likelihood tail
def test_dose_response_log_density_equals_a_hand_written_student_t_4pl():
    m = compiled()
    hand = hand_student_4pl(DF)
    for seed in range(3):
        params = prior_draw(hand, seed)
        want = float(log_density(hand, (), {}, params)[0])
        assert np.isfinite(want)
        np.testing.assert_allclose(_logp(m, params), want, rtol=1e-5, atol=1e-3)
    jaxpr = jax.make_jaxpr(lambda p, d: log_density(m.numpyro_model, (), d, p)[0])(params, m.data)
    assert "shard_map" not in str(jaxpr)


def test_a_fused_family_takes_its_constant_from_the_rows():
    """Poisson counts of a non-linear mean: the fused log density with lp0 (-lgamma(y + 1), computed
    once by the layout) equals NumPyro's Poisson."""
    rng = np.random.default_rng(1)
    n = 300
    x = rng.uniform(0, 3, n)
    g = rng.integers(0, 5, n)
    y = rng.poisson(np.exp(np.log(2.0 + 8.0 / (1 + np.exp(1.5 * (x - 1.5)))) + 0.2 * rng.normal(size=5)[g]))
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g]})
    spec = {"formula": "y ~ log(lo + span / (1 + exp(k * (x - mid)))) + b", "family": "poisson",
            "params": {"lo": "1", "span": "1", "k": "1", "mid": "1", "b": "0 + (1 | g)"},
            "bounds": {"lo": "positive", "span": "positive", "k": "positive"},
            "priors": {"lo": "lognormal(0, 1)", "span": "lognormal(2, 1)", "k": "lognormal(0, 1)",
                       "mid": "normal(1, 1)", "sd(b | g)": "half_normal(0.5)"}}
    m = compile_table(load_spec(spec), df, devices=1, noncentered=False)
    assert m.rows.lp0 is not None
    np.testing.assert_allclose(np.asarray(m.rows.lp0), -np.array([np.sum(np.log(np.arange(1, v + 1)))
                                                                     for v in y]), rtol=1e-5, atol=1e-4)
    gi, ng = codes("g", df)
    params = {"lo": jnp.float32(1.7), "span": jnp.float32(7.0), "k": jnp.float32(1.2), "mid": jnp.float32(1.4),
              "sd(b | g)": jnp.float32(0.3), "r(b | g)": jnp.asarray(rng.normal(0, 0.3, ng), jnp.float32)}
    lp = _logp(m, params)
    prior = float(log_density(m.numpyro_model, (m.rows, m.consts), {"mode": "latent"}, params)[0])
    mu = np.log(1.7 + 7.0 / (1 + np.exp(1.2 * (x - 1.4)))) + np.asarray(params["r(b | g)"])[np.asarray(gi)]
    want = float(dist.Poisson(jnp.exp(jnp.asarray(mu, jnp.float32))).log_prob(jnp.asarray(y, jnp.float32)).sum())
    np.testing.assert_allclose(lp - prior, want, rtol=1e-5, atol=1e-2)


def test_the_panel_layout_gives_the_same_log_density():
    """Compounds as block rows (their log IC50 a code per block row), plates a code per cell."""
    flat, panel = compiled(layout="flat"), compiled(layout="panel")
    assert flat.layout.kind == "flat" and panel.layout.kind == "panel" and panel.layout.plate == "compound"
    assert panel.fit_rows.y.shape == (15, 40) and panel.fit_rows.params["log_ic50"].idx["compound"].shape == (15,)
    assert np.asarray(panel.rows.y).shape == (600,)            # the host keeps the flat rows
    hand = hand_student_4pl(DF)
    for seed in range(2):
        params = prior_draw(hand, seed)
        want = float(log_density(hand, (), {}, params)[0])
        np.testing.assert_allclose(_logp(panel, params), want, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(_logp(panel, params), _logp(flat, params), rtol=1e-6, atol=1e-3)


DEVICES = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    assert jax.device_count() == 4, jax.devices()
    sys.path[:0] = [{tests!r}, {root!r}]
    from numpyro.infer.util import log_density
    from test_nonlinear_pipeline import DF, compiled, hand_student_4pl, prior_draw
    from hbm.data.batching import window
    df = DF.iloc[:-3]                       # 597 rows: padded to 600 on 4 devices
    params = prior_draw(hand_student_4pl(df), 1)
    out = {{"hand": float(log_density(hand_student_4pl(df), (), {{}}, params)[0])}}
    for d in (1, 4):
        m = compiled(df, devices=d)
        out[f"lp{{d}}"] = float(jax.jit(lambda p, a: log_density(m.numpyro_model, (), a, p)[0])(params, m.data))
        out[f"shard_map{{d}}"] = "shard_map" in str(jax.make_jaxpr(
            lambda p, a: log_density(m.numpyro_model, (), a, p)[0])(params, m.data))
        g = jax.jit(jax.grad(lambda p, a: log_density(m.numpyro_model, (), a, p)[0]))(params, m.data)
        out[f"finite{{d}}"] = all(bool(np.isfinite(np.asarray(v)).all()) for v in g.values())
        out[f"rows{{d}}"] = int(m.rows.y.shape[0])
    m = compiled(df, devices=4, layout="panel")
    out["panel4"] = float(jax.jit(lambda p, a: log_density(m.numpyro_model, (), a, p)[0])(params, m.data))
    out["panel4-layout"] = m.layout.kind
    # minibatches over the 4 devices: the windows of the chunk average to the whole
    m = compiled(df, devices=4, batch_size=40)
    s, chunk = m.batches, m.data["rows"].chunk
    lp = jax.jit(jax.vmap(lambda i: log_density(m.numpyro_model, (window(s, chunk, i), m.consts),
                                                {{"scale": s.scale}}, params)[0]))(jnp.arange(s.chunk_per_device))
    out["batch-mean"] = float(np.mean(np.asarray(lp)))
    out["batch-devices"] = m.n_devices
    print(json.dumps(out))
""")


def test_one_and_four_devices_give_the_hand_written_log_density(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DEVICES.format(tests=str(TESTS), root=str(ROOT)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert not out["shard_map1"] and out["shard_map4"]           # several devices: the linear tail's shard_map
    assert out["rows1"] == 597 and out["rows4"] == 600
    for d in (1, 4):
        np.testing.assert_allclose(out[f"lp{d}"], out["hand"], rtol=1e-5, atol=1e-3)
        assert out[f"finite{d}"]
    assert out["panel4-layout"] == "panel"
    np.testing.assert_allclose(out["panel4"], out["hand"], rtol=1e-5, atol=1e-3)
    assert out["batch-devices"] == 4
    np.testing.assert_allclose(out["batch-mean"], out["hand"], rtol=1e-4)


# ====================================================================== minibatches
def test_minibatch_windows_average_to_the_full_log_density():
    full, m = compiled(), compiled(batch_size=50)
    s = m.batches
    assert s is not None and s.batch_size == 50 and "minibatches of 50 rows" in m.describe()
    params = prior_draw(hand_student_4pl(DF), 2)
    chunk = m.data["rows"].chunk
    lp = jax.jit(jax.vmap(lambda i: log_density(m.numpyro_model, (window(s, chunk, i), m.consts),
                                                {"scale": s.scale}, params)[0]))(jnp.arange(s.chunk_per_device))
    np.testing.assert_allclose(float(np.mean(np.asarray(lp))), _logp(full, params), rtol=1e-5)
    assert float(np.std(np.asarray(lp))) > 1.0          # the windows differ: each is an estimate


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """The dose-response spec fitted by SVI on all rows and on minibatches of half of them, and the
    full fit's run directory."""
    full = hbm.fit(hbm.compile(dose_spec(), DF))
    batch = hbm.fit(hbm.compile(dose_spec(batch_size=300), DF))
    run = full.save(tmp_path_factory.mktemp("nl") / "run")
    return full, batch, run


SHARED = ["top", "bottom", "hill", "log_ic50", "sigma", "nu", "sd(log_ic50 | compound)"]


def test_a_minibatch_fit_recovers_what_the_full_fit_does(fits):
    """Two SVI optima, each noisy: every mean within 1.5 posterior sd of the full fit's, most within
    0.5; the sds agree (a batch likelihood not scaled by N / B would widen them by sqrt(2))."""
    full, batch, _ = fits
    assert batch.model.batches is not None and batch.model.batches.scale == 2.0 and full.model.batches is None
    f, b = full.summary(), batch.summary()
    comps = [n for n in f.index if n.startswith("log_ic50[compound=")]
    assert len(comps) == 15
    names = SHARED + comps
    z = (b.loc[names, "mean"] - f.loc[names, "mean"]).abs() / f.loc[names, "sd"]
    assert (z < 1.5).all() and np.median(z) < 0.5, z.round(2).to_dict()
    ratio = b.loc[comps + ["top", "bottom", "log_ic50"], "sd"] / f.loc[comps + ["top", "bottom", "log_ic50"], "sd"]
    assert ratio.between(0.8, 1.25).all(), ratio.round(2).to_dict()
    t = np.array([TRUTH[n] for n in comps])
    assert np.corrcoef(b.loc[comps, "mean"], t)[0, 1] > 0.9


# ====================================================================== hbm predict
def test_the_run_directory_holds_a_non_linear_model(fits):
    full, _, run = fits
    doc = json.loads((run / "model.json").read_text())
    assert "nonlinear" in doc and model_from_dict(doc) == full.model.ir
    assert model_from_dict(json.loads(json.dumps(model_to_dict(full.model.ir)))) == full.model.ir
    enc = json.loads((run / "encoding.json").read_text())
    assert "compound>target" in enc["parents"] and enc["labels"]["compound"] == full.model.encoding.labels["compound"]


def test_seen_rows_match_the_models_own_expression(fits):
    full, _, _ = fits
    m = full.model
    eta = full.predict(DF, what="eta", draws=True)                # (rows, draws)
    mean = full.predict(DF, what="mean", draws=True)
    assert eta.shape == (len(DF), 100)
    assert (DF["dose"] == 0).sum() > 30                           # controls: the limit, top
    for s in (0, 99):
        latent = {k: np.asarray(v)[0, s] for k, v in full.engine.samples.items()}
        own = handlers.substitute(handlers.seed(m.numpyro_model, 0), latent)(m.rows, m.consts, mode="eta")
        np.testing.assert_allclose(eta[:, s], np.asarray(own), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(mean[:, s], np.asarray(own), rtol=1e-4, atol=1e-3)   # identity link
    out = full.predict(DF.head(40), seed=1)
    assert (out["new_levels"] == "").all()
    sigma = full.summary().loc["sigma", "mean"]
    assert (out["sd"] > 0.7 * sigma).all()                        # a response: the noise included


def test_unseen_levels_are_drawn_from_their_population_and_saved_runs_agree(fits):
    full, _, run = fits
    s = full.summary()
    seen_c, seen_p = DF["compound"].iloc[0], DF["plate"].iloc[0]
    target = DF["target"].iloc[0]
    new = pd.DataFrame({"dose": [0.0, 0.0, 0.3, 0.3, 0.3], "plate": [seen_p, "p_new", seen_p, seen_p, seen_p],
                        "compound": [seen_c, seen_c, seen_c, "c_new", "c_new2"],
                        "target": [target, target, target, target, "t_new"]})
    eta = full.predict(new, what="eta", draws=True, seed=2)
    width = np.quantile(eta, 0.95, axis=1) - np.quantile(eta, 0.05, axis=1)
    assert width[1] > 1.5 * width[0] and width[3] > 1.5 * width[2] and width[4] > width[3]
    # a control on a new plate: top plus a new plate's deviation, centred on top
    assert abs(eta[1].mean() - s.loc["top", "mean"]) < 4 * eta[1].std() / np.sqrt(100) + 0.05
    # a control on a seen plate: the limit at dose 0, that plate's top (the same draws as the summary's)
    assert abs(eta[0].mean() - s.loc[f"top[plate={seen_p}]", "mean"]) < 1e-3
    out = full.predict(new, seed=2)
    assert [set(x.split(",")) - {""} for x in out["new_levels"]] == [set(), {"plate"}, set(), {"compound"},
                                                                     {"compound", "target"}]
    again = Predictor.from_run(run).predict(new, seed=2)           # what `hbm predict RUN DATA` does
    np.testing.assert_allclose(again[["mean", "sd", "q5", "q50", "q95"]].to_numpy(),
                               out[["mean", "sd", "q5", "q50", "q95"]].to_numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(HbmError, match="'log\\(dose\\)' is infinite or undefined in 1 rows"):
        full.predict(new.assign(dose=[0.0, 0.0, -1.0, 0.3, 0.3]))


# ====================================================================== --distributed
def test_two_processes_fit_what_one_does(tmp_path):
    """2 processes x 2 CPU devices on 127.0.0.1 (``hbm fit --distributed``) give the loss trajectory
    and the summary of one ``hbm fit`` process on 1 device."""
    from test_distributed import _free_port, _hbm
    from hbm.io.rundir import load_run
    data = tmp_path / "dose.parquet"
    DF.to_parquet(data, index=False, row_group_size=97)           # row groups cut through compounds
    spec = dose_spec(inference={"engine": "svi", "guide": "normal", "optimizer": "adam(lr=0.02)", "steps": 60,
                                "tolerance": 0, "draws": 20, "seed": 3})
    spec.pop("simulate")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    port = _free_port()
    common = [tmp_path / "spec.yaml", data, "--out", tmp_path / "two", "--distributed", "--coordinator",
              f"127.0.0.1:{port}", "--num-processes", 2]
    procs = [_hbm([tmp_path / "spec.yaml", data, "--out", tmp_path / "one"], 1),
             _hbm(common + ["--process-id", 0], 2), _hbm(common + ["--process-id", 1], 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    one, two = load_run(tmp_path / "one"), load_run(tmp_path / "two")
    assert two.fit_info["devices"]["count"] == 4 and two.fit_info["data"]["rows"] == len(DF)
    assert len(one.loss()) == 60
    np.testing.assert_allclose(two.loss(), one.loss(), rtol=2e-4)
    np.testing.assert_allclose(two.summary["mean"].to_numpy(), one.summary["mean"].to_numpy(), rtol=1e-2, atol=1e-2)
    obs = two.idata().observed_data["response"].values.reshape(-1)
    np.testing.assert_array_equal(obs, DF["response"].to_numpy().astype(np.float32))
    assert (tmp_path / "two" / "model.json").is_file()            # hbm predict works on it
