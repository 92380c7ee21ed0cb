"""Inference engines against posteriors known exactly, plus the optimizer builder and the registry."""
from __future__ import annotations

import re
from dataclasses import replace
from functools import partial

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from hbm.engines import Engine, FitProblem, available_engines, build_optax, build_optimizer, get_engine
from hbm.engines import registry
from hbm.errors import HbmError
from hbm.frontend.parse import parse_call
from hbm.spec import InferenceSpec


# hbm's own settings object with this file's defaults: Inference(particles=4) etc.
Inference = partial(replace, InferenceSpec(
    guide="normal", alpha=0.5, optimizer=parse_call("adam(lr=exponential_decay(0.05, 400, 0.1))"), steps=2000,
    tolerance=0.0, draws=1000, warmup=300, samples=500, chains=2, max_tree_depth=8))


# ------------------------------------------------------------------ conjugate normal: exact posterior
PRIOR_SD, N = 2.0, 20
Y = np.random.default_rng(1).normal(0.7, 1.0, N).astype(np.float32)
POST_VAR = 1.0 / (1.0 / PRIOR_SD**2 + N)
POST_MEAN = POST_VAR * Y.sum()  # prior mean 0, known unit noise sd
POST_SD = np.sqrt(POST_VAR)


def conjugate(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


CONJ = FitProblem(conjugate, {"y": jnp.asarray(Y)})


@pytest.fixture(scope="module")
def svi_fit():
    return get_engine("svi").fit(CONJ, Inference(particles=4))


def test_svi_normal_guide_matches_exact_posterior(svi_fit):
    mu = svi_fit.samples["mu"]
    assert mu.shape == (1, 1000)
    assert set(svi_fit.samples) == {"mu"}  # the observed site is not a latent
    assert abs(mu.mean() - POST_MEAN) < 0.03
    assert abs(mu.std() / POST_SD - 1) < 0.08
    assert svi_fit.loss.dtype == np.float64 and np.isfinite(svi_fit.loss).all()
    assert {"compile_s", "fit_s", "sample_s"} <= set(svi_fit.timings)


def test_tolerance_zero_runs_every_step(svi_fit):
    info = svi_fit.info
    assert info["steps_run"] == 2000 and len(svi_fit.loss) == 2000
    assert info["converged"] is False and info["stop_reason"] == "max_steps"
    assert info["engine"] == "svi" and info["guide"] == "normal" and info["particles"] == 4


def test_nuts_matches_exact_posterior():
    r = get_engine("nuts").fit(CONJ, Inference(warmup=200, samples=400))
    mu = r.samples["mu"]
    assert mu.shape == (2, 400)
    mc_error = POST_SD / np.sqrt(400)  # per chain; both chains together are better than this
    assert abs(mu.mean() - POST_MEAN) < 4 * mc_error
    assert abs(mu.std() / POST_SD - 1) < 0.15
    assert set(r.sample_stats) == {"diverging", "accept_prob", "num_steps", "energy", "step_size"}
    assert all(v.shape == (2, 400) for v in r.sample_stats.values())
    assert r.info["num_divergences"] == 0 and r.loss is None
    assert 0.5 < r.info["mean_accept_prob"] <= 1


def test_map_is_the_exact_mode():
    r = get_engine("map").fit(CONJ, Inference(steps=1500))
    assert r.samples["mu"].shape == (1, 1)
    np.testing.assert_allclose(r.samples["mu"][0, 0], POST_MEAN, atol=2e-3)
    assert r.info["engine"] == "map" and len(r.loss) == 1500


X = np.linspace(-1.0, 3.0, N).astype(np.float32)  # not centred: the posterior is correlated
YX = (0.5 + 1.5 * X + np.random.default_rng(2).normal(0, 1, N)).astype(np.float32)


def regression(x, y):
    a = numpyro.sample("a", dist.Normal(0.0, PRIOR_SD))
    b = numpyro.sample("b", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * x, 1.0), obs=y)


def test_laplace_matches_exact_gaussian_posterior():
    design = np.stack([np.ones(N), X], axis=1).astype(np.float64)
    cov = np.linalg.inv(np.eye(2) / PRIOR_SD**2 + design.T @ design)
    mean = cov @ design.T @ YX
    r = get_engine("laplace").fit(FitProblem(regression, {"x": jnp.asarray(X), "y": jnp.asarray(YX)}),
                                  Inference(steps=2000, draws=4000))
    draws = np.stack([r.samples["a"][0], r.samples["b"][0]])
    assert draws.shape == (2, 4000)
    np.testing.assert_allclose(draws.mean(axis=1), mean, atol=0.03)
    np.testing.assert_allclose(draws.std(axis=1), np.sqrt(np.diag(cov)), rtol=0.05)
    exact_corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert abs(np.corrcoef(draws)[0, 1] - exact_corr) < 0.03
    assert r.info["latent_dim"] == 2


def test_laplace_refuses_too_many_dimensions():
    with pytest.raises(HbmError, match="latent dimensions") as e:
        get_engine("laplace").fit(CONJ, Inference(steps=10, options=(("max_latent", 0),)))
    assert "svi" in e.value.problems[0].hint


# ------------------------------------------------------------------ eight schools: a plate, every guide
SCHOOLS_Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SE = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * z)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


@pytest.mark.parametrize("guide,loss,particles", [
    ("normal", "renyi", 4), ("lowrank", "elbo", 1), ("mvn", "elbo", 2), ("delta", "elbo", 1),
])
def test_eight_schools_every_guide(guide, loss, particles):
    cfg = Inference(guide=guide, rank=2 if guide == "lowrank" else None, loss=loss, particles=particles,
                    steps=400, draws=200, optimizer=parse_call("adam(lr=0.02)"))
    r = get_engine("svi").fit(FitProblem(eight_schools, {"y": SCHOOLS_Y, "sigma": SCHOOLS_SE}), cfg)
    assert set(r.samples) == {"mu", "tau", "z"}  # deterministic theta and observed y left out
    assert r.samples["mu"].shape == (1, 200) and r.samples["z"].shape == (1, 200, 8)
    assert all(np.isfinite(v).all() for v in r.samples.values())
    assert (r.samples["tau"] > 0).all()
    assert -10 < r.samples["mu"].mean() < 15
    assert r.info["guide"] == guide and r.info["loss"] == loss and len(r.loss) == 400
    spread = r.samples["mu"].std()
    assert (spread < 1e-4) if guide == "delta" else (spread > 0.1)


# ------------------------------------------------------------------ stopping
def test_early_stopping_before_steps():
    cfg = Inference(steps=20000, tolerance=0.01, particles=4, optimizer=parse_call("adam(lr=0.05)"))
    seen = []
    r = get_engine("svi").fit(CONJ, cfg, progress=lambda step, total, loss: seen.append((step, total, loss)))
    assert r.info["converged"] is True and r.info["stop_reason"] == "converged"
    assert r.info["steps_run"] < 20000 and len(r.loss) == r.info["steps_run"]
    assert seen and seen[-1][0] == r.info["steps_run"] and seen[-1][1] == 20000
    assert all(np.isfinite(loss) for _, _, loss in seen)


def blows_up():
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    # pulls x towards 10, and the density is undefined beyond 3
    numpyro.factor("f", jnp.where(x > 3.0, jnp.nan, -0.5 * (x - 10.0) ** 2))


def test_non_finite_loss_names_the_step():
    cfg = Inference(guide="delta", steps=300, optimizer=parse_call("adam(lr=0.1)"))
    with pytest.raises(HbmError, match=r"non-finite at step \d+") as e:
        get_engine("svi").fit(FitProblem(blows_up, {}), cfg)
    err = e.value
    assert 10 < err.step < 300 and len(err.loss) == err.step
    assert np.isfinite(err.loss[:-1]).all() and not np.isfinite(err.loss[-1])
    assert 2.0 < float(err.last_state["x_auto_loc"]) <= 3.0  # the last parameters with a finite loss
    assert "learning rate" in err.problems[0].hint


# ------------------------------------------------------------------ optimizers
def test_adam_builds():
    opt = build_optimizer(parse_call("adam(lr=0.01)"))
    assert type(opt).__name__ == "_NumPyroOptim"
    assert build_optimizer("adam(0.01)") is not None


def _sgd_steps(text, n):
    tx = build_optax(text)
    p = jnp.zeros(()); state = tx.init(p); moves = []
    for _ in range(n):
        u, state = tx.update(jnp.ones(()), state, p)
        moves.append(float(-u))
    return moves


def test_schedule_positional_and_keyword():
    pos = _sgd_steps("sgd(lr=exponential_decay(0.1, 10, 0.5, staircase=true))", 12)
    kw = _sgd_steps("sgd(learning_rate=exponential_decay(init_value=0.1, transition_steps=10, "
                    "decay_rate=0.5, staircase=true))", 12)
    assert pos == kw
    np.testing.assert_allclose(pos[:10], 0.1, rtol=1e-6)
    np.testing.assert_allclose(pos[10:], 0.05, rtol=1e-6)


def test_adamw_with_decay_and_clip():
    tx = build_optax("adamw(lr=exponential_decay(0.01, 1000, 0.9), weight_decay=1e-4, clip=1.0)")
    p = {"a": jnp.ones(3)}
    u, _ = tx.update({"a": jnp.full(3, 100.0)}, tx.init(p), p)
    assert np.all(np.abs(np.asarray(u["a"])) < 0.02)
    assert build_optimizer("adam(lr=warmup_cosine_decay_schedule(0, 0.1, 100, 1000))") is not None


@pytest.mark.parametrize("text,message,hint", [
    ("adma(lr=0.01)", "unknown optimizer 'adma'", "did you mean 'ada"),
    ("adam(lr=expo_decay(0.1, 10, 0.5))", "unknown learning-rate schedule 'expo_decay'",
     "did you mean 'exponential_decay'?"),
    ("adam(lr=0.01, beta1=0.9)", "bad arguments to adam()", "b1"),
    ("adam(lr=0.01, clip=0)", "'clip' must be a positive number", "clip=10"),
])
def test_optimizer_errors(text, message, hint):
    with pytest.raises(HbmError) as e:
        build_optimizer(text)
    assert message in e.value.message and hint in e.value.problems[0].hint


# ------------------------------------------------------------------ registry
def test_builtin_engines_registered():
    assert {"svi", "map", "laplace", "nuts"} <= set(available_engines())
    for name in ("svi", "map", "laplace", "nuts"):
        engine = get_engine(name)
        assert isinstance(engine, Engine) and engine.name == name


def test_unknown_engine_suggests():
    with pytest.raises(HbmError, match="unknown engine 'nutz'") as e:
        get_engine("nutz")
    assert "did you mean 'nuts'?" in e.value.problems[0].hint


class _FakeEntryPoint:
    def __init__(self, name, target):
        self.name, self.value, self.group, self._target = name, f"fake_pkg:{name}", registry.GROUP, target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


class _EchoEngine:
    name = "echo"

    def fit(self, problem, config, progress=None):
        from hbm.engines import EngineResult
        return EngineResult(samples={}, info={"engine": self.name})


def test_plugin_engine_from_entry_point(monkeypatch):
    fakes = [_FakeEntryPoint("echo", _EchoEngine), _FakeEntryPoint("broken", ImportError("no module 'x'"))]
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in fakes if group == ep.group])
    assert {"echo", "broken", "svi", "nuts"} <= set(available_engines())
    engine = get_engine("echo")
    assert isinstance(engine, _EchoEngine) and engine.fit(CONJ, Inference()).info["engine"] == "echo"
    with pytest.raises(HbmError, match=re.escape("engine 'broken' failed to load from entry point 'fake_pkg:broken'")):
        get_engine("broken")


# ------------------------------------------------------------------ capabilities
def test_builtin_engines_declare_what_they_can_do():
    from hbm.engines import capabilities
    got = {n: capabilities(get_engine(n)) for n in ("svi", "map", "laplace", "nuts")}
    assert {n: c.kind for n, c in got.items()} == {"svi": "variational", "map": "optimizer",
                                                   "laplace": "variational", "nuts": "sampler"}
    assert {n for n, c in got.items() if c.minibatches} == {"svi", "map"}
    assert {n for n, c in got.items() if c.checkpoints} == {"svi", "nuts"}


class _PriorEngine:
    """A plugin that draws from the prior (2 chains x 5 draws) and records what it was given."""

    name = "prior"

    def __init__(self):
        self.given = []

    def fit(self, problem, config, progress=None, **kw):
        import jax
        from numpyro.infer import Predictive
        from hbm.engines import EngineResult, latent_site_names
        self.given.append((problem, kw))
        latent = latent_site_names(problem.model, problem.model_kwargs)
        draws = Predictive(problem.model, num_samples=10)(jax.random.PRNGKey(0), **problem.model_kwargs)
        return EngineResult(samples={k: np.asarray(draws[k]).reshape((2, 5) + draws[k].shape[1:])
                                     for k in latent}, info={"engine": self.name})


def _declaring(**caps):
    return type("Declared", (_PriorEngine,), caps)()


def _plugins(monkeypatch, **engines):
    fakes = [_FakeEntryPoint(name, eng) for name, eng in engines.items()]
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in fakes if group == ep.group])


def _frame(n=60, seed=0):
    import pandas as pd
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 4, n)
    x = rng.normal(size=n)
    return pd.DataFrame({"y": 1.0 + 0.5 * x + rng.normal(0, 0.3, 4)[g] + rng.normal(0, 0.5, n), "x": x,
                         "g": [f"g{i}" for i in g]})


SMALL = {"formula": "y ~ x + (1 | g)", "family": "gaussian"}


def test_checkpoint_goes_to_engines_that_declare_checkpoints(monkeypatch, tmp_path):
    import hbm
    from hbm.io.checkpoint import Checkpointer
    silent, saving = _PriorEngine(), _declaring(checkpoints=True)
    _plugins(monkeypatch, silent=silent, saving=saving)
    m = hbm.compile(SMALL, _frame())
    hbm.fit(m, engine="silent", samples=10, checkpoint=tmp_path / "a")
    hbm.fit(m, engine="saving", samples=10, checkpoint=tmp_path / "b")
    # the silent engine's fit() takes **kw, but it did not declare checkpoints: it gets none
    assert silent.given[0][1] == {}
    (ckpt,) = saving.given[0][1].values()
    assert isinstance(ckpt, Checkpointer) and ckpt.dir == tmp_path / "b"


def test_fit_result_kind_follows_the_declaration(monkeypatch):
    import hbm
    _plugins(monkeypatch, plain=_PriorEngine(), mcmc=_declaring(kind="sampler"), point=_declaring(kind="optimizer"))
    m = hbm.compile(SMALL, _frame())
    plain, mcmc, point = (hbm.fit(m, engine=e, samples=10) for e in ("plain", "mcmc", "point"))
    assert (plain.kind, mcmc.kind, point.kind) == ("variational", "sampler", "optimizer")
    # a sampler gets the sampler's verdict and R-hat / ESS columns; the others neither
    assert mcmc.diagnostics["kind"] == "sampler" and "r_hat" in mcmc.summary()
    assert plain.diagnostics is None and "r_hat" not in plain.summary() and "r_hat" not in point.summary()


def test_batch_size_needs_an_engine_that_declares_minibatches(monkeypatch, tmp_path, capsys):
    import hbm
    import yaml
    from hbm.cli.main import main
    batching = _declaring(minibatches=True)
    _plugins(monkeypatch, plain=_PriorEngine(), batching=batching)
    df = _frame()
    for engine in ("plain", "nuts", "laplace"):
        with pytest.raises(HbmError, match=re.escape(f"minibatches (batching, map, svi), not {engine}")):
            hbm.compile({**SMALL, "batch_size": 16, "inference": {"engine": engine}}, df)
    # the CLI says so and exits 2
    spec, data = tmp_path / "s.yaml", tmp_path / "d.csv"
    spec.write_text(yaml.safe_dump({**SMALL, "batch_size": 16, "inference": {"engine": "plain"}}))
    df.to_csv(data, index=False)
    assert main(["fit", str(spec), str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "minibatches (batching, map, svi), not plain" in capsys.readouterr().err
    # an engine that declares minibatches is given the stream in FitProblem.batches
    m = hbm.compile({**SMALL, "batch_size": 16, "inference": {"engine": "batching"}}, df)
    hbm.fit(m, samples=10)
    problem = batching.given[0][0]
    assert problem.batches is m.batches and problem.batches.batch_size == 16
    # and one fitted without batch_size gets none
    hbm.fit(hbm.compile({**SMALL, "inference": {"engine": "batching"}}, df), samples=10)
    assert batching.given[1][0].batches is None
    # hbm.fit(engine=...) on a minibatch model checks the engine it is given too
    with pytest.raises(HbmError, match="not plain"):
        hbm.fit(m, engine="plain")


def test_a_bad_declaration_is_refused_at_loading(monkeypatch):
    _plugins(monkeypatch, odd=_declaring(kind="exact"), flag=_declaring(checkpoints="yes"))
    with pytest.raises(HbmError, match="engine 'odd' .* declares a bad capability: kind must be one of"):
        get_engine("odd")
    with pytest.raises(HbmError, match="checkpoints must be True or False"):
        get_engine("flag")
    # and an engine that declares nothing loads, with the defaults
    from hbm.engines import Capabilities, capabilities
    assert capabilities(_PriorEngine()) == Capabilities("variational", False, False)
