"""A NUTS run that is not trustworthy is run again, more carefully (hbm.pipeline.fit.sampler_retry)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from hbm.pipeline.fit import RETRY_ACCEPT, sampler_retry
from hbm.spec import InferenceSpec as Inference


def _fitted(diag, **settings):
    return SimpleNamespace(config=Inference(engine="nuts", **settings), diagnostics=diag)


GOOD = {"trustworthy": True, "divergences": 0, "max_r_hat": 1.002, "min_ess_bulk": 900, "min_ess_tail": 800}


def test_a_trustworthy_run_stands():
    assert sampler_retry(_fitted(GOOD)) is None


def test_divergences_raise_the_target_acceptance_and_the_length():
    config, why = sampler_retry(_fitted({**GOOD, "trustworthy": False, "divergences": 12}, target_accept=0.9))
    assert config.target_accept == RETRY_ACCEPT and (config.warmup, config.samples) == (2000, 2000)
    assert why == "12 divergences at target_accept 0.9"


def test_slow_mixing_doubles_the_run_and_keeps_the_step_target():
    config, why = sampler_retry(_fitted({**GOOD, "trustworthy": False, "max_r_hat": 1.02, "min_ess_tail": 250}))
    assert config.target_accept == 0.8 and (config.warmup, config.samples) == (2000, 2000)
    assert why == "R-hat 1.020, smallest ESS 250"


@pytest.mark.parametrize("settings", [{"samples": 300}, {"options": (("retry", False),)}])
def test_short_runs_and_retry_false_are_not_run_again(settings):
    bad = {**GOOD, "trustworthy": False, "divergences": 3, "max_r_hat": 1.05}
    assert sampler_retry(_fitted(bad, **settings)) is None


def test_a_second_retry_doubles_the_draws_again_but_not_the_warmup():
    slow = {**GOOD, "trustworthy": False, "max_r_hat": 1.015}
    config, _ = sampler_retry(_fitted(slow, warmup=2000, samples=2000, target_accept=0.99), 2)
    assert (config.warmup, config.samples, config.target_accept) == (2000, 4000, 0.99)
