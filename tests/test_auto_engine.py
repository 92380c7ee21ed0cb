"""``engine: auto`` picks NUTS where it is affordable and SVI beyond (hbm.pipeline.fit.choose_engine)."""
from __future__ import annotations

import pytest

import hbm
from hbm.pipeline.fit import AUTO_MAX_LATENT, AUTO_MAX_ROWS, choose_engine, latent_size


def _model(rows: int, plates: int):
    return hbm.compile({"name": "auto", "formula": "y ~ 1 + (1 | plate)", "family": "normal",
                        "simulate": {"rows": rows, "seed": 1, "columns": {"plate": {"levels": plates}},
                                     "params": {"Intercept": 1.0, "sd(1 | plate)": 0.5, "sigma": 1.0}}})


@pytest.mark.parametrize("rows, plates, engine", [
    (AUTO_MAX_ROWS, 30, "nuts"),                 # at the row bound
    (AUTO_MAX_ROWS + 1, 30, "svi"),              # one row beyond it
    (2 * AUTO_MAX_LATENT, AUTO_MAX_LATENT, "svi"),   # few rows but too many latent values
])
def test_the_bounds(rows, plates, engine):
    model = _model(rows, plates)
    name, why = choose_engine(model)
    assert name == engine
    assert f"{rows:,} rows" in why and f"{latent_size(model):,} latent values" in why
