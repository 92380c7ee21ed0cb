"""``hbm compare`` (hbm/pipeline/compare.py) on two synthetic run directories with known summaries."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtri

from hbm.cli.main import main
from hbm.pipeline.compare import compare_summaries
from hbm.results.summary import OutputVar, Outputs, summarize, to_inference_data
from hbm.io.rundir import save_fit

DRAWS = 2000
# draws with sample mean exactly 0 and sd exactly 1: every summary below is known in advance
GRID = ndtri((np.arange(DRAWS) + 0.5) / DRAWS)
GRID = (GRID - GRID.mean()) / GRID.std(ddof=1)


def _draws(mean, sd):
    mean, sd = np.atleast_1d(mean).astype(float), np.atleast_1d(sd).astype(float)
    return (mean[None, :] + sd[None, :] * GRID[:, None])[None]   # (1, draws, k)


def _run(path, mu, sd_param, theta, extra=False, fingerprint="abc", engine="svi"):
    vars_ = [OutputVar("mu", (), _draws(*mu)[..., 0]),
             OutputVar("sd(1 | g)", (), _draws(*sd_param)[..., 0]),
             OutputVar("theta", ("g",), _draws(*theta))]
    if extra:
        vars_.append(OutputVar("sigma", (), _draws(1.0, 0.1)[..., 0]))
    outputs = Outputs(tuple(vars_), {"g": ["a", "b", "c"]}, frozenset({"g"}))
    info = {"engine": engine, "data": {"rows": 30, "fingerprint": fingerprint},
            "convergence": {"guide": "normal"} if engine == "svi" else {}}
    spec = {"name": "toy", "formula": "y ~ 1 + (1 | g)", "inference": {"engine": engine}}
    return save_fit(path, to_inference_data(outputs), summarize(outputs, "variational"), spec, info)


@pytest.fixture
def runs(tmp_path):
    a = _run(tmp_path / "svi", (0.5, 2.0), (1.0, 0.06), ([0.0, 1.0, -2.0], [1.0, 0.6, 0.25]), extra=True)
    b = _run(tmp_path / "nuts", (0.0, 1.0), (1.0, 0.1), ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]), engine="nuts")
    return a, b


def test_compare_table_numbers(runs):
    from hbm.pipeline.compare import compare_runs
    cmp = compare_runs(*runs)
    t = cmp.table
    assert list(t.index) == ["mu", "sd(1 | g)", "theta[g=a]", "theta[g=b]", "theta[g=c]"]
    np.testing.assert_allclose(t["shift"], [0.5, 0.0, 0.0, 1.0, -2.0], atol=1e-6)
    np.testing.assert_allclose(t["width_ratio"], [2.0, 0.6, 1.0, 0.6, 0.25], rtol=1e-6)
    np.testing.assert_allclose(t["sd_ratio"], [2.0, 0.6, 1.0, 0.6, 0.25], rtol=1e-6)
    assert t.loc["theta[g=b]", "variable"] == "theta[g]"
    assert cmp.only_a == ["sigma"] and cmp.only_b == []
    s = cmp.summary()
    assert s["parameters"] == 5 and s["shift_max"] == pytest.approx(2.0) and s["shift_max_at"] == "theta[g=c]"
    assert s["shift_median"] == pytest.approx(0.5) and s["width_median"] == pytest.approx(0.6)
    assert s["shift_over_1"] == 1 and s["width_under_half"] == 1


def test_hbm_compare_prints_the_table_and_writes_files_without_overwriting(runs, capsys):
    a, b = runs
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    mu = next(line for line in out.splitlines() if line.startswith("mu "))
    assert mu.split()[-2:] == ["+0.50", "2.00"]
    sd = next(line for line in out.splitlines() if line.startswith("sd(1 | g)"))
    assert sd.split()[-2:] == ["+0.00", "0.60"]
    theta = next(line for line in out.splitlines() if line.startswith("theta[g] (3 values)"))
    assert "|1.00| max 2.00" in theta and "0.60 min 0.25" in theta
    assert "5 parameters compared" in out and "median 0.50, max 2.00 at theta[g=c], 1 beyond 1 sd" in out
    assert "90% width ratio A/B: median 0.60" in out
    assert "parameters only in svi (svi, normal): 1" in out
    # a new directory beside the runs; the finished runs are not touched
    first_dir = a.parent / "compare-svi-vs-nuts"
    assert sorted(p.name for p in first_dir.iterdir()) == ["compare.csv", "compare.png"]
    assert (first_dir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(a.glob("compare*")) and not list(b.glob("compare*"))
    first = (first_dir / "compare.png").read_bytes()
    assert main(["compare", str(a), str(b)]) == 0          # a second comparison: a new directory
    assert sorted(p.name for p in (a.parent / "compare-svi-vs-nuts-2").iterdir()) == ["compare.csv", "compare.png"]
    assert (first_dir / "compare.png").read_bytes() == first
    assert not [p for p in a.parent.iterdir() if p.name.startswith(".")]   # no temporary siblings
    import pandas as pd
    csv = pd.read_csv(first_dir / "compare.csv", index_col="parameter")
    assert csv.loc["theta[g=c]", "shift"] == pytest.approx(-2.0)


def test_hbm_compare_out_dir_and_warnings(runs, tmp_path, capsys):
    a, _ = runs
    other = _run(tmp_path / "other", (0.0, 1.0), (1.0, 0.1), ([0.0] * 3, [1.0] * 3), fingerprint="zzz")
    assert main(["compare", str(a), str(other), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "different data" in out
    assert (tmp_path / "cmp" / "compare.png").exists() and not list(a.glob("compare*"))
    # an earlier comparison, a finished run, or a place inside one: refused before any work
    for bad, words in ((tmp_path / "cmp", "is not empty"), (a, "is not empty"),
                       (a / "cmp", "inside the run directory")):
        assert main(["compare", str(a), str(other), "--out", str(bad)]) == 2
        assert words in capsys.readouterr().err
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in other.iterdir())


def test_hbm_compare_bad_input(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_compare_summaries_skips_fixed_parameters():
    import pandas as pd
    a = pd.DataFrame({"mean": [1.0, 0.5], "sd": [0.1, 0.0], "q5": [0.8, 0.5], "q95": [1.2, 0.5]},
                     index=["x", "fixed"])
    b = pd.DataFrame({"mean": [1.1, 0.5], "sd": [0.2, 0.0], "q5": [0.7, 0.5], "q95": [1.5, 0.5]},
                     index=["x", "fixed"])
    t = compare_summaries(a, b).table
    assert t.loc["x", "shift"] == pytest.approx(-0.5) and t.loc["x", "width_ratio"] == pytest.approx(0.5)
    assert np.isnan(t.loc["fixed", "shift"]) and np.isnan(t.loc["fixed", "width_ratio"])
