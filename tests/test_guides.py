"""Variational guides (hbm/engines/guides.py): the structured guide's algebra, its layout, and every guide
run through hbm.fit on a hierarchical model."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import hbm
from hbm.errors import HbmError
from hbm.engines.guides import GUIDES, AutoHierarchicalNormal, BlockArrowAffine, _scaled_unit_tril, guide_factory, plan_layout
from hbm.spec import load_spec


# ------------------------------------------------------------------ the transform

def _random_arrow(seed=0, G=2, blocks=((3, 2), (2, 1)), nest=True):
    """A random transform; block 1's levels nested in block 0's (levels 0 and 2) when ``nest``."""
    rng = np.random.default_rng(seed)
    D = G + sum(n * k for n, k in blocks)
    g_tril = _scaled_unit_tril(jnp.asarray(rng.uniform(0.5, 2, G)), jnp.asarray(rng.normal(size=(G, G))))
    couplings, trils = [], []
    for n, k in blocks:
        couplings.append(jnp.asarray(rng.normal(size=(n, k, G))))
        trils.append(_scaled_unit_tril(jnp.asarray(rng.uniform(0.5, 2, (n, k))),
                                       jnp.asarray(rng.normal(size=(n, k, k)))))
    perm = rng.permutation(D).astype(np.int32)
    loc = jnp.asarray(rng.normal(size=D))
    nests = ([(1, 0)], [jnp.asarray([0, 2])], [jnp.asarray(rng.normal(size=(2, 1, 2)))]) if nest else ()
    return BlockArrowAffine(loc, g_tril, couplings, trils, jnp.asarray(perm),
                            jnp.asarray(np.argsort(perm).astype(np.int32)), *nests), D


def _dense_factor(t: BlockArrowAffine, D: int) -> np.ndarray:
    """The D x D matrix M with y = loc + M x, built column by column."""
    eye = jnp.eye(D)
    return np.asarray(jax.vmap(lambda e: t(e) - t.loc)(eye)).T


def test_block_arrow_inverse_and_log_det_match_the_dense_matrix():
    t, D = _random_arrow()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(7, D)))
    y = jax.jit(t.__call__)(x)
    assert y.shape == (7, D)
    np.testing.assert_allclose(jax.jit(t._inverse)(y), x, rtol=1e-4, atol=1e-4)
    M = _dense_factor(t, D)
    sign, logdet = np.linalg.slogdet(M)
    assert sign != 0
    np.testing.assert_allclose(t.log_abs_det_jacobian(x, y), np.full(7, logdet), rtol=1e-4)


def test_block_arrow_marginal_sds_match_the_dense_covariance():
    t, D = _random_arrow(seed=5)
    M = _dense_factor(t, D)
    guide = AutoHierarchicalNormal.__new__(AutoHierarchicalNormal)
    guide.get_transform = lambda params: t
    guide._perm_inv = np.asarray(t.perm_inv)
    np.testing.assert_allclose(guide._marginal_sd({}), np.sqrt(np.diag(M @ M.T)), rtol=1e-5)


def test_block_arrow_distribution_is_the_gaussian_with_that_factor():
    t, D = _random_arrow(seed=3)
    q = dist.TransformedDistribution(dist.Normal(jnp.zeros(D), 1).to_event(1), t)
    M = _dense_factor(t, D)
    mvn = dist.MultivariateNormal(t.loc, covariance_matrix=jnp.asarray(M @ M.T))
    z = jax.jit(lambda k: q.sample(k, (5,)))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(jax.jit(q.log_prob)(z), mvn.log_prob(z), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ layout

def test_layout_promotes_a_small_upper_plate_and_demotes_a_huge_global_site():
    sites = [("mu", (), -1, []),
             ("sd", (), -1, []),
             ("cat", (4,), 0, [("category", 4)]),
             ("prod_a", (40,), 0, [("product", 40)]),
             ("prod_b", (40, 2), 0, [("product", 40)]),
             ("big", (100,), -1, [])]
    lay = plan_layout(sites, global_max=16, promote_max=8)
    # mu, sd and the 4 category values are population-level; 'big' gets its own blocks
    assert sorted(lay.glob.tolist()) == [0, 1, 2, 3, 4, 5]
    blocks = dict(lay.blocks)
    assert blocks["big"].shape == (100, 1)
    assert blocks["product"].shape == (40, 3)           # prod_a and prod_b's two columns per level
    assert blocks["product"][0].tolist() == [6, 46, 47]
    assert np.array_equal(np.sort(lay.perm), np.arange(6 + 40 + 80 + 100))


def test_layout_promotes_a_crossed_plate_beside_the_largest():
    """A category x period factor crossed with products (more levels than products, fewer values)
    joins the population block, so every product's block is coupled to it; products stay blocks."""
    sites = [("mu", (), -1, []),
             ("cat", (4,), 0, [("category", 4)]),
             ("cell", (40,), 0, [("category:period", 40)]),
             ("prod", (32, 2), 0, [("product", 32)])]
    lay = plan_layout(sites)
    assert sorted(lay.glob.tolist()) == list(range(45))
    assert dict(lay.blocks)["product"].shape == (32, 2)
    lay = plan_layout(sites, promote_max=32)                  # too many values to promote
    assert dict(lay.blocks)["category:period"].shape == (40, 1)


def test_layout_keeps_the_only_plate_as_blocks():
    lay = plan_layout([("mu", (), -1, []), ("z", (24, 2), 0, [("subject", 24)])])
    assert lay.glob.tolist() == [0] and dict(lay.blocks)["subject"].shape == (24, 2)


# ------------------------------------------------------------------ through hbm.fit

SPEC = {
    "name": "guides_small",
    "formula": "y ~ x + (1 | g)",
    "family": "normal",
    "priors": {"Intercept": "normal(0, 5)", "x": "normal(0, 5)", "sd(1 | g)": "half_normal(2)",
               "sigma": "half_normal(2)"},
    "simulate": {"rows": 80, "seed": 3, "columns": {"g": {"levels": 10}, "x": "normal(0, 1)"},
                 "params": {"Intercept": 1.0, "x": 0.5, "sd(1 | g)": 1.0, "sigma": 0.3}},
}


@pytest.fixture(scope="module")
def small_model():
    from hbm.pipeline.simulate import simulate
    spec = load_spec(SPEC)
    df, truth = simulate(spec)
    return hbm.compile(spec, df), truth


FIT_GUIDES = [g for g in GUIDES if g != "delta"]


@pytest.fixture(scope="module")
def guide_fits(small_model):
    model, _ = small_model
    opt = hbm.spec.parse_call("adam(lr=0.03)")
    return {g: hbm.fit(model, engine="svi", guide=g, steps=1000, tolerance=0.0, draws=300, optimizer=opt)
            for g in FIT_GUIDES}


@pytest.mark.parametrize("guide", FIT_GUIDES)
def test_each_guide_fits_a_hierarchical_model(small_model, guide_fits, guide):
    model, truth = small_model
    r = guide_fits[guide]
    s = r.summary()
    assert r.engine.info["guide"] == guide
    assert {f"Intercept[g={lvl}]" for lvl in model.encoding.labels["g"]} <= set(s.index)
    assert np.isfinite(s[["mean", "sd", "q5", "q95"]].to_numpy()).all()
    assert (s.loc[["sd(1 | g)", "sigma"], "mean"] > 0).all()
    assert abs(s.loc["Intercept", "mean"] - truth["Intercept"]) < 1.0
    # every variational fit carries the PSIS diagnostics
    assert np.isfinite(r.diagnostics["pareto_k"]) and 0 < r.diagnostics["ess"] <= 300
    assert "pareto_k" in s.columns and "psis_ess" in s.columns


def test_structured_guide_keeps_population_uncertainty(guide_fits):
    """Mean field shrinks the population intercept's sd; the structured and dense guides do not."""
    sd = {g: r.summary().loc["Intercept", "sd"] for g, r in guide_fits.items()}
    assert sd["structured"] > 1.5 * sd["normal"], sd
    assert sd["mvn"] > 1.5 * sd["normal"], sd


def test_delta_guide_has_no_weights(small_model):
    model, _ = small_model
    r = hbm.fit(model, engine="svi", guide="delta", steps=100, draws=2)
    assert r.diagnostics is None and "pareto_k" not in r.summary().columns


def test_structured_guide_layout_on_a_compiled_model(small_model):
    from numpyro import handlers
    from numpyro.infer.initialization import init_to_feasible
    model, _ = small_model
    guide = AutoHierarchicalNormal(model.numpyro_model, init_loc_fn=init_to_feasible)
    jax.eval_shape(lambda: (handlers.seed(guide, 0)(**model.data), 0)[1])   # set up, nothing computed
    blocks = dict(guide.layout.blocks)
    assert blocks["g"].shape == (10, 1)          # each group's intercept
    assert guide.n_global == 4                   # Intercept, x, the sd, sigma


def test_structured_guide_median_and_quantiles():
    from numpyro import handlers

    def model():
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        s = numpyro.sample("s", dist.HalfNormal(1))
        with numpyro.plate("g", 3):
            numpyro.sample("z", dist.Normal(mu, s))

    guide = AutoHierarchicalNormal(model)

    @jax.jit
    def run():
        tr = handlers.trace(handlers.seed(guide, 0)).get_trace()
        params = {k: v["value"] for k, v in tr.items() if v["type"] == "param"}
        return guide.quantiles(params, [0.05, 0.5, 0.95]), guide.median(params)

    q, med = run()
    assert guide.n_global == 2 and dict(guide.layout.blocks)["g"].shape == (3, 1)
    assert q["s"].shape == (3,) and q["z"].shape == (3, 3) and bool(jnp.all(q["z"][0] < q["z"][2]))
    np.testing.assert_allclose(med["s"], q["s"][1], rtol=1e-4)


def test_guide_names_are_checked():
    with pytest.raises(HbmError, match="unknown guide"):
        guide_factory("strucured")
    with pytest.raises(HbmError) as e:
        load_spec({"formula": "y ~ x", "inference": {"engine": "svi", "guide": "structure"}})
    assert "structured" in str(e.value.render())
    assert load_spec({"formula": "y ~ x", "inference": {"engine": "svi", "guide": "structured", "correct": "psis"}}) \
        .inference.correct == "psis"
    with pytest.raises(HbmError):
        load_spec({"formula": "y ~ x", "inference": {"correct": "is"}})


def test_mvn_refuses_a_large_latent_space(monkeypatch):
    import hbm.engines.guides as G
    monkeypatch.setattr(G, "MVN_MAX", 3)

    def model():
        numpyro.sample("z", dist.Normal(jnp.zeros(5), 1).to_event(1))

    guide = guide_factory("mvn")(model, numpyro.infer.init_to_median)
    with pytest.raises(HbmError, match="dense"):
        with numpyro.handlers.seed(rng_seed=0):
            guide()
