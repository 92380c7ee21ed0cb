"""Minibatches (``batch_size``): the scaled batch likelihood is an unbiased estimate of the full one,
the mean of many minibatch losses is the full-data loss, and a minibatch fit recovers known values."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.util import log_density
from numpyro.optim import Adam

import hbm
from hbm.data.batching import BatchStream, window
from hbm.pipeline.compiled import compile_table
from hbm.errors import HbmError
from hbm.spec import load_spec

FORMULA = "y ~ x + (1 + x | g) + (1 | h)"


def frame(n=400, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 12, n)
    x = rng.normal(size=n)
    b = rng.normal(0, 0.5, 12)
    y = rng.poisson(np.exp(1.0 + 0.5 * x + b[g]))
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in g], "h": rng.integers(0, 5, n)})


def _model(batch_size, df, **extra):
    return compile_table(load_spec({"formula": FORMULA, "family": "poisson", "batch_size": batch_size,
                                    **extra}), df)


def _params(m):
    """A draw of every latent site (compiled: op by op, tracing a model takes seconds)."""
    def draw(rows, consts):
        tr = handlers.trace(handlers.seed(m.numpyro_model, 0)).get_trace(rows, consts)
        return {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
    return jax.jit(draw)(m.rows, m.consts)


def _logp(m, params, rows=None):
    return float(jax.jit(lambda p, r, c: log_density(m.numpyro_model, (r, c), {}, p)[0])(
        params, m.rows if rows is None else rows, m.consts))


def _window_logp(m, stream, chunk, params):
    """Log joint at ``params`` for the batch at each start of ``chunk``, scaled by N / B."""
    def one(start):
        batch = window(stream, chunk, start)
        return log_density(m.numpyro_model, (batch, m.consts), {"scale": stream.scale}, params)[0]
    return jax.jit(jax.vmap(one))(jnp.arange(stream.chunk_per_device))


def test_windows_average_to_the_full_log_joint():
    df = frame(n=437)
    m = _model(50, df)
    stream = m.batches
    assert stream.whole and stream.scale == pytest.approx(437 / 50)
    assert m.data["rows"].chunk.y.shape == (1, 437 + 50)
    params = _params(m)
    full = _logp(m, params)
    lp = np.asarray(_window_logp(m, stream, stream.chunk, params))
    assert lp.std() > 1.0                           # the batches differ ...
    np.testing.assert_allclose(lp.mean(), full, rtol=1e-5)   # ... and average to the whole


def test_chunks_of_an_epoch_cover_every_row_once():
    df = frame(n=400)
    m = _model(20, df)
    stream = BatchStream(m.batches.rows, m.batches.model_kwargs()["consts"], 20, seed=1, chunk_rows=100)
    assert not stream.whole and stream.scale == pytest.approx(400 / 20)
    params = _params(m)
    full = _logp(m, params)
    means, seen = [], []
    chunk = stream.chunk
    for k in range(4):
        if k:
            chunk = stream.next_chunk()
        seen.append(np.asarray(chunk.X)[0, :100, 0])
        means.append(float(np.mean(_window_logp(m, stream, chunk, params))))
    assert sorted(np.concatenate(seen).tolist()) == sorted(np.asarray(m.rows.X)[:, 0].tolist())
    # each chunk's windows estimate the whole: (N / C) x its own rows; an epoch of chunks averages exactly
    np.testing.assert_allclose(np.mean(means), full, rtol=1e-5)


def test_mean_minibatch_loss_is_the_full_loss():
    df = frame(n=400)
    m = compile_table(load_spec({"formula": "y ~ x + (1 | g)", "family": "poisson", "batch_size": 40}), df)
    guide = AutoNormal(m.numpyro_model)
    elbo = Trace_ELBO()
    kw_batch, kw_full = m.data, {"rows": m.rows, "consts": m.consts}
    svi = SVI(m.numpyro_model, guide, Adam(0.01), elbo)
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), **kw_full))

    def diff(k):
        # the same key: the same guide draw, so the difference is the batch's error alone
        return (elbo.loss(k, params, m.numpyro_model, guide, **kw_batch)
                - elbo.loss(k, params, m.numpyro_model, guide, **kw_full))
    keys = jax.random.split(jax.random.PRNGKey(1), 300)
    d = np.asarray(jax.jit(jax.vmap(diff))(keys))
    full = float(elbo.loss(keys[0], params, m.numpyro_model, guide, **kw_full))
    assert d.std() > 1e-3 * abs(full)                     # minibatch losses are noisy ...
    assert abs(d.mean()) < 4 * d.std() / np.sqrt(len(d))   # ... and unbiased


def test_minibatch_fit_recovers_known_values():
    rng = np.random.default_rng(3)
    n, groups = 30000, 30
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    b = rng.normal(0, 0.5, groups)
    b -= b.mean()
    y = rng.poisson(np.exp(1.0 + 0.5 * x + b[g]))
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g]})
    spec = {"formula": "y ~ x + (1 | g)", "family": "poisson", "batch_size": 512,
            "inference": {"engine": "svi", "steps": 4000, "tolerance": 0, "draws": 200, "seed": 1,
                          "optimizer": "adam(lr=0.03)"}}
    m = hbm.compile(spec, df)
    assert "minibatches of 512 rows" in m.describe()
    res = hbm.fit(m)
    s = res.summary()["mean"]
    assert abs(s["x"] - 0.5) < 0.03
    assert abs(s["Intercept"] - 1.0) < 0.2      # its posterior sd is about 0.4 / sqrt(30)
    assert abs(s["sd(1 | g)"] - b.std()) < 0.1
    est = s[[f"Intercept[g=g{i}]" for i in range(groups)]].to_numpy() - s["Intercept"]
    assert np.corrcoef(est, b)[0, 1] > 0.95


def test_batch_size_needs_an_optimisation_engine():
    with pytest.raises(HbmError, match="batch_size needs an optimisation engine"):
        _model(50, frame(), inference={"engine": "nuts"})


def test_chunk_b_depends_on_the_block_alone():
    """Chunk b is a window of the seeded epoch permutations: the same however the stream got there."""
    m = _model(20, frame(n=400))
    kw = m.batches.model_kwargs()["consts"]
    walked = BatchStream(m.batches.rows, kw, 20, seed=3, chunk_rows=100)
    chunks = [np.asarray(walked.chunk.X)] + [np.asarray(walked.next_chunk().X) for _ in range(5)]
    jumped = BatchStream(m.batches.rows, kw, 20, seed=3, chunk_rows=100)
    assert np.array_equal(np.asarray(jumped.chunk_at(5).X), chunks[5])     # epoch 1, second chunk
    assert np.array_equal(np.asarray(jumped.chunk_at(2).X), chunks[2])     # and back
    assert not np.array_equal(chunks[0], chunks[4])                           # a new epoch, a new order
    other = BatchStream(m.batches.rows, kw, 20, seed=4, chunk_rows=100)
    assert not np.array_equal(np.asarray(other.chunk.X), chunks[0])


class _Stop(Exception):
    pass


def test_an_interrupted_minibatch_fit_resumes_exactly(tmp_path, monkeypatch):
    """Chunks follow the block number, so a fit resumed from a mid-block checkpoint takes the same
    steps on the same rows as one that never stopped."""
    import hbm.data.batching
    monkeypatch.setattr(hbm.data.batching, "CHUNK_ROWS", 100)        # 4 chunks of the 400 rows
    m = _model(20, frame(n=400))
    assert not m.batches.whole
    settings = dict(engine="svi", guide="normal", steps=400, tolerance=0, draws=50, seed=5,
                    checkpoint_every=50, checkpoint_seconds=None, options=(("block", 100),))
    whole = hbm.fit(m, checkpoint=tmp_path / "a", **settings)

    def stop_after_first_block(step, total, loss):
        if step >= 100:
            raise _Stop
    m2 = _model(20, frame(n=400))
    with pytest.raises(_Stop):
        hbm.fit(m2, checkpoint=tmp_path / "b", progress=stop_after_first_block, **settings)
    resumed = hbm.fit(_model(20, frame(n=400)), checkpoint=tmp_path / "b", **settings)
    assert resumed.engine.info.get("resumed_from_step") == 50                # inside block 0
    np.testing.assert_array_equal(resumed.engine.loss, whole.engine.loss)
    np.testing.assert_allclose(resumed.summary()["mean"], whole.summary()["mean"], rtol=1e-6)
