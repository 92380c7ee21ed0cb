"""What a user sees and what a run records (issue #13, items 5-8): NUTS's progress per block and its
warnings read through a pseudo-terminal, a run's spec.yaml that refits to the same model, ``hbm show``'s
priors and data, observed_data named after the response, a formula where a spec goes, ``--version``,
no JAX for ``--help`` and ``show``, wrapped verdicts, Python argument names in Python errors."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", COLUMNS="100")
EIGHT = pd.DataFrame({"y": [28.0, 8, -3, 7, -1, 1, 18, 12], "s": [15.0, 10, 16, 11, 9, 11, 10, 18],
                      "school": list("abcdefgh")})


def hbm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hbm.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=ENV, timeout=600)


def through_pty(*args, timeout=300) -> str:
    """``hbm ARGS`` with stdout and stderr on a pseudo-terminal: everything it wrote, \\r included."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hbm.cli", *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, env=ENV, cwd=ROOT)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise TimeoutError("hbm wrote nothing for too long")
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        proc.wait(timeout=60)
        os.close(master)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("term")
    rng = np.random.default_rng(3)
    n, g = 240, 10
    grp = rng.integers(0, g, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.7, g)[grp] + rng.normal(0, 0.5, n)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in grp], "region": [f"r{i % 3}" for i in grp],
                       "h": rng.integers(0, 3, n), "count": rng.poisson(np.exp(0.5 + 0.3 * x))})
    df.to_csv(d / "d.csv", index=False)
    df.to_parquet(d / "d.parquet", index=False)
    EIGHT.to_csv(d / "eight.csv", index=False)
    return d


# ---------------------------------------------------------------- NUTS: blocks, progress, warnings

def test_nuts_in_blocks_is_numpyros_chain_and_the_blocks_do_not_change_the_draws(monkeypatch):
    """The blocked chain makes NumPyro's MCMC.run iterations from the same key (equal up to float
    rounding, which differs between compiled programs and grows over a long chain); its draws are the
    same whatever the block size; the progress callback hears from every block of both phases."""
    import jax
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.initialization import init_to_median

    import hbm as api
    from hbm.engines import nuts
    from hbm.engines.base import FitProblem, hbm_init

    model = api.compile({"formula": "y | se(s) ~ 1 + (1 | school)"}, EIGHT)
    problem = FitProblem(model.numpyro_model, model.data)
    config = dataclasses.replace(model.spec.inference, engine="nuts", warmup=6, samples=4, chains=2)
    seen = []

    def progress(step, total, loss, **extra):
        seen.append((step, total, extra["chain"], extra["phase"]))
    progress.extra = True
    blocked = nuts.NUTSEngine().fit(problem, config, progress)
    monkeypatch.setattr(nuts, "BLOCKS", 1)
    whole = nuts.NUTSEngine().fit(problem, config)
    assert blocked.info["block"] == 1 and whole.info["block"] == 10
    for name in blocked.samples:
        np.testing.assert_array_equal(blocked.samples[name], whole.samples[name], err_msg=name)
    ran = [s for s in seen if s[3] in ("warmup", "sampling")]
    assert [s[0] for s in ran] == list(range(1, 21)) and ran[-1][1] == 20      # one report per block
    assert [(s[2], s[3]) for s in ran] == [(c, p) for c in (1, 2) for p in ["warmup"] * 6 + ["sampling"] * 4]

    kernel = NUTS(model.numpyro_model, target_accept_prob=0.8, max_tree_depth=10,
                  regularize_mass_matrix=False, init_strategy=hbm_init(init_to_median(num_samples=15)))
    mcmc = MCMC(kernel, num_warmup=6, num_samples=4, num_chains=1, progress_bar=False)
    mcmc.run(jax.random.split(jax.random.PRNGKey(0), 2)[1], extra_fields=("num_steps",), **model.data)
    for name, draws in blocked.samples.items():         # the second chain: its key is the seed's second
        np.testing.assert_allclose(draws[1], np.asarray(mcmc.get_samples()[name]), rtol=1e-3, atol=1e-3,
                                   err_msg=name)
    np.testing.assert_array_equal(blocked.sample_stats["num_steps"][1], mcmc.get_extra_fields()["num_steps"])


def test_a_funnel_shows_progress_per_block_and_warns_of_divergences(data, tmp_path):
    """Eight schools, centred, at target_accept 0.6: the terminal shows each chain's blocks with rate and
    time left, counts the divergences as they come, and warns with the fix; draws are counted right."""
    spec = tmp_path / "eight.yaml"
    spec.write_text("name: eight\nformula: y | se(s) ~ 1 + (1 | school)\nnoncentered: false\n"
                    "inference: {engine: nuts, warmup: 150, samples: 150, chains: 2, target_accept: 0.6}\n")
    out = through_pty("fit", spec, data / "eight.csv", "--out", tmp_path / "run")
    redraws = out.split("\r")
    assert len(redraws) > 20, out                       # one redraw per block, not per chain
    assert any("chain 1/2 warmup" in r for r in redraws) and any("chain 2/2 sampling" in r for r in redraws)
    assert re.search(r"\d draws/s  \d+:\d\d left", out), out
    assert re.search(r"\d+ divergent", out), out
    assert "nuts: 2 chains of 150 warmup + 150 draws: 300 draws kept" in out
    warning = re.search(r"warning: (\d+)\s+of\s+300\s+draws\s+diverged.*?target_accept.*?reparametrise", out, re.S)
    assert warning and int(warning.group(1)) > 0, out
    verdicts = out.replace("\r\n", "\n").split("draws kept")[1].split("results written")[0].split("\n")
    assert len(verdicts) > 4 and all(len(line) <= 100 for line in verdicts), verdicts
    run = tmp_path / "run"
    assert (run / "trace.png").stat().st_size > 10_000
    info = json.loads((run / "fit.json").read_text())
    assert info["convergence"]["num_divergences"] == int(warning.group(1))
    assert any("diverged" in w for w in info["diagnostics"]["warnings"])


def test_sampler_warnings_name_depth_and_energy_with_their_fixes():
    from hbm.results.diagnostics import ebfmi, sampler_warnings
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(0, 0.05, (2, 200)), axis=1)     # energy that barely moves between draws
    stats = {"diverging": np.zeros((2, 200), bool), "num_steps": np.full((2, 200), 7),
             "energy": np.stack([rng.normal(size=200), smooth[1]])}
    stats["num_steps"][1, :30] = 2 ** 6 - 1
    assert ebfmi(stats["energy"])[0] > 1 and ebfmi(stats["energy"])[1] < 0.3
    warnings = sampler_warnings(stats, target_accept=0.8, max_tree_depth=6)
    assert len(warnings) == 2
    assert warnings[0].startswith("30 of 400 draws reached the maximum tree depth 6 (63 leapfrog steps)")
    assert "inference.max_tree_depth: 8" in warnings[0]
    assert warnings[1].startswith("low E-BFMI (chain 2: ") and "reparametrise" in warnings[1]
    assert sampler_warnings({**stats, "num_steps": np.full((2, 200), 62), "energy": stats["energy"][:1]},
                            0.8, 6) == []


# ---------------------------------------------------------------- a run that records itself

def in_process(*args) -> tuple[int, str, str]:
    """``hbm ARGS`` run by ``main()`` in this process: (status, stdout, stderr)."""
    from hbm.cli.main import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def formula_run(data, tmp_path_factory):
    """A fit of a formula given where the spec goes, with --family: (run directory, its stderr)."""
    run = tmp_path_factory.mktemp("formula") / "run"
    code, _, err = in_process("fit", "log(count) ~ x", data / "d.csv", "--family", "poisson", "--engine", "svi",
                              "--steps", "40", "--set", "inference.draws=20", "--out", run, "--quiet")
    assert code == 0, err
    return run, err


def test_saved_spec_names_the_data_every_prior_and_refits_to_the_same_model(data, tmp_path):
    import hbm as api
    spec = tmp_path / "s.yaml"
    spec.write_text("name: rec\nformula: y ~ x + factor(h) + (1 + x | g) + (1 | region)\n"
                    "priors:\n  x: normal(0, 2)\ninference: {engine: svi, steps: 40, draws: 20}\n")
    run = tmp_path / "run"
    code, _, err = in_process("fit", spec, data / "d.parquet", "--out", run, "--quiet")
    assert code == 0, err
    saved = yaml.safe_load((run / "spec.yaml").read_text())
    assert saved["data"] == str((data / "d.parquet").resolve())
    first = api.compile(str(spec), str(data / "d.parquet"))
    assert list(saved["priors"]) == [n for n, _ in first.ir.prior_list()]
    assert saved["priors"]["x"] == "normal(0, 2)" and saved["priors"]["cor(1, x | g)"].startswith("lkj(")
    assert saved["inference"]["engine"] == "svi" and saved["inference"]["optimizer"].startswith("adam(")
    # what `hbm fit RUN/spec.yaml DATA` compiles: load_spec and compile_table, as here
    again = api.compile(str(run / "spec.yaml"), str(data / "d.parquet"))
    assert again.ir == first.ir and again.spec.inference == dataclasses.replace(
        first.spec.inference, optimizer=first.spec.inference.optimizer_fn)
    code, shown, err = in_process("show", run)
    assert code == 0, err
    assert re.search(rf"^data\s+{re.escape(str((data / 'd.parquet').resolve()))}: 240 rows", shown, re.M)
    assert re.search(r"^priors\s+Intercept ~ \w+\(", shown, re.M)
    assert re.search(r"^\s+sd\(1 \| region\) ~ ", shown, re.M) and "source None" not in shown


def test_a_formula_where_a_spec_goes(data, formula_run, tmp_path):
    """fit and check take a formula and --family; the response names observed_data; the compile line
    of a model without groups has no empty field; a file whose name holds ~ is still the file;
    hbm.compile takes a formula too."""
    import hbm as api
    from hbm.results.summary import load_netcdf
    run, err = formula_run
    assert re.search(r"compiled model: 240 rows from \S+d\.csv \(\d", err), err
    idata = load_netcdf(run / "posterior.nc")
    assert list(idata.observed_data.data_vars) == ["count"]
    assert np.array_equal(idata.observed_data["count"].values, pd.read_csv(data / "d.csv")["count"].values)
    saved = yaml.safe_load((run / "spec.yaml").read_text())
    assert saved["formula"] == "log(count) ~ x" and saved["family"] == "poisson"

    code, out, err = in_process("check", "y ~ x + (1|g)", data / "d.parquet")
    assert code == 0, err
    assert out.startswith("spec      formula") and "family    normal" in out and "(1 | g)" in out
    odd = tmp_path / "y~x.yaml"
    odd.write_text("formula: y ~ x + factor(h)\n")
    code, out, err = in_process("check", odd, data / "d.parquet")
    assert code == 0 and "factor(h)" in out and str(odd.resolve()) in out, err

    m = api.compile("y ~ x", pd.read_csv(data / "d.csv"))
    assert m.ir.formula == "y ~ x" and m.response_name == "y" and m.ir.plates == ()


# ---------------------------------------------------------------- small things

def test_version():
    r = hbm("--version")
    assert r.returncode == 0 and re.fullmatch(r"hbm \S+\n", r.stdout), r


def test_help_and_show_start_without_jax(formula_run):
    run, _ = formula_run
    script = ("import sys, contextlib, io\n"
              "from hbm.cli.main import main\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
              "assert 'jax' not in sys.modules, 'after --help'\n"
              f"assert main(['show', {str(run)!r}]) == 0\n"
              "assert 'jax' not in sys.modules, 'after show'\n"
              "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.endswith("ok\n"), r.stderr


def test_verdicts_wrap_to_the_terminal(monkeypatch):
    from hbm.cli.main import wrap
    text = ("Pareto k-hat 0.91, importance-sampling ESS 12 of 1000 draws: NOT trustworthy: the guide misses "
            "the posterior and its intervals are likely too narrow. Try guide: structured; more steps.")
    monkeypatch.setenv("COLUMNS", "60")
    lines = wrap(text).split("\n")
    assert len(lines) >= 3 and all(len(x) <= 59 for x in lines)
    assert all(x.startswith("    ") for x in lines[1:]) and " ".join(x.strip() for x in lines) == text
    names = wrap("R-hat max 1.024, ESS min 75 bulk / 160 tail, 0 divergences: NOT trustworthy: R-hat 1.024 at "
                 "sd(1 | g) (chains disagree: not converged)")
    assert "sd(1 | g)" in names.replace("\n    ", " ") and all("sd(1 | g)" in x or "sd(" not in x
                                                           for x in names.split("\n"))


def test_python_save_names_the_python_argument(data, tmp_path):
    import hbm as api
    model = api.compile("y ~ x", str(data / "d.parquet"))
    result = api.fit(model, engine="svi", steps=20, draws=10)
    result.save(tmp_path / "run")
    with pytest.raises(api.HbmError) as e:
        result.save(tmp_path / "run")
    text = e.value.render()
    assert "overwrite=True" in text and "--overwrite" not in text and "--out" not in text
    result.save(tmp_path / "run", overwrite=True)


def test_loss_plot_says_why_the_fit_stopped():
    from hbm.io.rundir import stop_label
    assert stop_label(np.ones(5), {"stop_reason": "converged", "converged": True}) == "converged"
    assert stop_label(np.ones(5), {"stop_reason": "max_steps", "steps": 20000}) == "step cap, not converged"
    assert stop_label(np.array([1.0, np.nan]), {"stop_reason": "max_steps"}) == "stopped: non-finite loss"


def test_compare_table_shows_each_row_at_one_precision():
    from hbm.pipeline.compare import compare_summaries, format_comparison
    a = pd.DataFrame({"mean": [1234.5678, 0.012345], "sd": [12.3, 0.00123], "q5": [1200.0, 0.01],
                      "q95": [1260.0, 0.014]}, index=["big", "small"])
    b = a * 1.01
    text = format_comparison(compare_summaries(a, b))
    big = next(x for x in text.splitlines() if x.startswith("big"))
    small = next(x for x in text.splitlines() if x.startswith("small"))
    assert big.split()[1:5] == ["1235", "1247", "12", "12"]
    assert small.split()[1:5] == ["0.0123", "0.0125", "0.0012", "0.0012"]
