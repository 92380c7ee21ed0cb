"""The whitened population block (hbm.lowering.whiten) is an exact change of coordinates.

The compiled model's log joint at a latent ``w`` equals the log joint of the same model with
one sample site per coefficient at ``x = B_inv w + c``, plus ``log |det B_inv|`` (the
Jacobian of the linear map); prior draws of the block are draws of the user's priors.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro.infer.util import log_density

from hbm.pipeline.compiled import compile_table
from hbm.spec import load_spec
from hbm.lowering.whiten import SITE, WhitenedPrior, block_members

RNG = np.random.default_rng(3)
N = 300
DF = pd.DataFrame({
    "iq": RNG.normal(100, 15, N),                      # far from 0: an intercept-slope ridge
    "hs": RNG.integers(0, 2, N).astype(float),
    "year": RNG.normal(2000, 10, N),
    "g": RNG.choice(list("abcdef"), N),
    "f": RNG.choice(["lo", "mid", "hi"], N),
    "cnt": RNG.poisson(3.0, N),
})
DF["y"] = 20 + 0.5 * DF.iq + 3 * DF.hs + RNG.normal(0, 5, N)

SPECS = {
    "interaction": ("y ~ hs * iq + factor(f) + (1 | g)", "normal",
                    {"Intercept": "normal(0, 100)", "hs": "normal(0, 10)", "iq": "student_t(3, 0, 2)",
                     "hs:iq": "normal(0, 1)", "factor(f)": "normal(1, 2)", "sd(1 | g)": "half_normal(5)",
                     "sigma": "half_normal(10)"}),
    "no_intercept": ("y ~ 0 + iq + year", "normal",
                     {"iq": "normal(0, 5)", "year": "normal(0, 1)", "sigma": "half_normal(10)"}),
    "fixed_coefficient": ("y ~ iq + hs", "normal",
                          {"Intercept": "normal(0, 100)", "iq": "normal(0, 1)", "hs": 3.0,
                           "sigma": "half_normal(10)"}),
    "poisson_chain": ("log(cnt) ~ iq | g + 1 | g", "poisson",
                      {"Intercept": "normal(1, 2)", "iq": "normal(0, 0.1)", "sd(iq | g)": "half_normal(0.05)",
                       "sd(1 | g)": "half_normal(1)"}),
    "uncorrelated_blocks": ("y ~ iq + (1 + iq || g)", "normal",
                            {"Intercept": "normal(0, 100)", "iq": "normal(0, 1)", "sd(1 | g)": "half_normal(5)",
                             "sd(iq | g)": "half_normal(0.5)", "sigma": "half_normal(10)"}),
}


def _compiled(case: str, whiten: bool):
    formula, family, priors = SPECS[case]
    spec = load_spec({"name": case, "formula": formula, "family": family, "priors": priors})
    return compile_table(spec, DF, noncentered=False, whiten=whiten)


def _latent_draw(model, seed: int) -> tuple[dict, dict]:
    """A prior draw: the latent sites, and every site's value (deterministic ones too)."""
    from numpyro import handlers
    tr = handlers.trace(handlers.seed(model.numpyro_model, seed)).get_trace(
        model.rows, model.consts, mode="latent")
    latent = {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
    return latent, {k: v["value"] for k, v in tr.items() if v["type"] in ("sample", "deterministic")}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_log_joint_equals_the_unwhitened_model(case):
    white, plain = _compiled(case, True), _compiled(case, False)
    consts = white.consts.whiten
    B_inv, c = np.asarray(consts["B_inv"], np.float64), np.asarray(consts["c"], np.float64)
    members = block_members(white.ir)
    for seed in range(3):
        params, every = _latent_draw(white, seed)
        w = np.asarray(params[SITE], np.float64)
        x = B_inv @ w + c
        plain_latent, _ = _latent_draw(plain, seed)
        plain_params = {k: every[k] for k in plain_latent if k in every}
        for t in plain.ir.population:
            idx = [k for k, m in enumerate(members) if m.term == t.name]
            if idx:
                plain_params[t.name] = jnp.asarray(x[idx] if t.is_vector else x[idx[0]], jnp.float32)
        lp_white, _ = log_density(white.numpyro_model, (white.rows, white.consts), {}, params)
        lp_plain, _ = log_density(plain.numpyro_model, (plain.rows, plain.consts), {}, plain_params)
        assert np.isfinite(float(lp_plain))
        np.testing.assert_allclose(float(lp_white), float(lp_plain) + float(consts["log_det"]),
                                   rtol=2e-5, atol=2e-2)


def test_uncentred_design_is_whitened():
    """The block's design (intercept column and X B_inv) has identity covariance on the rows."""
    white = _compiled("interaction", True)
    consts = white.consts.whiten
    X = np.asarray(white.rows.X, np.float64)
    B_inv = np.asarray(consts["B_inv"], np.float64)
    design = np.column_stack([np.ones(N), X]) @ B_inv          # eta's population part per unit of w
    s = B_inv[0, 0]
    cov = np.cov(design[:, 1:].T, bias=True) / s ** 2
    np.testing.assert_allclose(cov, np.eye(cov.shape[0]), atol=1e-3)
    np.testing.assert_allclose(design[:, 1:].mean(axis=0), 0.0, atol=1e-3 * s)


def test_prior_draws_are_the_users_priors():
    white = _compiled("interaction", True)
    consts = white.consts.whiten
    members = block_members(white.ir)
    from hbm.lowering.whiten import prior_runs
    d = WhitenedPrior(prior_runs(members), consts["B_inv"], consts["c"], consts["log_det"])
    w = d.sample(jax.random.PRNGKey(0), (20000,))
    x = np.asarray(w @ consts["B_inv"].T + consts["c"], np.float64)
    names = [m.term for m in members]
    # Intercept normal(0, 100); hs normal(0, 10); factor(f) levels normal(1, 2): mean and sd within 4 MC errors
    for term, (mu, sd) in {"Intercept": (0, 100), "hs": (0, 10), "factor(f)": (1, 2)}.items():
        for k in [i for i, n in enumerate(names) if n == term]:
            assert abs(x[:, k].mean() - mu) < 4 * sd / np.sqrt(len(x)), term
            assert abs(x[:, k].std() / sd - 1) < 4 / np.sqrt(2 * len(x)) + 1e-3, term
    # student_t(3, 0, 2) for iq: its median and quartiles
    k = names.index("iq")
    from scipy import stats
    q = np.quantile(x[:, k], [0.25, 0.5, 0.75])
    np.testing.assert_allclose(q, stats.t(3, 0, 2).ppf([0.25, 0.5, 0.75]), atol=0.06)


def test_sheared_intercepts():
    """A varying intercept beside varying slopes is drawn sheared (``hbm.lowering.whiten.shear_plan``)."""
    from hbm.lowering.whiten import shear_plan
    white = _compiled("poisson_chain", True)
    plan = shear_plan(white.ir)
    assert list(plan) == ["g"] and plan["g"].intercept == "Intercept[g]"
    means = np.asarray(white.consts.shear["g"])
    expect = DF.groupby("g")["iq"].mean().to_numpy()       # levels in sorted order
    np.testing.assert_allclose(means[:, 0], expect, rtol=1e-5)
    params, _ = _latent_draw(white, 0)
    assert "Intercept[g]~" in params and "Intercept[g]" not in params


def test_chain_tops_join_the_block_and_fixed_coefficients_stay_out():
    assert [m.term for m in block_members(_compiled("poisson_chain", True).ir)] == ["Intercept", "iq"]
    assert [m.term for m in block_members(_compiled("fixed_coefficient", True).ir)] == ["Intercept", "iq"]
