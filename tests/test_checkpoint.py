"""Checkpoints: a fit killed with SIGKILL resumes and ends as an uninterrupted fit does; a non-finite
loss keeps the last good state; the same spec, data and seed give the same results; NUTS keeps
finished chains."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hbm
from hbm import cli
from hbm.io.checkpoint import Checkpointer, atomic_write, partial_dir
from hbm.results.summary import load_netcdf

ROOT = Path(__file__).resolve().parent.parent
EVERY = 250   # divides the convergence block (500 for 20000 steps), so every piece ends in a checkpoint
SPEC = f"""
name: long
formula: y ~ x + (1 | g)
family: normal
inference:
  engine: svi
  steps: 20000
  tolerance: 0
  draws: 100
  optimizer: adam(lr=0.02)
  checkpoint_every: {EVERY}
"""


def _hbm(*args, cache: Path, hash_seed: int) -> subprocess.Popen:
    # a persistent compilation cache shared by the processes keeps the test fast; the hash seeds
    # differ on purpose (a user's two runs have different ones)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONHASHSEED=str(hash_seed),
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.Popen([sys.executable, "-m", "hbm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(p: subprocess.Popen, timeout=600):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _saved_step(part: Path) -> int | None:
    try:
        return Checkpointer(part).load_svi().step
    except Exception:  # noqa: BLE001 - not written yet
        return None


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    rng = np.random.default_rng(1)
    n, g = 300, 12
    grp = rng.integers(0, g, n)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.7, g)[grp] + rng.normal(0, 0.5, n)
    pd.DataFrame({"y": y, "x": x, "g": [f"g{i:02d}" for i in grp]}).to_csv(d / "data.csv", index=False)
    (d / "spec.yaml").write_text(SPEC)
    return d


@pytest.fixture(scope="module")
def runs(work):
    """Two uninterrupted fits (the first fills the compilation cache) and one killed with SIGKILL mid-run."""
    spec, data, cache = work / "spec.yaml", work / "data.csv", work / "jax-cache"
    ref = [_finish(_hbm("fit", spec, data, "--out", work / "ref1", "--quiet", cache=cache, hash_seed=1))]
    second = _hbm("fit", spec, data, "--out", work / "ref2", "--quiet", cache=cache, hash_seed=2)
    killed = _hbm("fit", spec, data, "--out", work / "killed", "--quiet", cache=cache, hash_seed=1)
    part = partial_dir(work / "killed")
    seen, deadline = None, time.time() + 500
    while time.time() < deadline:
        assert killed.poll() is None, "the fit ended before it could be killed: " + killed.stderr.read()
        seen = _saved_step(part)
        if seen is not None and seen >= 8 * EVERY:
            break
        time.sleep(0.01)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        running = (cli.main(["fit", "--resume", str(work / "killed")]), err)   # not while it runs
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    return {"ref": ref + [_finish(second)], "seen": seen, "part": part, "cache": cache, "running": running}


def test_the_same_seed_gives_the_same_results(work, runs):
    for code, _, err in runs["ref"]:
        assert code == 0, err
    one, two = (work / "ref1" / "summary.csv").read_bytes(), (work / "ref2" / "summary.csv").read_bytes()
    assert one == two
    info = json.loads((work / "ref1" / "fit.json").read_text())
    assert info["seed"] == 0 and info["convergence"]["steps_run"] == 20000
    assert not partial_dir(work / "ref1").exists()   # removed once the run directory is written


def test_a_killed_fit_resumes_and_ends_as_an_uninterrupted_one(work, runs, capsys):
    part, seen = runs["part"], runs["seen"]
    killed = work / "killed"
    code, err = runs["running"]
    assert code == 2 and "still running" in err.getvalue(), err.getvalue()
    assert not killed.exists() and part.is_dir()
    ckpt = Checkpointer(part).load_svi()           # the checkpoint on disk is whole
    # nothing saved before the kill was lost, and checkpoints came every EVERY steps
    assert ckpt.step >= seen and ckpt.step % EVERY == 0 and 0 < ckpt.step < 20000
    assert ckpt.loss.shape == (ckpt.step,) and np.isfinite(ckpt.loss).all()
    # a second fit into the same place is refused while the interrupted one waits
    assert cli.main(["fit", str(work / "spec.yaml"), str(work / "data.csv"), "--out", str(killed)]) == 2
    assert "--resume" in capsys.readouterr().err
    code, out, err = _finish(_hbm("fit", "--resume", killed, "--quiet", cache=runs["cache"], hash_seed=3))
    assert code == 0, err
    assert not part.exists()
    for f in ("posterior.nc", "summary.csv", "spec.yaml", "fit.json", "loss.png", "model.json", "encoding.json"):
        assert (killed / f).is_file(), f
    info = json.loads((killed / "fit.json").read_text())
    assert info["convergence"]["resumed_from_step"] == ckpt.step
    assert info["convergence"]["steps_run"] == 20000
    ref = pd.read_csv(work / "ref1" / "summary.csv", index_col=0)
    got = pd.read_csv(killed / "summary.csv", index_col=0)
    assert list(got.index) == list(ref.index)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-6)
    loss_ref = load_netcdf(work / "ref1" / "posterior.nc").sample_stats["loss"].values
    loss_got = load_netcdf(killed / "posterior.nc").sample_stats["loss"].values
    # the reported loss may differ in its last bit between processes: numpyro's Trace_ELBO sums the
    # sites in the order of a Python set (PYTHONHASHSEED); the parameters, and so the summary, do not
    np.testing.assert_allclose(loss_got, loss_ref, rtol=1e-6)
    assert (killed / "summary.csv").read_bytes() == (work / "ref1" / "summary.csv").read_bytes()
    assert cli.main(["fit", "--resume", str(killed)]) == 2   # finished: nothing to resume


def test_a_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_state(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    pd.DataFrame({"count": rng.poisson(np.exp(1 + 0.5 * x)), "x": x}).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "s.yaml").write_text("formula: count ~ x\nfamily: poisson\n"
                                     "inference:\n  engine: svi\n  steps: 2000\n  optimizer: adam(lr=1000)\n")
    run = tmp_path / "run"
    code = cli.main(["fit", str(tmp_path / "s.yaml"), str(tmp_path / "d.csv"), "--out", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "the loss became non-finite at step" in err and "learning rate" in err
    assert "Traceback" not in err and str(partial_dir(run)) in err
    assert not run.exists()
    saved = Checkpointer(partial_dir(run)).load_svi()
    assert saved.loop["non_finite_step"] > saved.step and np.isfinite(saved.loss).all()
    # every value of the saved state is finite, the optimiser's moments too: a resume can go on from it
    assert all(np.isfinite(x).all() for x in saved.leaves if np.issubdtype(x.dtype, np.floating))
    # resuming may change how the fit goes on, never what is fitted
    code = cli.main(["fit", "--resume", str(run), "--set", "priors.x=normal(0, 1)"])
    assert code == 2 and "--resume cannot change 'priors'" in capsys.readouterr().err


def test_nuts_keeps_finished_chains(tmp_path):
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"y": rng.normal(1, 1, 50), "x": rng.normal(size=50)})
    model = hbm.compile({"formula": "y ~ x", "family": "normal",
                         "inference": {"engine": "nuts", "warmup": 100, "samples": 100, "chains": 2}}, df)
    first = hbm.fit(model, checkpoint=tmp_path)
    assert first.engine.info["chain_method"] == "sequential"  # one CPU device: chains one after another
    assert (tmp_path / "chain-0.npz").is_file() and (tmp_path / "chain-1.npz").is_file()
    again = hbm.fit(model, checkpoint=tmp_path)     # both chains saved: nothing runs again
    assert again.engine.info["chains_resumed"] == 2
    for k, v in first.engine.samples.items():
        np.testing.assert_array_equal(again.engine.samples[k], v)
    # a chain saved under other settings is not reused
    ck = Checkpointer(tmp_path)
    assert ck.load_chain(0, {"seed": 1}) is None


def test_checkpoint_files_are_whole_or_absent(tmp_path):
    import jax.numpy as jnp
    atomic_write(tmp_path / "a.txt", "one")
    atomic_write(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two" and sorted(os.listdir(tmp_path)) == ["a.txt"]
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.txt", lambda f: (f.write(b"half"), (_ for _ in ()).throw(RuntimeError()))[1])
    assert (tmp_path / "a.txt").read_text() == "two" and sorted(os.listdir(tmp_path)) == ["a.txt"]

    state = {"p": jnp.arange(3.0), "q": (jnp.int32(7), jnp.ones((2, 2)))}
    ck = Checkpointer(tmp_path / "c", every=10)
    loss = np.arange(30.0)
    ck.save_svi(state, 10, loss, {"block": 10})
    ck.save_svi(state, 20, loss, {"block": 10})
    with open(tmp_path / "c" / "loss.f64", "ab") as f:   # a killed process's torn append
        f.write(b"\x00" * 13)
    back = Checkpointer(tmp_path / "c")
    saved = back.load_svi()
    assert saved.step == 20 and np.array_equal(saved.loss, loss[:20]) and saved.loop == {"block": 10}
    restored = back.restore(saved, state)
    assert np.array_equal(restored["q"][1], state["q"][1]) and int(restored["q"][0]) == 7
    back.save_svi(restored, 30, loss, {"block": 10})
    assert np.array_equal(Checkpointer(tmp_path / "c").load_svi().loss, loss)
    with pytest.raises(hbm.HbmError, match="does not fit this model"):
        back.restore(saved, {"p": jnp.arange(4.0), "q": (jnp.int32(7), jnp.ones((2, 2)))})
    assert ck.due(40) and not Checkpointer(tmp_path / "d", every=10, seconds=None).due(5)
