"""Faults of the environment and of run directories, through the command line: a full disk at each
write of a fit, read-only outputs, a kill while the outputs are written (then ``--resume``), damaged
run and partial directories, and the error boundary itself (exit 2 with a message; exit 1 with the
traceback in a file; a reader that goes away).

One real fit (the module's ``base``); the injected faults replay its result instead of fitting again.
"""
from __future__ import annotations

import errno
import importlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from hbm import cli
from hbm.io.checkpoint import Checkpointer, partial_dir
from hbm.results.summary import load_netcdf

# the modules themselves (a package's face may shadow a module with a function of the same name)
checkpoint_mod, rundir, fit_mod, summary_mod, cli_main = map(importlib.import_module, (
    "hbm.io.checkpoint", "hbm.io.rundir", "hbm.pipeline.fit", "hbm.results.summary", "hbm.cli.main"))
ROOT = Path(__file__).resolve().parent.parent
SPEC = """name: faults
formula: y ~ x + (1 | g)
family: normal
inference:
  engine: svi
  steps: 40
  draws: 30
  optimizer: adam(lr=0.05)
"""
RUN_FILES = ("effects.png", "encoding.json", "fit.json", "loss.png", "model.json", "posterior.nc", "ppc.png",
             "spec.yaml", "summary.csv")
PARTIAL_FILES = ["lock", "loss.f64", "resume.json", "spec.yaml", "svi.npz"]
NO_SPACE = os.strerror(errno.ENOSPC)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished run (``earlier``), the FitResult and final checkpoint of its fit, a copy of its partial
    directory as it was before the outputs were written; and, started first to run meanwhile, the fit
    that is killed while writing its outputs (``killed``, see KILLER)."""
    d = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(3)
    grp, x = rng.integers(0, 5, 60), rng.normal(size=60)
    y = 1 + 0.5 * x + rng.normal(0, 0.5, 5)[grp] + rng.normal(0, 0.3, 60)
    pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in grp]}).to_csv(d / "data.csv", index=False)
    (d / "spec.yaml").write_text(SPEC)
    (d / "kill").mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    killed = subprocess.Popen([sys.executable, "-c", KILLER, "fit", str(d / "spec.yaml"), str(d / "data.csv"),
                               "--out", str(d / "kill" / "killed"), "--quiet"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, real = {}, fit_mod.fit

    def recording(model, **kw):
        seen["result"] = real(model, **kw)
        part = kw["checkpoint"].dir
        seen["state"] = Checkpointer(part).load_svi()
        shutil.copytree(part, d / "partial-copy", ignore=shutil.ignore_patterns("lock"))
        return seen["result"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_mod, "fit", recording)
        assert cli.main(["fit", str(d / "spec.yaml"), str(d / "data.csv"), "--out", str(d / "earlier"),
                         "--quiet"]) == 0
    yield SimpleNamespace(dir=d, spec=str(d / "spec.yaml"), data=str(d / "data.csv"), earlier=d / "earlier",
                          result=seen["result"], state=seen["state"], partial=d / "partial-copy", killed=killed,
                          kill_dir=d / "kill")
    if killed.poll() is None:
        killed.kill()
    killed.communicate()


KILLER = """
import os, signal, sys
import hbm.io.rundir as rundir
real = rundir.write_file
def dying(dest, content):   # half of posterior.nc written, then SIGKILL
    real(dest, content)
    if dest.name == "posterior.nc":
        with open(dest, "r+b") as f:
            f.truncate(os.path.getsize(dest) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
rundir.write_file = dying
from hbm.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _replay(base):
    """``hbm.pipeline.fit.fit`` as the base fit went, without fitting: its final checkpoint saved, its result."""
    def fit(model, progress=None, checkpoint=None):
        s = base.state
        assert checkpoint.save_svi(s.leaves, s.step, s.loss, s.loop)
        return base.result
    return fit


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, NO_SPACE)


class _FillingFile:
    """A file open for writing that takes half of the next write, then finds the disk full."""

    def __init__(self, f):
        self._f = f

    def write(self, b):
        self._f.write(b[: len(b) // 2])
        self._f.flush()
        raise _no_space()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _filling_open(name: str):
    """``open`` that hands out a :class:`_FillingFile` for ``name`` (or its temporary sibling) when writing."""
    def fake(file, mode="r", *a, **kw):
        f = open(file, mode, *a, **kw)
        hit = Path(file).name == name or Path(file).name.startswith(f".{name}.tmp-")
        return _FillingFile(f) if hit and any(c in mode for c in "wax") else f
    return fake


def test_a_run_holds_the_files_the_faults_cover(base):
    assert tuple(sorted(os.listdir(base.earlier))) == RUN_FILES


@pytest.mark.parametrize("point", [f"run:{f}" for f in RUN_FILES] + ["netcdf:posterior.nc"]
                         + [f"checkpoint:{f}" for f in ("spec.yaml", "resume.json", "loss.f64", "svi.npz")])
def test_a_full_disk_at_any_write_of_a_fit(base, point, monkeypatch, capsys):
    """ENOSPC at one write (half the file written): exit 2 naming the file, the earlier run intact,
    no temporary file left; the finished fit kept for --resume when only its outputs failed."""
    kind, name = point.split(":")
    shutil.rmtree(partial_dir(base.earlier), ignore_errors=True)
    before, listing = _snapshot(base.earlier), sorted(os.listdir(base.dir))
    monkeypatch.setattr(fit_mod, "fit", _replay(base))
    if kind == "run":     # every file of a run directory is written by rundir.write_file
        real = rundir.write_file

        def filling(dest, content):
            real(dest, content)
            if dest.name == name:
                with open(dest, "r+b") as f:
                    f.truncate(os.path.getsize(dest) // 2)
                raise _no_space()
        monkeypatch.setattr(rundir, "write_file", filling)
    else:                 # the NetCDF image, and every checkpoint file, through their module's open()
        monkeypatch.setattr(summary_mod if kind == "netcdf" else checkpoint_mod, "open", _filling_open(name),
                            raising=False)
    code = cli.main(["fit", base.spec, base.data, "--out", str(base.earlier), "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert re.search(rf"error: cannot write (\S*/)?{re.escape(name)}\b.*: {NO_SPACE}", err), err
    assert f"the disk holding {base.dir}" in err and "is full" in err
    assert _snapshot(base.earlier) == before
    kept = kind != "checkpoint"
    assert sorted(os.listdir(base.dir)) == sorted(listing + (["earlier.partial"] if kept else []))
    if kept:
        assert f"hbm fit --resume {base.earlier}" in err
        assert sorted(os.listdir(partial_dir(base.earlier))) == PARTIAL_FILES
        shutil.rmtree(partial_dir(base.earlier))


def test_too_little_free_space_is_said_before_writing(base, monkeypatch, capsys):
    shutil.rmtree(partial_dir(base.earlier), ignore_errors=True)
    before = _snapshot(base.earlier)
    monkeypatch.setattr(fit_mod, "fit", _replay(base))
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9, free=5000))
    code = cli.main(["fit", base.spec, base.data, "--out", str(base.earlier), "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    need = int(re.search(r"needs about (\d+\.\d) MB", err).group(1).replace(".", "")) * 10**5
    assert need >= (base.earlier / "posterior.nc").stat().st_size
    assert f"not enough free space to write {base.earlier}" in err and "has 5 kB free" in err
    assert _snapshot(base.earlier) == before and not rundir.stale_siblings(base.earlier)
    shutil.rmtree(partial_dir(base.earlier))


@pytest.mark.parametrize("command", ["simulate", "predict"])
def test_a_full_disk_while_a_table_is_written(base, command, tmp_path, monkeypatch, capsys):
    """``simulate --out`` and ``predict --out``: exit 2 naming the file; no file, no temporary sibling."""
    real = pd.DataFrame.to_csv

    def filling(df, path=None, *a, **kw):
        real(df, path, *a, **kw)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise _no_space()
    monkeypatch.setattr(pd.DataFrame, "to_csv", filling)
    monkeypatch.setattr(importlib.import_module("hbm.pipeline.simulate"), "simulate_table",   # the writing is
                        lambda spec, rows, seed: pd.read_csv(base.data).head(rows))           # what is tested
    out = tmp_path / "table.csv"
    argv = (["simulate", base.spec, "--rows", "20", "--out", str(out)] if command == "simulate" else
            ["predict", str(base.earlier), base.data, "--out", str(out)])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {out}: {NO_SPACE}" in err and f"the disk holding {tmp_path} is full" in err
    assert os.listdir(tmp_path) == []


@pytest.fixture
def read_only(base, tmp_path, monkeypatch):
    """A directory holding a copy of the earlier run, that refuses writes: mode 0o555, and where that
    binds nobody (root) a file system that says EROFS (os.open, os.mkdir inside it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copytree(base.earlier, ro / "run")
    os.chmod(ro, 0o555)
    if os.geteuid() == 0:
        real_open, real_mkdir = os.open, os.mkdir

        def inside(path) -> bool:
            return Path(os.fspath(path)).absolute().is_relative_to(ro)

        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

        def ro_open(path, flags, *a, **kw):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
                refuse(path)
            return real_open(path, flags, *a, **kw)

        def ro_mkdir(path, *a, **kw):
            if inside(path):
                refuse(path)
            return real_mkdir(path, *a, **kw)
        monkeypatch.setattr(os, "open", ro_open)
        monkeypatch.setattr(os, "mkdir", ro_mkdir)
    yield ro
    monkeypatch.undo()
    os.chmod(ro, 0o755)


READ_ONLY = {
    "fit": lambda b, ro: ["fit", b.spec, b.data, "--out", f"{ro}/new", "--quiet"],
    "fit --overwrite": lambda b, ro: ["fit", b.spec, b.data, "--out", f"{ro}/run", "--overwrite", "--quiet"],
    "predict --out": lambda b, ro: ["predict", f"{ro}/run", b.data, "--out", f"{ro}/p.csv"],
    "simulate --out": lambda b, ro: ["simulate", b.spec, "--rows", "10", "--out", f"{ro}/s.csv"],
    "compare": lambda b, ro: ["compare", f"{ro}/run", str(b.earlier)],
    "compare --out": lambda b, ro: ["compare", str(b.earlier), f"{ro}/run", "--out", f"{ro}/cmp"],
}


@pytest.mark.parametrize("command", list(READ_ONLY))
def test_a_read_only_output_directory(base, read_only, command, capsys):
    before = _snapshot(read_only)
    code = cli.main(READ_ONLY[command](base, read_only))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert f"error: cannot write {read_only}/" in err, err
    assert f"= {read_only} is on a read-only file system" in err or f"= you may not write in {read_only}" in err
    assert _snapshot(read_only) == before and sorted(os.listdir(read_only)) == ["run"]


def test_a_kill_while_the_outputs_are_written_then_resume(base, capsys):
    run, where = base.kill_dir / "killed", base.kill_dir
    _, err = base.killed.communicate(timeout=600)
    assert base.killed.returncode == -signal.SIGKILL, err
    stale = rundir.stale_siblings(run)
    assert len(stale) == 1 and stale[0].name.startswith(".killed.tmp-"), os.listdir(where)
    assert (stale[0] / "posterior.nc").stat().st_size > 0 and not run.exists()
    assert Checkpointer(partial_dir(run)).load_svi().loop["finished"] is True
    code = cli.main(["fit", "--resume", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"removed what an interrupted hbm left: {stale[0]}" in err
    assert sorted(os.listdir(where)) == ["killed"]       # no temporary sibling, no partial directory
    assert tuple(sorted(os.listdir(run))) == RUN_FILES
    got = pd.read_csv(run / "summary.csv", index_col=0)
    ref = pd.read_csv(base.earlier / "summary.csv", index_col=0)   # the same fit, uninterrupted
    assert list(got.index) == list(ref.index)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-6)
    assert load_netcdf(run / "posterior.nc").posterior.sizes["draw"] == 30


# ---------------------------------------------------------------- damaged run and partial directories

def _damaged_run(base, tmp_path, name: str, content: bytes | None) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base.earlier, run)
    if content is None:   # half the file
        data = (run / name).read_bytes()
        content = data[: len(data) // 2]
    (run / name).write_bytes(content)
    return run


@pytest.mark.parametrize("name,content,words", [
    ("posterior.nc", None, "file posterior.nc is not a whole NetCDF file (Unable to synchronously open file "
                           "(truncated file"),
    ("posterior.nc", b"", "file posterior.nc is not a whole NetCDF file"),
    ("encoding.json", None, "file encoding.json is not valid JSON"),
    ("encoding.json", b'{"version": 1, "labels": 5, "stats": {}, "factor_levels": {}}',
     "file encoding.json does not describe an encoding (TypeError: 'labels' should be a mapping, found 5)"),
    ("encoding.json", b'{"version": 1, "labels": {"g": 5}, "stats": {}, "factor_levels": {}}',
     "file encoding.json does not describe an encoding (TypeError: 'labels.g' should be a list, found 5)"),
    ("model.json", b"[]", "file model.json holds a list, not a JSON object"),
    ("fit.json", b"{", "file fit.json is not valid JSON"),
    ("summary.csv", b"", "file summary.csv cannot be read"),
])
def test_a_damaged_run_directory_is_said_so(base, tmp_path, capsys, name, content, words):
    run = _damaged_run(base, tmp_path, name, content)
    commands = [["predict", str(run), base.data]]
    if "describe" not in words:   # hbm show reads every file; what a model or an encoding says, predict alone
        commands.append(["show", str(run)])
    for argv in commands:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"error: run directory {run} is damaged: {words}" in err, err
        assert f"= fit it again (hbm fit SPEC DATA --out {run} --overwrite), or restore {name}" in err


def _partial(base, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base.partial, partial_dir(run))
    return run


def _rewrite_npz(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def _infinite_moment(path: Path) -> None:
    """The last floating leaf of a saved SVI state (an optimiser moment) made infinite, as an hbm that
    checkpointed a diverging fit left it."""
    with np.load(path) as z:
        name = [k for k in z.files if k.startswith("leaf_") and np.issubdtype(z[k].dtype, np.floating)][-1]
        leaf = z[name]
    _rewrite_npz(path, **{name: np.full_like(leaf, np.inf)})


@pytest.mark.parametrize("damage,words", [
    (lambda p: _rewrite_npz(p / "svi.npz", meta=np.frombuffer(b"[1, 2]", np.uint8)),
     "file svi.npz is incomplete or edited"),
    (lambda p: _infinite_moment(p / "svi.npz"), "file svi.npz holds non-finite values"),
    (lambda p: (p / "svi.npz").write_bytes(b"PK\x03\x04 half"), "file svi.npz cannot be read"),
    (lambda p: (p / "resume.json").write_text('"run"'), "file resume.json holds \"run\", not a mapping"),
    (lambda p: (p / "spec.yaml").write_text("[1, 2]"), "file spec.yaml holds [1, 2], not a mapping"),
])
def test_a_damaged_partial_directory_is_said_so(base, tmp_path, capsys, damage, words):
    run = _partial(base, tmp_path)
    damage(partial_dir(run))
    assert cli.main(["fit", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: the interrupted fit in {partial_dir(run)} is damaged: {words}" in err, err
    assert f"= delete {partial_dir(run)} and start the fit again" in err
    assert "Traceback" not in err and not run.exists()


def test_a_partial_directory_without_state_is_replaced_by_a_new_fit(base, tmp_path, monkeypatch, capsys):
    run = _partial(base, tmp_path)
    for f in ("svi.npz", "loss.f64", "resume.json"):
        (partial_dir(run) / f).unlink()
    monkeypatch.setattr(fit_mod, "fit", _replay(base))
    assert cli.main(["fit", base.spec, base.data, "--out", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert tuple(sorted(os.listdir(run))) == RUN_FILES and sorted(os.listdir(tmp_path)) == ["run"]


def test_a_checkpoint_is_written_only_when_every_value_is_finite(tmp_path):
    ck = Checkpointer(tmp_path / "c")
    good = {"params": np.ones(3), "adam": (np.zeros(3), np.ones(3)), "key": np.array([1, 2], np.uint32)}
    assert ck.save_svi(good, 2, np.array([3.0, 2.0]), {})
    bad = {**good, "adam": (np.array([0.0, np.inf, 0.0]), np.ones(3))}   # finite parameters, infinite moments
    assert not ck.save_svi(bad, 4, np.array([3.0, 2.0, 1.5, 1.0]), {})
    back = Checkpointer(tmp_path / "c").load_svi()
    assert back.step == 2 and ck.saves == 1 and np.isfinite(np.concatenate(back.leaves[:-1])).all()


# ---------------------------------------------------------------- the boundary itself

@pytest.mark.parametrize("exc,code,words", [
    (RecursionError("maximum recursion depth exceeded"), 2, "error: the input is nested too deeply"),
    (MemoryError(), 2, "error: out of memory"),
    (OSError(errno.EMFILE, os.strerror(errno.EMFILE)), 2, "raise the limit (ulimit -n)"),
    (OSError("Unable to synchronously create file (unable to open file: name = '/x/p.nc', errno = 28, "
             "error message = 'No space left on device')"), 2, f"error: cannot use: {NO_SPACE}"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_the_boundary_maps_each_failure_to_its_status(monkeypatch, capsys, exc, code, words):
    def boom(args):
        raise exc
    monkeypatch.setattr(cli_main, "cmd_show", boom)
    assert cli.main(["show", "anything"]) == code
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and "internal error" not in err


def test_a_bug_is_exit_1_with_the_traceback_in_a_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("HBM_DEBUG", raising=False)
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)

    def boom(args):
        return {}["no such key"]
    monkeypatch.setattr(cli_main, "cmd_show", boom)
    assert cli.main(["show", "anything"]) == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError: 'no such key'" in err and "this is a bug in hbm" in err
    assert "Traceback" not in err
    path = Path(re.search(r"its traceback is in (\S+):", err).group(1))
    assert path.parent == tmp_path
    text = path.read_text()
    assert text.startswith("hbm ") and "Traceback (most recent call last)" in text
    assert "in boom" in text and "KeyError: 'no such key'" in text


def test_a_reader_that_goes_away_is_no_failure(base, monkeypatch, capsys):
    """``hbm check SPEC | head``: the pipe closes; hbm stops writing, quietly, and exits 0."""
    read, write = os.pipe()
    os.close(read)
    stdout = io.TextIOWrapper(io.FileIO(write, "w"), write_through=True)   # every write meets the closed pipe
    with pytest.raises(BrokenPipeError):
        stdout.write("x")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(["check", base.spec, base.data]) == 0
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Broken pipe" not in err and "internal error" not in err, err
    stdout.write("more")   # the descriptor now leads to /dev/null
    stdout.close()


def test_a_distributed_fit_of_a_file_that_is_not_parquet(tmp_path):
    from hbm.errors import HbmError
    from hbm.pipeline.distributed import compile_file
    from hbm.spec import load_spec
    (tmp_path / "d.parquet").write_text("y,x\n1,2\n")
    with pytest.raises(HbmError, match=r"could not read .*d\.parquet as parquet: .*magic bytes"):
        compile_file(load_spec({"formula": "y ~ x"}), tmp_path / "d.parquet")


def test_an_orphaned_temporary_sibling_is_removed_by_the_next_write(tmp_path):
    """A killed ``simulate --out`` / ``predict --out`` leaves ``.NAME.tmp-PID``; the next write of that name
    removes it when process PID is gone, and keeps the sibling of a writer that still runs."""
    from hbm.io.rundir import write_new_file
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".sim.csv.tmp-{int(dead.stdout)}"
    live = tmp_path / f".sim.csv.tmp-{os.getppid()}"
    orphan.write_text("half")
    live.write_text("being written")
    write_new_file(tmp_path / "sim.csv", lambda p: p.write_text("y\n1\n"))
    assert (tmp_path / "sim.csv").read_text() == "y\n1\n"
    assert not orphan.exists() and live.exists()
