"""The subset check: the fit's engine against NUTS on whole groups of a subset (hbm.pipeline.subset_check)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hbm
from hbm.pipeline.subset_check import check_on_subset, compare_summaries, subset_rows

RNG = np.random.default_rng(5)
G = np.repeat(np.arange(40), 25)
DF = pd.DataFrame({"g": [f"g{i}" for i in G], "x": RNG.normal(size=G.size)})
DF["y"] = 1 + 0.5 * DF.x + RNG.normal(0, 0.7, 40)[G] + RNG.normal(0, 1, G.size)
SMALL = DF[DF.g.isin([f"g{i}" for i in range(8)])].reset_index(drop=True)    # 8 levels, 200 rows
SPEC = {"name": "s", "formula": "y ~ x + (1 | g)", "family": "normal",
        "inference": {"engine": "svi", "steps": 3000, "draws": 400}}


def test_subsets_are_whole_levels_of_the_largest_grouping():
    model = hbm.compile(SPEC, DF)
    rows, what = subset_rows(model, DF, seed=1, max_rows=200)
    picked = DF.iloc[rows]
    assert 200 <= len(picked) < 200 + 25 and len(picked) % 25 == 0      # whole levels of 25 rows
    assert (DF[DF.g.isin(picked.g.unique())].index == picked.index).all()
    assert what == f"{picked.g.nunique()} of 40 levels of g ({len(picked)} of 1,000 rows)"
    rows, what = subset_rows(model, DF, max_rows=5000)
    assert len(rows) == 1000 and what == "all 1,000 rows"


def test_the_rule_is_the_suites_fast_rule():
    exact = pd.DataFrame({"mean": [0.0, 1.0], "sd": [1.0, 0.5]}, index=["a", "b"])
    ok, _, problems = compare_summaries(pd.DataFrame({"mean": [0.45, 1.2], "sd": [0.6, 0.9]}, index=["a", "b"]), exact)
    assert ok and not problems
    ok, worst, problems = compare_summaries(pd.DataFrame({"mean": [0.0, 1.3], "sd": [1.0, 0.2]}, index=["a", "b"]),
                                            exact)
    assert not ok and problems == ["b (mean 0.60 sd off, sd ratio 0.40)"] and worst.startswith("b: mean 0.60")


@pytest.mark.parametrize("steps, trusted", [(20000, True), (30, False)])
def test_a_good_fit_is_trusted_and_a_bad_one_is_not(steps, trusted):
    spec = {**SPEC, "inference": {**SPEC["inference"], "steps": steps}}
    fitted = hbm.fit(hbm.compile(spec, SMALL))
    check = check_on_subset(fitted, SMALL, max_rows=100)
    assert check["trustworthy"] is trusted and check["nuts_trustworthy"]
    assert check["verdict"].startswith("Checked against NUTS on a subset (4 of 8 levels of g (100 of 200 rows)")
    assert ("trustworthy." if trusted else "NOT trustworthy: svi differs from NUTS") in check["verdict"]
    khat = fitted.diagnostics["trustworthy"]
    assert check["overall_trustworthy"] is (trusted and khat)
    assert check["overall"].startswith("Overall: trustworthy" if trusted and khat else "Overall: NOT trustworthy (")


def test_hbm_fit_check_subset_prints_and_records_the_verdict(tmp_path):
    import json
    import subprocess
    import sys

    import yaml
    SMALL.to_csv(tmp_path / "d.csv", index=False)
    spec = {**SPEC, "inference": {**SPEC["inference"], "steps": 30}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "-m", "hbm.cli", "fit", "s.yaml", "d.csv", "--out", "run", "--quiet",
                        "--check-subset"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Checked against NUTS on a subset (all 200 rows)" in r.stdout and "NOT trustworthy" in r.stdout
    assert "Overall: NOT trustworthy (" in r.stdout
    info = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert info["diagnostics"]["subset_check"]["trustworthy"] is False
