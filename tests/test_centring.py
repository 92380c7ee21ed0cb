"""Group-level sites are drawn centred where the data pin their levels (hbm.lowering.centring)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

from hbm.lowering.centring import CENTRE_RATIO, centred_sites, precision_ratio
from hbm.pipeline.compiled import compile_table
from hbm.spec import load_spec

RNG = np.random.default_rng(11)


def _crossed() -> pd.DataFrame:
    """g: 30 levels of 20 rows with sd 3 (data-rich); h: 150 levels of 4 rows with sd 0.05."""
    g = np.repeat(np.arange(30), 20)
    h = RNG.permutation(np.repeat(np.arange(150), 4))
    x = RNG.normal(50, 10, g.size)            # an uncentred slope: the intercepts are sheared by it
    y = 2 + 0.1 * x + RNG.normal(0, 3, 30)[g] + RNG.normal(0, 0.05, 150)[h] + RNG.normal(0, 1, g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g], "h": [f"h{i}" for i in h]})


def _compile(formula: str, df, family="normal", noncentered=True):
    return compile_table(load_spec({"name": "c", "formula": formula, "family": family}), df,
                         noncentered=noncentered)


def _trace(model, seed=0):
    return handlers.trace(handlers.seed(model.numpyro_model, seed)).get_trace(**model.data)


def test_ratio_is_data_precision_over_prior_precision():
    # 40 levels of 25 rows, tau 2, sigma 1: the ratio is about 25 * 4 / 1 = 100 in every level
    codes = np.repeat(np.arange(40), 25)
    e = RNG.normal(0, 2, 40)[codes] + RNG.normal(0, 1, codes.size)
    ratio, shrunk = precision_ratio(e, np.ones_like(e), np.ones_like(e), codes, 40)
    assert 50 < np.median(ratio) < 200
    assert np.all(np.abs(shrunk) <= np.abs(np.bincount(codes, e) / 25) + 1e-12)


def test_data_rich_levels_are_centred_and_the_others_not():
    model = _compile("y ~ x + (1 | g) + (1 | h)", _crossed())
    assert model.ir.centred == ("r(1 | g)",)
    tr = _trace(model)
    assert "r(1 | h)_decentered" in tr and "r(1 | g)_decentered" not in tr
    assert "centred where the data pin the levels: r(1 | g)" in model.describe()


def test_a_model_centred_everywhere_by_the_data_equals_the_centred_model():
    df = _crossed()
    auto = _compile("y ~ x + (1 | g)", df)
    assert auto.ir.centred == ("r(1 | g)",)
    centred = _compile("y ~ x + (1 | g)", df, noncentered=False)
    tr_a, tr_c = _trace(auto, 3), _trace(centred, 3)
    latent = {k: v["value"] for k, v in tr_c.items() if v["type"] == "sample" and not v["is_observed"]}
    assert set(latent) == {k for k, v in tr_a.items() if v["type"] == "sample" and not v["is_observed"]}
    lp_a = log_density(auto.numpyro_model, (), auto.data, latent)[0]
    lp_c = log_density(centred.numpyro_model, (), centred.data, latent)[0]
    np.testing.assert_allclose(float(lp_a), float(lp_c), rtol=1e-6)


@pytest.mark.parametrize("family", ["poisson", "gamma"])
def test_counts_use_their_fisher_weights_and_other_families_stay_non_centred(family):
    g = np.repeat(np.arange(20), 30)
    mu = np.exp(3 + RNG.normal(0, 1, 20)[g])           # ~600 counts a level: pinned
    df = pd.DataFrame({"y": RNG.poisson(mu) + (family == "gamma"), "g": [f"g{i}" for i in g]})
    model = _compile("y ~ 1 + (1 | g)", df, family=family)
    assert model.ir.centred == (("r(1 | g)",) if family == "poisson" else ())


def test_the_threshold_is_the_documented_one():
    assert CENTRE_RATIO == pytest.approx(2.0)
    df = _crossed()
    from hbm.data.table import TableInfo
    from hbm.frontend.parse import parse_formula
    from hbm.resolve.linear import resolve
    f = parse_formula("y ~ x + (1 | g) + (1 | h)")
    info = TableInfo(df, f.source)
    assert centred_sites(resolve(f, info, family="normal", noncentered=False), info) == ()
