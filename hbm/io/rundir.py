"""Run directories: where ``hbm fit`` writes a finished fit, and how ``hbm show`` reads it.

A run directory holds (SPEC section 3)::

    posterior.nc   ArviZ InferenceData (names encoded as in hbm.results.summary.save_netcdf)
    summary.csv    one row per parameter element
    spec.yaml      the resolved spec
    fit.json       engine, timings, devices, versions, data fingerprint, convergence
    loss.png       the loss curve (variational engines only)
    model.json     the model's IR, and
    encoding.json  level labels, transform statistics, factor levels: what ``hbm predict`` needs

Writing is all-or-nothing: every file goes into a hidden sibling directory
``.<name>.tmp-<pid>`` which is renamed into place at the end, so an interrupted
or failed write leaves no half directory and no half file, and never touches
an existing run. An existing run is replaced only with ``overwrite=True`` (the
old one is moved aside, the new one renamed in, then the old one deleted), and
only when it looks like a run (or is empty): ``--overwrite`` cannot delete an
unrelated folder. A writer killed meanwhile leaves its hidden siblings
(:func:`stale_siblings`); the next fit of the same run removes them, holding its
partial directory's lock (:func:`hbm.io.checkpoint.clean_for_resume`).

Failures of the file system (a full disk, a read-only directory) are
:class:`HbmError` naming the path (:func:`hbm.errors.os_error`); where the output
goes is probed before the work (:func:`check_writable`) and the free space
checked against the size before a run is written (:func:`free_space_check`). A
damaged run directory is said to be one (:func:`damaged`), by every reader.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from hbm.errors import HbmError, did_you_mean, os_error
from hbm.results.summary import format_summary, load_netcdf, save_netcdf

REQUIRED_FILES = ("summary.csv", "fit.json", "spec.yaml", "posterior.nc")
_RUN_MARKERS = ("fit.json", "spec.yaml", "summary.csv", "posterior.nc")
FileContent = bytes | str | Callable[[Path], None]


# ---------------------------------------------------------------- choosing and writing

def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


def _check_target(p: Path, overwrite: bool, overwrite_hint: str = "--overwrite") -> None:
    """That ``p`` may be written as a run directory. ``overwrite_hint`` is how the caller's user asks
    to replace a run: ``--overwrite`` on the command line, ``overwrite=True`` in Python (the
    messages name it, and ``--out`` or the ``run_dir`` argument to match)."""
    if not (p.exists() or p.is_symlink()) or _is_empty_dir(p):
        return
    other = "another --out" if overwrite_hint.startswith("--") else "another run_dir"
    if not p.is_dir():
        raise HbmError(f"output path {p} exists and is not a directory", hint=f"choose {other}")
    if not overwrite:
        raise HbmError(f"run directory {p} already exists and is not empty",
                       hint=f"pass {overwrite_hint} to replace it, or choose {other}")
    if not any((p / m).exists() for m in _RUN_MARKERS):
        raise HbmError(f"{p} is not an hbm run directory (no fit.json, spec.yaml, summary.csv "
                       "or posterior.nc); refusing to replace it",
                       hint=f"choose {other}, or an empty directory")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "run"


def new_run_dir(base: Path | str | None, name: str, *, overwrite: bool = False,
                root: Path | str = "runs", now: _dt.datetime | None = None) -> Path:
    """The directory a fit will be written to (not created here).

    ``base`` (``--out``) when given: an error if it exists and is not empty,
    unless ``overwrite``. Otherwise ``<root>/<name>-<YYYYmmdd-HHMMSS>[-N]``, a
    name no existing path has. Checking here (that, and that its place can be
    written: :func:`check_writable`), before fitting, means a long fit never ends
    in a refused write.
    """
    if base is not None:
        p = Path(base)
        _check_target(p, overwrite)
        check_writable(p)
        return p
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    stem = Path(root) / f"{_slug(name)}-{stamp}"
    p, n = stem, 1
    while p.exists() or p.is_symlink():
        n += 1
        p = stem.with_name(f"{stem.name}-{n}")
    check_writable(p)
    return p


def _existing_ancestor(p: Path) -> Path:
    q = p.absolute()
    while not (q.exists() or q.is_symlink()) and q != q.parent:
        q = q.parent
    return q


def check_writable(path: Path | str, where: str = "--out", parent_exists: bool = False) -> None:
    """That ``path`` (a file or directory to be created) can be: the nearest existing directory
    above it (its parent, with ``parent_exists``) is a directory and takes a new file (probed:
    permissions alone say nothing for root, a read-only mount or /proc). Raises :class:`HbmError`
    naming the path and what to do."""
    path = Path(path)
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise HbmError(f"cannot write {path}: {base} is a file, not a directory", where=where,
                       hint="choose a path whose parent is a directory")
    if parent_exists and base != path.parent.absolute():
        raise HbmError(f"cannot write {path}: the directory {path.parent} does not exist", where=where,
                       hint="create it first, or choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise os_error(e, "cannot write", path) from None


def output_dir(default: Path, out=None) -> Path:
    """Where a command that reads runs (compare, loo, effects, contrast) writes its new directory,
    checked before the work: ``out`` (``--out``: new, or an empty directory), else ``default`` (``-2``,
    ``-3``, ... when taken). Never inside a run directory, never over earlier files."""
    if out is not None:
        d = Path(out)
        if d.exists() and not d.is_dir():
            raise HbmError(f"--out {d} is a file; give a new directory", where="--out")
        if d.is_dir() and any(d.iterdir()):
            raise HbmError(f"--out {d} exists and is not empty; hbm never writes over earlier files",
                           where="--out", hint="choose a new directory, or leave out --out")
    else:
        d, n = Path(default), 1
        while d.exists() or d.is_symlink():
            n += 1
            d = Path(default).with_name(f"{Path(default).name}-{n}")
    run = next((q for q in [d.absolute(), *d.absolute().parents]
                if all((q / f).is_file() for f in ("fit.json", "posterior.nc"))), None)
    if run is not None:
        raise HbmError(f"--out {d} is inside the run directory {run}; hbm never changes a finished run",
                       where="--out", hint="choose a directory outside it, or leave out --out")
    check_writable(d)
    return d


def free_space_check(path: Path | str, need: int) -> None:
    """Refuse to start writing ``need`` bytes under ``path`` when the disk has less free (a full disk
    found halfway through a NetCDF file is worse: HDF5 fails in its own finalisers)."""
    base = _existing_ancestor(Path(path))
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return              # no figure to go by: the writes themselves will say
    if free < need:
        raise HbmError(f"not enough free space to write {path}: it needs about {_megabytes(need)}, "
                       f"the disk holding {base} has {_megabytes(free)} free",
                       hint="free some space, or write elsewhere (e.g. another --out)")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _safe_join(root: Path, rel: str) -> Path:
    rp = Path(rel)
    if rp.is_absolute() or ".." in rp.parts or not rp.parts:
        raise ValueError(f"run file name {rel!r} must be a relative path inside the run directory")
    return root / rp


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def write_run(run_dir: Path | str, files: Mapping[str, FileContent], overwrite: bool = False,
              need_bytes: int = 0, overwrite_hint: str = "--overwrite") -> Path:
    """Write ``files`` (name -> bytes, text, or a callable given the path to write)
    as the directory ``run_dir``, all at once or not at all; ``need_bytes`` (an estimate of
    their size) is checked against the free space first. A failure of the file system (a full
    disk, a read-only directory) is an :class:`HbmError` naming the file."""
    run_dir = Path(run_dir)
    _check_target(run_dir, overwrite, overwrite_hint)
    parent = run_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, "cannot create the directory of", run_dir) from None
    if need_bytes:
        free_space_check(run_dir, need_bytes + need_bytes // 10 + 2**20)
    remove_orphans(run_dir)
    tmp = temp_sibling(run_dir)
    _remove(tmp)
    try:
        tmp.mkdir()
    except OSError as e:
        raise os_error(e, "cannot write", run_dir) from None
    try:
        for rel, content in files.items():
            dest = _safe_join(tmp, rel)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                write_file(dest, content)
            except OSError as e:
                raise os_error(e, f"cannot write {rel} into", run_dir) from None
            if not dest.exists():
                raise RuntimeError(f"the writer for {rel!r} did not create {dest}")
        try:
            _install(tmp, run_dir, overwrite, overwrite_hint)
        except OSError as e:
            raise os_error(e, "cannot move the finished files into", run_dir) from None
    except BaseException:
        _remove(tmp)
        raise
    return run_dir


def write_file(dest: Path, content: FileContent) -> None:
    """One file of a run directory: bytes, text, or ``content(dest)`` (the one place files are written)."""
    if callable(content):
        content(dest)
    elif isinstance(content, str):
        dest.write_text(content, encoding="utf-8")
    else:
        dest.write_bytes(bytes(content))


TEMP_TAGS = ("tmp", "old")


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """The hidden sibling ``.<name>.<tag>-<pid>`` where ``path`` is written before it is renamed into place
    (``tag`` "old": where a replaced run waits to be deleted)."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}"


def stale_siblings(path: Path) -> list[Path]:
    """The temporary siblings of ``path`` (:func:`temp_sibling`) that some process left, whatever its pid."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.({'|'.join(TEMP_TAGS)})-\d+")
    try:
        return sorted(q for q in path.parent.iterdir() if pattern.fullmatch(q.name))
    except OSError:
        return []


def _writer_gone(sibling: Path) -> bool:
    """Whether the process named by a temporary sibling's ``-<pid>`` suffix no longer runs (on this host)."""
    try:
        os.kill(int(sibling.name.rsplit("-", 1)[1]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def remove_orphans(path: Path) -> list[Path]:
    """Delete the temporary siblings of ``path`` whose writer no longer runs (a killed ``predict --out``,
    ``simulate --out`` or fit); safe without a lock: a live writer's sibling is kept. Returns what was removed."""
    gone = [q for q in stale_siblings(path) if _writer_gone(q)]
    for q in gone:
        _remove(q)
    return gone


def remove_stale_siblings(path: Path) -> list[Path]:
    """Delete what a killed writer of ``path`` left beside it (call only while no other process writes
    ``path``: a fit holding its partial directory's lock); returns what was removed."""
    stale = stale_siblings(path)
    for q in stale:
        _remove(q)
    return stale


def _install(tmp: Path, run_dir: Path, overwrite: bool, overwrite_hint: str = "--overwrite") -> None:
    if _is_empty_dir(run_dir):
        run_dir.rmdir()
    if not (run_dir.exists() or run_dir.is_symlink()):
        try:
            os.rename(tmp, run_dir)   # fails, and changes nothing, if run_dir appeared meanwhile
            return
        except OSError:
            if not run_dir.exists():
                raise
    _check_target(run_dir, overwrite, overwrite_hint)  # it appeared while we were writing
    old = temp_sibling(run_dir, "old")
    _remove(old)
    os.rename(run_dir, old)
    try:
        os.rename(tmp, run_dir)
    except BaseException:
        os.rename(old, run_dir)
        raise
    _remove(old)


def write_new_file(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Write one file atomically and never over an existing one: ``write(tmp)`` writes a
    temporary sibling, which is then linked into place (failing if ``path`` appeared)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise HbmError(f"{path} exists; hbm never writes over an existing file", where="--out",
                       hint="choose another name, or remove the file first")
    if not path.parent.is_dir():
        raise HbmError(f"cannot write {path}: the directory {path.parent} does not exist", where="--out")
    remove_orphans(path)
    tmp = temp_sibling(path)
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as e:
            raise os_error(e, "cannot write", path) from None
        try:
            os.link(tmp, path)          # atomic, and refuses to replace a file that appeared meanwhile
        except FileExistsError:
            raise HbmError(f"{path} appeared while it was being written; not replacing it",
                           where="--out") from None
        except OSError:                 # a file system without hard links
            if path.exists():
                raise HbmError(f"{path} exists; hbm never writes over an existing file", where="--out") from None
            try:
                os.rename(tmp, path)
            except OSError as e:
                raise os_error(e, "cannot write", path) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------- fit files

def _plain(x):
    """JSON/YAML-safe plain Python: numpy scalars and arrays, tuples, Paths, NaN -> None."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return _plain(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (_dt.datetime, _dt.date)):
        return x.isoformat()
    return str(x)


def plot_loss(loss: np.ndarray, path: Path | str, stop: str | None = None) -> None:
    """The loss curve: raw loss, a smoothed line over it, log y when all positive; ``stop`` (why the
    fit stopped: :func:`stop_label`) labels a vertical line at the last step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    loss = np.asarray(loss, dtype=float).reshape(-1)
    steps = np.arange(loss.size)
    ok = np.isfinite(loss)
    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps[ok], loss[ok], lw=0.6, alpha=0.35, color="tab:blue", label="loss")
    if ok.sum() >= 10:
        y, s = loss[ok], steps[ok]
        w = max(2, y.size // 50)
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(s[w - 1:], smooth, lw=1.5, color="tab:red", label=f"mean of {w} steps")
        if not (y > 0).all():  # linear scale: keep the first steps' spike from flattening the rest
            tail = y[y.size // 20:]
            lo, hi = np.min(tail), np.quantile(tail, 0.99)
            pad = 0.05 * (hi - lo) or 1.0
            ax.set_ylim(lo - pad, hi + pad)
    if ok.any() and (loss[ok] > 0).all():
        ax.set_yscale("log")
    if stop is not None and loss.size:
        last = int(steps[-1])
        color = "tab:green" if stop == "converged" else "tab:orange"
        ax.axvline(last, color=color, lw=1.5, ls="--", label=f"stopped at step {last + 1:,}: {stop}")
        ax.text(last, 0.5, f" {stop} ", transform=ax.get_xaxis_transform(), rotation=90, ha="right",
                va="center", color=color, fontsize=8)
        ax.set_xlim(right=last + max(1.0, 0.03 * last))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper center")   # the curve falls from the upper left; the stop line is at the right
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def save_fit(run_dir: Path | str, idata, summary_df: pd.DataFrame, spec_dict: dict,
             fit_info: dict, loss: np.ndarray | None = None, overwrite: bool = False,
             extra: Mapping[str, FileContent] | None = None, overwrite_hint: str = "--overwrite") -> Path:
    """Write a finished fit's files as ``run_dir`` (atomically, see :func:`write_run`);
    ``extra`` adds files (name -> content), e.g. what ``hbm predict`` reads. ``loss.png`` marks where
    the fit stopped and why (fit.json's ``convergence``)."""
    import yaml
    files: dict[str, FileContent] = {
        "posterior.nc": lambda p: save_netcdf(idata, p),
        "summary.csv": lambda p: summary_df.to_csv(p, index_label="parameter", float_format="%.8g"),
        "spec.yaml": yaml.safe_dump(_plain(spec_dict), sort_keys=False, allow_unicode=True),
        "fit.json": json.dumps(_plain(fit_info), indent=2, ensure_ascii=False) + "\n",
    }
    if loss is not None and np.asarray(loss).size:
        conv = fit_info.get("convergence") if isinstance(fit_info.get("convergence"), Mapping) else {}
        files["loss.png"] = lambda p: plot_loss(loss, p, stop=stop_label(loss, conv))
    files.update(extra or {})
    return write_run(run_dir, files, overwrite=overwrite, need_bytes=_nbytes(idata) + _nbytes(summary_df),
                     overwrite_hint=overwrite_hint)


def stop_label(loss: np.ndarray, convergence: Mapping) -> str:
    """Why an optimiser stopped, in a few words, for ``loss.png``: converged, the step cap, a non-finite
    loss, or the optimiser's own message."""
    loss = np.asarray(loss, dtype=float).reshape(-1)
    reason = convergence.get("stop_reason")
    if loss.size and not np.isfinite(loss[-1]):
        return "stopped: non-finite loss"
    if reason == "converged" or convergence.get("converged") is True:
        return "converged"
    if reason == "max_steps":
        return "step cap, not converged"
    return f"stopped: {str(reason)[:60]}" if reason else "stopped"


def _nbytes(x) -> int:
    """The in-memory size of an InferenceData's groups or a DataFrame: about what writing it takes."""
    try:
        if isinstance(x, pd.DataFrame):
            return int(x.memory_usage(deep=True).sum())
        return int(sum(getattr(x, g).nbytes for g in x.groups()))
    except Exception:  # noqa: BLE001 - an estimate only: without one, the writes themselves say
        return 0


# ---------------------------------------------------------------- reading

@dataclass
class RunRecord:
    path: Path
    summary: pd.DataFrame
    fit_info: dict
    spec: dict
    _idata: object = field(default=None, repr=False, compare=False)

    def idata(self):
        """The posterior InferenceData (read on first use, fully into memory)."""
        if self._idata is None:
            try:
                self._idata = load_netcdf(self.path / "posterior.nc")
            except OSError as e:
                if _system_error(e):        # the file system's own error (permissions, an I/O error)
                    raise os_error(e, "cannot read", self.path / "posterior.nc") from None
                raise damaged(self.path, "posterior.nc", f"cannot be read ({_first_line(e)})") from None
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
                raise damaged(self.path, "posterior.nc", f"cannot be read ({_first_line(e)})") from None
        return self._idata

    def loss(self) -> np.ndarray | None:
        ss = getattr(self.idata(), "sample_stats", None)
        return None if ss is None or "loss" not in ss else np.asarray(ss["loss"].values)


def damaged(run_dir: Path | str, name: str, what: str) -> HbmError:
    """The error for a file of a run directory that is not what ``hbm fit`` wrote (truncated, edited)."""
    return HbmError(f"run directory {run_dir} is damaged: file {name} {what}", where=str(Path(run_dir) / name),
                    hint=f"fit it again (hbm fit SPEC DATA --out {run_dir} --overwrite), or restore {name} "
                         "from a copy")


def _system_error(e: OSError) -> bool:
    """An error of the operating system (with an errno, which h5py gives in its text only), not of a
    file's content ("file signature not found", "truncated file")."""
    return e.errno is not None or "errno =" in str(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_posterior(run_dir: Path) -> None:
    """That ``posterior.nc`` is a whole HDF5 file holding a posterior (opened, not read: a truncated
    or emptied file fails here, cheaply)."""
    import h5py
    path = run_dir / "posterior.nc"
    try:
        with h5py.File(path, "r") as f:
            groups = set(f.keys())
    except OSError as e:
        if _system_error(e):
            raise os_error(e, "cannot read", path) from None
        raise damaged(run_dir, "posterior.nc", f"is not a whole NetCDF file ({_first_line(e)})") from None
    except (ValueError, KeyError, RuntimeError) as e:
        raise damaged(run_dir, "posterior.nc", f"is not a whole NetCDF file ({_first_line(e)})") from None
    if "posterior" not in groups:
        raise damaged(run_dir, "posterior.nc", "holds no posterior group")


def _runs_inside(p: Path) -> list[Path]:
    return sorted((q for q in p.iterdir() if q.is_dir() and (q / "fit.json").exists()),
                  key=lambda q: q.stat().st_mtime)


def load_run(run_dir: Path | str) -> RunRecord:
    """Read a run directory written by :func:`save_fit` (posterior.nc on demand)."""
    import yaml
    p = Path(run_dir)
    if not p.exists():
        siblings = [q.name for q in p.parent.iterdir()] if p.parent.is_dir() else []
        raise HbmError(f"no run directory at {p}", hint=did_you_mean(p.name, siblings))
    if not p.is_dir():
        raise HbmError(f"{p} is not a run directory (it is a file)")
    missing = [f for f in REQUIRED_FILES if not (p / f).is_file()]
    if missing:
        runs = _runs_inside(p) if len(missing) == len(REQUIRED_FILES) else []
        hint = (f"{p} holds runs; the latest is {runs[-1]}" if runs else
                "a run directory is written by `hbm fit`; this one is incomplete or was edited")
        raise HbmError(f"run directory {p} is missing {', '.join(missing)}",
                       where=str(p / missing[0]), hint=hint)
    try:
        summary = pd.read_csv(p / "summary.csv", index_col="parameter", dtype={"parameter": str})
    except OSError as e:
        raise os_error(e, "cannot read", p / "summary.csv") from None
    except (ValueError, pd.errors.ParserError) as e:
        raise damaged(p, "summary.csv", f"cannot be read ({_first_line(e)})") from None
    try:
        fit_info = json.loads((p / "fit.json").read_text(encoding="utf-8"))
    except OSError as e:
        raise os_error(e, "cannot read", p / "fit.json") from None
    except ValueError as e:
        raise damaged(p, "fit.json", f"is not valid JSON ({e})") from None
    try:
        spec = yaml.safe_load((p / "spec.yaml").read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise os_error(e, "cannot read", p / "spec.yaml") from None
    except (yaml.YAMLError, ValueError) as e:
        raise damaged(p, "spec.yaml", f"is not valid YAML ({_first_line(e)})") from None
    for name in ("model.json", "encoding.json"):   # what hbm predict reads (older runs lack them)
        f = p / name
        if f.is_file():
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except OSError as e:
                raise os_error(e, "cannot read", f) from None
            except ValueError as e:
                raise damaged(p, name, f"is not valid JSON ({e})") from None
            if not isinstance(doc, dict):
                raise damaged(p, name, f"holds a {type(doc).__name__}, not a JSON object")
    check_posterior(p)
    return RunRecord(p, summary, fit_info if isinstance(fit_info, dict) else {},
                     spec if isinstance(spec, dict) else {})


def _seconds(x) -> str:
    try:
        s = float(x)
    except (TypeError, ValueError):
        return str(x)
    if s < 60:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    m, s = divmod(s, 60)
    return f"{int(m)} min {s:.0f} s" if m < 60 else f"{int(m // 60)} h {int(m % 60)} min"


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v)
    return str(v)


def show_run(run_dir: Path | str, max_rows: int = 30) -> str:
    """The text of ``hbm show``: what was fitted, how, how long, convergence, summary.

    Reads spec keys ``name``, ``formula``, ``family``, ``priors``, ``data``, ``inference.engine`` and
    fit.json keys ``engine``, ``timings`` (name -> seconds), ``devices``,
    ``data`` (e.g. rows, fingerprint), ``convergence`` (any key -> value).
    """
    rec = load_run(run_dir)
    spec, info = rec.spec, rec.fit_info
    inference = spec.get("inference") if isinstance(spec.get("inference"), dict) else {}
    rows = [("run", str(rec.path)), ("model", spec.get("name")), ("formula", spec.get("formula")),
            ("family", spec.get("family")), ("engine", info.get("engine") or inference.get("engine"))]
    data = info.get("data")
    if isinstance(data, Mapping):
        source = data.get("source") or spec.get("data")
        bits = [f"{data['rows']:,} rows" if isinstance(data.get("rows"), int) else None,
                *(f"{k} {_value(v)}" for k, v in data.items() if k not in ("rows", "source"))]
        rows.append(("data", (f"{source}: " if source else "") + ", ".join(b for b in bits if b)))
    elif data is not None:
        rows.append(("data", _value(data)))
    priors = spec.get("priors")
    if isinstance(priors, Mapping) and priors:
        rows += [("priors" if i == 0 else "", f"{k} {'~' if isinstance(v, str) else '='} {_value(v)}")
                 for i, (k, v) in enumerate(priors.items())]
    if info.get("devices") is not None:
        rows.append(("devices", _value(info["devices"])))
    timings = info.get("timings")
    if isinstance(timings, Mapping) and timings:
        rows.append(("timings", ", ".join(f"{k.removesuffix('_s')} {_seconds(v)}"
                                          for k, v in timings.items())))
    conv = info.get("convergence")
    if isinstance(conv, Mapping):
        rows += [("convergence" if i == 0 else "", f"{k}: {_value(v)}")
                 for i, (k, v) in enumerate(conv.items())]
    elif conv is not None:
        rows.append(("convergence", _value(conv)))
    width = max(len(k) for k, v in rows if v is not None)
    head = [f"{k.ljust(width)}  {v}" for k, v in rows if v is not None and v != ""]
    return "\n".join(head + ["", format_summary(rec.summary, max_rows=max_rows)])
