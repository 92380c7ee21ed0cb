"""Devices and layouts: the fit layout (``hbm.data.layout``) and sharding over devices change the cost of a
step, never its value.

- flat and panel layouts give the same log joint and gradient, for every kind of plate plan;
- the fused log densities equal NumPyro's;
- one device runs no ``shard_map``;
- the same spec fitted on 1 and on 4 (fake CPU) devices gives the same loss at each step (a subprocess
  with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` set before jax is imported).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pandas as pd
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

import hbm
from hbm.pipeline.compiled import compile_table
from hbm.vocabulary.families import FAMILIES
from hbm.vocabulary.families import FUSED
from hbm.spec import load_spec


def panel_frame(products=30, periods=8, seed=0, drop=0.1) -> pd.DataFrame:
    """Products nested in categories over periods, ``drop`` of the cells missing, rows shuffled."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 3, products)
    p, t = np.meshgrid(np.arange(products), np.arange(periods), indexing="ij")
    p, t = p.reshape(-1), t.reshape(-1)
    keep = rng.uniform(size=p.size) >= drop
    p, t = p[keep], t[keep]
    n = p.size
    price = np.exp(rng.normal(0, 0.3, n))
    units = rng.poisson(np.exp(1.5 - 2.0 * np.log(price) + rng.normal(0, 0.3, products)[p]))
    df = pd.DataFrame({"product": [f"p{i:02d}" for i in p], "category": [f"c{c}" for c in cat[p]],
                       "period": t, "store": rng.integers(0, 7, n).astype(str),
                       "skew": rng.choice(list("abcde"), n, p=[0.6, 0.2, 0.1, 0.06, 0.04]), "price": price,
                       "units": units, "x": rng.normal(size=n), "w": rng.uniform(0.5, 2, n),
                       "n": rng.integers(5, 15, n)})
    df["succ"] = rng.binomial(df["n"], 0.3)
    df["bin"] = rng.integers(0, 2, n)
    df["y"] = rng.normal(2 + df["x"], 1.0)
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


SEED = "log(units) ~ 0 + log(price) | product/category + 1 | product + (1 | category:period)"
CASES = [
    # formula, family, expected panel plans
    (SEED, "poisson", {"product": "row", "category:period": "pattern"}),
    ("y | weights(w) ~ x + (1 + x | product) + (1 | period)", "normal", {"product": "row", "period": "pattern"}),
    ("succ | trials(n) ~ x + (1 | product) + (1 | store)", "binomial", {"product": "row", "store": "cell"}),
    ("bin ~ factor(period) + offset(x) + (1 | skew)", "bernoulli", None),   # unbalanced: flat
    ("units ~ x + (1 | product) + (1 | category)", "negative_binomial", {"product": "row", "category": "row"}),
]


def _spec(formula, family, **extra):
    return load_spec({"formula": formula, "family": family, **extra})


def _params(model, data):
    """A draw of every latent site (compiled: op by op, tracing a model takes seconds)."""
    def draw(data):
        tr = handlers.trace(handlers.seed(model.numpyro_model, 0)).get_trace(**data)
        return {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
    return jax.jit(draw)(data)


def _vg(model, data, params):
    return jax.jit(jax.value_and_grad(lambda p, d: log_density(model.numpyro_model, (), d, p)[0]))(params, data)


@pytest.mark.parametrize("formula,family,plans", CASES)
def test_layouts_give_the_same_log_joint(formula, family, plans):
    df = panel_frame()
    flat = compile_table(_spec(formula, family), df, layout="flat")
    auto = compile_table(_spec(formula, family), df, layout="panel")   # small data: "auto" keeps it flat
    assert compile_table(_spec(formula, family), df).layout.kind == "flat"
    if plans is None:
        assert auto.layout.kind == "flat"
    else:
        assert auto.layout.kind == "panel" and {p: v.kind for p, v in auto.layout.plans.items()} == plans
        assert auto.data["rows"].mask is not None                    # 10% of the cells are empty
    params = _params(flat, flat.data)
    v_flat, g_flat = _vg(flat, flat.data, params)
    v_auto, g_auto = _vg(auto, auto.data, params)
    assert np.isfinite(float(v_flat))
    np.testing.assert_allclose(float(v_auto), float(v_flat), rtol=1e-5)
    for k in g_flat:
        np.testing.assert_allclose(np.asarray(g_auto[k]), np.asarray(g_flat[k]), rtol=2e-3, atol=2e-3,
                                   err_msg=k)


def test_complete_panel_needs_no_mask():
    df = panel_frame(drop=0.0)
    m = compile_table(_spec(SEED, "poisson"), df, layout="panel")
    assert m.layout.kind == "panel" and m.layout.width == 8
    assert m.data["rows"].mask is None and m.data["rows"].y.shape == (30, 8)
    assert m.data["consts"].pattern["category:period"].shape == (3, 8)
    # the model still takes the documented per-row arrays, in the data's order
    params = _params(m, m.data)
    v_fit, _ = _vg(m, m.data, params)
    v_rows, _ = _vg(m, {"rows": m.rows, "consts": m.consts}, params)
    np.testing.assert_allclose(float(v_rows), float(v_fit), rtol=1e-5)


@pytest.mark.parametrize("family,link", sorted(FUSED))
def test_fused_log_density_equals_numpyro(family, link):
    rng = np.random.default_rng(0)
    n = 50
    eta = jnp.asarray(rng.normal(0.3, 0.8, n), jnp.float32)
    extra = {"trials": jnp.asarray(rng.integers(1, 20, n), jnp.float32)} if family == "binomial" else {}
    y = {"poisson": rng.poisson(2.0, n), "bernoulli": rng.integers(0, 2, n),
         "binomial": rng.binomial(np.asarray(extra.get("trials", np.ones(n)), int), 0.4),
         "normal": rng.normal(0, 1, n)}[family]
    y = jnp.asarray(y, jnp.float32)
    aux = {"sigma": jnp.float32(0.7)}
    want = FAMILIES[family].make(eta, link, aux, extra).log_prob(y)
    fused = FUSED[(family, link)]
    got = fused.logp(eta, y, aux, extra)
    if fused.const is not None:
        got = got + fused.const(y, extra)
        const_np = fused.const(np.asarray(y, np.float64), {k: np.asarray(v, np.float64) for k, v in extra.items()},
                               xp=np)
        np.testing.assert_allclose(const_np, np.asarray(fused.const(y, extra)), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_one_device_runs_no_shard_map():
    m = compile_table(_spec(SEED, "poisson"), panel_frame(), devices=1)
    params = _params(m, m.data)
    jaxpr = jax.make_jaxpr(lambda p, d: log_density(m.numpyro_model, (), d, p)[0])(params, m.data)
    assert "shard_map" not in str(jaxpr)


WORKER = textwrap.dedent("""
    import json, sys, dataclasses
    import jax, numpy as np
    assert jax.device_count() == 4, jax.devices()
    sys.path[:0] = [{tests!r}, {root!r}]
    from test_devices import panel_frame, SEED, _spec, _params, _vg
    from hbm.pipeline.compiled import compile_table
    from hbm.engines.base import FitProblem
    from hbm.engines.svi import guide_factory, make_elbo, run_svi

    df = panel_frame(products=31, periods=9)   # 31 block rows: padded to 32 on 4 devices
    out = {{}}
    ref = compile_table(_spec(SEED, "poisson"), df, devices=1, layout="flat")
    params = _params(ref, ref.data)
    for layout in ("panel", "flat"):
        spec = _spec(SEED, "poisson", inference={{"steps": 40, "tolerance": 0, "seed": 2, "particles": 2}})
        for devices in (1, 4):
            m = compile_table(spec, df, devices=devices, layout=layout)
            key = f"{{layout}}-{{devices}}"
            out[key + "-layout"] = m.layout.kind
            if layout == "panel":
                config = dataclasses.replace(spec.inference, options=(("block", 20),))
                fit = run_svi(FitProblem(m.numpyro_model, m.data), config, guide_factory("normal"),
                              make_elbo(config))
                out[key + "-loss"] = fit.loss.tolist()
            v, g = _vg(m, m.data, params)
            out[key + "-value"] = float(v)
    # minibatches over the 4 devices: the windows of the chunk average to the whole
    import jax.numpy as jnp
    from numpyro.infer.util import log_density
    from hbm.data.batching import window
    m = compile_table(_spec(SEED, "poisson", batch_size=40), df, devices=4)
    s = m.batches
    chunk = m.data["rows"].chunk
    lp = jax.jit(jax.vmap(lambda i: log_density(m.numpyro_model, (window(s, chunk, i), m.consts),
                                                {{"scale": s.scale}}, params)[0]))(jnp.arange(s.chunk_per_device))
    out["batch-mean"] = float(np.mean(np.asarray(lp)))
    out["batch-shape"] = list(chunk.y.shape)
    print(json.dumps(out))
""")


def test_one_and_four_devices_give_the_same_losses(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=tests, root=os.path.dirname(tests)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["panel-1-layout"] == out["panel-4-layout"] == "panel"
    l1, l4 = np.asarray(out["panel-1-loss"]), np.asarray(out["panel-4-loss"])
    assert l1.shape == (40,) and np.isfinite(l1).all()
    np.testing.assert_allclose(l4, l1, rtol=1e-4)
    for layout in ("panel", "flat"):
        np.testing.assert_allclose(out[f"{layout}-4-value"], out[f"{layout}-1-value"], rtol=1e-5)
    np.testing.assert_allclose(out["flat-1-value"], out["panel-1-value"], rtol=1e-5)
    # 251 rows over 4 devices: 63 per device (one padded) and a batch of 10 per device, wrapping around
    assert out["batch-shape"] == [4, 63 + 10]
    np.testing.assert_allclose(out["batch-mean"], out["flat-1-value"], rtol=1e-5)
