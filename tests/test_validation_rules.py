"""The validation suite's pass rules (benchmarks/validation/rules.py) on hand-built numbers."""
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.validation import rules  # noqa: E402
from benchmarks.validation.rules import FAST, SAMPLER  # noqa: E402


def test_rule_for_engines():
    assert rules.rule_for("nuts") is SAMPLER
    for e in ("svi", "map", "laplace", "some_plugin"):
        assert rules.rule_for(e) is FAST


# sampler: ref 0 +- 1, mcse_ref 0.01; fit ess 1000 -> mcse_fit 0.031623;
# allowance = 0.15 + 3 * hypot(0.01, 0.031623) = 0.249499
SAMPLER_ALLOW = 0.15 + 3 * math.hypot(0.01, 1 / math.sqrt(1000))


def test_sampler_mean_clause():
    ok = rules.check_element(0.249, 1.0, 1000, 0.0, 1.0, 0.01, SAMPLER)
    assert ok["passed"] and ok["reason"] == ""
    assert ok["mean_allow"] == pytest.approx(SAMPLER_ALLOW)
    assert ok["mean_err"] == pytest.approx(0.249)
    bad = rules.check_element(-0.25, 1.0, 1000, 0.0, 1.0, 0.01, SAMPLER)
    assert not bad["passed"] and not bad["mean_ok"] and bad["sd_ok"]
    assert "ref sd from" in bad["reason"]


def test_sampler_monte_carlo_allowance_uses_ess():
    # the same error of 1.0 ref sd passes with ESS 10 (mcse_fit 0.316) and fails with ESS 1000
    allow10 = 0.15 + 3 * math.hypot(0.01, 1 / math.sqrt(10))
    assert allow10 > 1.0
    assert rules.check_element(1.0, 1.0, 10, 0.0, 1.0, 0.01, SAMPLER)["passed"]
    assert not rules.check_element(1.0, 1.0, 1000, 0.0, 1.0, 0.01, SAMPLER)["passed"]
    # a large reference mcse widens it too
    assert rules.check_element(0.5, 1.0, 1e9, 0.0, 1.0, 0.2, SAMPLER)["passed"]


@pytest.mark.parametrize("sd, ok", [(0.79, False), (0.8, True), (1.0, True), (1.2, True), (1.21, False)])
def test_sampler_sd_clause(sd, ok):
    r = rules.check_element(0.0, sd, 1000, 0.0, 1.0, 0.01, SAMPLER)
    assert r["sd_ratio"] == pytest.approx(sd)
    assert r["sd_ok"] is ok and r["passed"] is ok and r["mean_ok"]
    if not ok:
        assert "sd ratio" in r["reason"]


# fast: ref 10 +- 2, mcse_ref 0.02; 1000 draws of sd 2 -> mcse_fit 0.063246;
# allowance = 0.5 * 2 + 3 * hypot(0.02, 0.063246) = 1.198997 (0.5995 ref sd)
FAST_ALLOW = 1.0 + 3 * math.hypot(0.02, 2 / math.sqrt(1000))


def test_fast_mean_clause():
    assert rules.check_element(10 + 1.19, 2.0, 1000, 10.0, 2.0, 0.02, FAST)["passed"]
    r = rules.check_element(10 - 1.21, 2.0, 1000, 10.0, 2.0, 0.02, FAST)
    assert not r["passed"] and not r["mean_ok"]
    assert r["mean_allow"] == pytest.approx(FAST_ALLOW / 2)
    # the sampler rule is tighter: the same fit fails it even at 0.3 ref sd off
    assert not rules.check_element(10.6, 2.0, 1000, 10.0, 2.0, 0.02, SAMPLER)["passed"]
    assert rules.check_element(10.6, 2.0, 1000, 10.0, 2.0, 0.02, FAST)["passed"]


@pytest.mark.parametrize("ratio, ok", [(0.49, False), (0.5, True), (0.7, True), (2.0, True), (2.01, False)])
def test_fast_sd_clause(ratio, ok):
    r = rules.check_element(10.0, 2.0 * ratio, 1000, 10.0, 2.0, 0.02, FAST)
    assert r["sd_ok"] is ok and r["passed"] is ok


def test_point_estimate_and_missing_ess():
    r = rules.check_element(10.1, float("nan"), 1, 10.0, 2.0, 0.02, FAST)   # MAP: one draw, no sd
    assert r["mean_ok"] and not r["sd_ok"] and not r["passed"]
    assert "no sd" in r["reason"]
    r = rules.check_element(0.0, 1.0, float("nan"), 0.0, 1.0, 0.01, SAMPLER)
    assert not r["passed"] and "effective sample size" in r["reason"]
    r = rules.check_element(float("inf"), 1.0, 1000, 0.0, 1.0, 0.01, SAMPLER)
    assert not r["passed"] and "not finite" in r["reason"]


def _ref(name, mean, sd, mcse, **extra):
    return {"hbm_name": name, "mean": mean, "sd": sd, "mcse_mean": mcse, "ess_bulk": (sd / mcse) ** 2, **extra}


def test_reference_stats_prefers_hbm_scale_and_falls_back_on_ess():
    p = _ref("b", 1.0, 0.5, 0.005, hbm_scale={"mean": 2.3, "sd": 1.15, "mcse_mean": 0.0115})
    assert rules.reference_stats(p) == {"mean": 2.3, "sd": 1.15, "mcse": 0.0115, "rescaled": True}
    q = {"hbm_name": "a", "mean": 0.0, "sd": 2.0, "ess_bulk": 400.0}
    assert rules.reference_stats(q)["mcse"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="sd > 0"):
        rules.reference_stats({"hbm_name": "c", "mean": 0.0, "sd": 0.0, "mcse_mean": 0.0})


def test_compare_and_case_summary():
    summary = pd.DataFrame({"mean": [0.05, 2.0, 5.0], "sd": [1.0, 1.3, 0.2], "ess_bulk": [1000.0, 1000.0, 800.0],
                            "r_hat": [1.001, 1.002, 1.0]},
                           index=pd.Index(["a", "b", "extra"], name="parameter"))
    ref = [_ref("a", 0.0, 1.0, 0.01), _ref("b", 2.0, 1.0, 0.01), _ref("c", 0.0, 1.0, 0.01)]
    table = rules.compare(summary, ref, SAMPLER)
    assert list(table.index) == ["a", "b", "c"]          # reference order; the fit's extra row ignored
    assert table.loc["a", "passed"]
    assert not table.loc["b", "passed"] and "sd ratio 1.3" in table.loc["b", "reason"]
    assert not table.loc["c", "passed"] and "missing from the fit" in table.loc["c", "reason"]
    s = rules.case_summary(table)
    assert s["n_elements"] == 3 and not s["passed"] and s["n_failed"] == 2
    assert s["worst_mean_element"] == "c" and s["worst_mean_err"] is None   # missing is the worst
    assert s["worst_sd_element"] == "c"
    assert set(s["failures"]) == {"b", "c"}
    # without c: b has the worst sd ratio (1.3) and a has the worst mean error (0.05)
    s2 = rules.case_summary(rules.compare(summary, ref[:2], SAMPLER))
    assert s2["worst_sd_element"] == "b" and s2["worst_sd_ratio"] == pytest.approx(1.3)
    assert s2["worst_mean_element"] == "a" and s2["worst_mean_err"] == pytest.approx(0.05)


def test_compare_fast_uses_draw_count_and_sampler_needs_ess():
    summary = pd.DataFrame({"mean": [0.55], "sd": [1.0]}, index=["a"])
    ref = [_ref("a", 0.0, 1.0, 0.01)]
    # 0.55 ref sd off: passes with 100 draws (allowance 0.5 + 3 hypot(0.01, 0.1) = 0.8015), fails with 1e6
    assert rules.compare(summary, ref, FAST, n_draws=100).loc["a", "passed"]
    assert not rules.compare(summary, ref, FAST, n_draws=10 ** 6).loc["a", "passed"]
    # the sampler rule without an ess_bulk column: a failure with its reason, not a pass
    t = rules.compare(pd.DataFrame({"mean": [0.0], "sd": [1.0]}, index=["a"]), ref, SAMPLER)
    assert not t.loc["a", "passed"] and "effective sample size" in t.loc["a", "reason"]


def test_sd_worst_is_symmetric_on_log_scale():
    summary = pd.DataFrame({"mean": [0.0, 0.0], "sd": [0.45, 2.1]}, index=["lo", "hi"])
    ref = [_ref("lo", 0.0, 1.0, 0.01), _ref("hi", 0.0, 1.0, 0.01)]
    s = rules.case_summary(rules.compare(summary, ref, FAST, n_draws=1000))
    assert s["worst_sd_element"] == "lo"      # |log 0.45| = 0.80 > |log 2.1| = 0.74


def test_crosstab():
    cases = [{"trusted": True, "passed": True}, {"trusted": True, "passed": False},
             {"trusted": False, "passed": False}, {"trusted": False, "passed": False},
             {"trusted": None, "passed": True}]
    assert rules.crosstab(cases) == {"trusted": {"pass": 1, "fail": 1}, "not trusted": {"pass": 0, "fail": 2},
                                     "no verdict": {"pass": 1, "fail": 0}}


def test_sampler_must_have_converged():
    """A stuck chain (R-hat 1.5, ESS 8) would pass the mean clause on its huge Monte Carlo allowance."""
    ref = [_ref("a", 0.0, 1.0, 0.01)]
    stuck = pd.DataFrame({"mean": [0.5], "sd": [1.0], "ess_bulk": [8.0], "r_hat": [1.5]}, index=["a"])
    t = rules.compare(stuck, ref, SAMPLER)
    assert t.loc["a", "mean_ok"] and t.loc["a", "sd_ok"] and not t.loc["a", "passed"]
    assert "R-hat 1.5 not below 1.01" in t.loc["a", "reason"] and "bulk ESS 8 below 400" in t.loc["a", "reason"]
    good = pd.DataFrame({"mean": [0.05], "sd": [1.0], "ess_bulk": [1500.0], "r_hat": [1.002]}, index=["a"])
    assert rules.compare(good, ref, SAMPLER).loc["a", "passed"]
    # no r_hat column (one chain): not converged by this rule
    one = pd.DataFrame({"mean": [0.05], "sd": [1.0], "ess_bulk": [1500.0]}, index=["a"])
    assert "R-hat" in rules.compare(one, ref, SAMPLER).loc["a", "reason"]
    # the fast rule has no gate
    assert rules.compare(good, ref, FAST, n_draws=1000).loc["a", "passed"]
