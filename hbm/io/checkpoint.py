"""Checkpoints: a long fit's state on disk, so that a crash costs at most one interval.

A fit started by ``hbm fit`` works in ``<run_dir>.partial/`` until it is done::

    spec.yaml      the spec as resolved (``--set`` overrides applied)
    resume.json    what ``hbm fit --resume`` needs: the data, its fingerprint, the run directory
    svi.npz        SVI state (parameters, optimiser state, step count, RNG key) and the loop's
                   own state (step, stopping rule), replaced atomically at every checkpoint
    loss.f64       the loss history, appended at every checkpoint (raw float64; svi.npz says
                   how many values belong to it, so a torn append is cut off on reading)
    chain-<k>.npz  each finished NUTS chain (chains run one after another)
    lock           held (flock) by the process fitting, so two fits never share the directory

When the fit ends, the run directory is written (all at once, see
:func:`hbm.io.rundir.write_run`) and the partial directory removed. Every file
here is written under a temporary name, flushed, and renamed into place: a
SIGKILL at any moment leaves the previous checkpoint whole.

A checkpoint is taken at the end of a piece of steps (``inference.checkpoint_every``
steps, or the convergence block when that is smaller or unset) when at least
``checkpoint_every`` steps or ``checkpoint_seconds`` seconds have passed since
the last one. The pieces do not change the arithmetic (the same compiled loop runs
the same updates, whatever the piece sizes), so a resumed fit ends where an
uninterrupted one with the same seed ends.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hbm.errors import HbmError, os_error
from hbm.io.rundir import _plain, remove_stale_siblings, temp_sibling

PARTIAL_SUFFIX = ".partial"
SVI_FILE, LOSS_FILE, RESUME_FILE, SPEC_FILE = "svi.npz", "loss.f64", "resume.json", "spec.yaml"


# ---------------------------------------------------------------- atomic files

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path | str, content: bytes | str | Callable[[Any], None]) -> Path:
    """Write ``path`` under a temporary name, flush it to disk, and rename it into place.

    ``content``: bytes, text, or ``writer(binary_file)``. Readers see the old file or the
    new one, never half of one.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else bytes(content))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise os_error(e, "cannot write", path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except OSError as e:
        if e.errno is not None:
            raise os_error(e, "cannot read", path) from None
        raise _damaged(path.parent, path.name, f"cannot be read ({e})") from None
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint is bad input, said plainly
        raise _damaged(path.parent, path.name, f"cannot be read ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- the checkpointer

@dataclass
class SVICheckpoint:
    """A saved optimisation: the SVI state's leaves, the step, the losses, the loop's own state."""

    leaves: list[np.ndarray]
    step: int
    loss: np.ndarray
    loop: dict


class Checkpointer:
    """Saves and restores an engine's state in ``directory`` (see the module docstring).

    ``every``: steps between checkpoints; ``seconds``: time between them (either may be None).
    """

    def __init__(self, directory: Path | str, every: int | None = None, seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.dir = Path(directory)   # created on the first save, not before
        self.every = int(every) if every else None
        self.seconds = float(seconds) if seconds else None
        self.clock = clock
        self.last_step = 0
        self.last_time = clock()
        self.saves = 0
        self.loss_valid = 0          # how many values of loss.f64 the saved checkpoint owns
        self.resumed_from: int | None = None

    @classmethod
    def from_config(cls, directory: Path | str, config: Any) -> "Checkpointer":
        return cls(directory, getattr(config, "checkpoint_every", None),
                   getattr(config, "checkpoint_seconds", 60.0))

    # ---- when
    def piece(self, block: int) -> int:
        """Steps per compiled call: the block, or fewer when checkpoints come more often."""
        return max(1, min(block, self.every)) if self.every else block

    def due(self, step: int) -> bool:
        if self.every and step - self.last_step >= self.every:
            return True
        return bool(self.seconds) and self.clock() - self.last_time >= self.seconds

    # ---- SVI
    def save_svi(self, state, step: int, loss: np.ndarray, loop: dict) -> bool:
        """Save the SVI ``state`` (a pytree of arrays) after ``step`` steps; ``loss[:step]`` is its history.

        Only a state whose every value (parameters and optimiser state alike) is finite is saved: a
        resumed fit must be able to go on from it. Returns whether it was saved."""
        import jax
        leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]
        if not all_finite(leaves):
            return False
        loss = np.asarray(loss, np.float64).reshape(-1)[:step]
        if loss.size < step:
            raise ValueError(f"a checkpoint at step {step} needs {step} losses, got {loss.size}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, "cannot create the checkpoint directory", self.dir) from None
        path = self.dir / LOSS_FILE
        if step < self.loss_valid:  # never expected: a history shorter than the one on disk
            atomic_write(path, loss.tobytes())
        else:  # append what is new, after cutting off anything a killed process left behind
            try:
                append_losses(path, self.loss_valid, loss[self.loss_valid:step])
            except OSError as e:
                raise os_error(e, "cannot write", path) from None
        self.loss_valid = step
        meta = {"step": int(step), "loop": loop, "n_leaves": len(leaves), "time": time.time()}
        arrays = {f"leaf_{i}": x for i, x in enumerate(leaves)}
        arrays["meta"] = np.frombuffer(json.dumps(meta, default=_json_default).encode(), np.uint8)
        atomic_write(self.dir / SVI_FILE, _npz_bytes(arrays))
        self.last_step, self.last_time = step, self.clock()
        self.saves += 1
        return True

    def load_svi(self) -> SVICheckpoint | None:
        """The saved optimisation, or None when there is none."""
        path = self.dir / SVI_FILE
        if not path.exists():
            return None
        z = _read_npz(path)
        try:
            meta = json.loads(bytes(z["meta"]).decode())
            if not isinstance(meta, dict) or not isinstance(meta.get("loop") or {}, dict):
                raise ValueError(f"its meta data is {json.dumps(meta)[:60]}, not what hbm writes")
            leaves = [z[f"leaf_{i}"] for i in range(int(meta["n_leaves"]))]
            step = int(meta["step"])
            if step < 0:
                raise ValueError(f"step {step}")
        except (KeyError, ValueError, TypeError) as e:
            raise _damaged(self.dir, SVI_FILE, f"is incomplete or edited ({type(e).__name__}: {e})") from None
        if not all_finite(leaves):
            raise _damaged(self.dir, SVI_FILE, "holds non-finite values (written by an hbm that saved the "
                                               "state of a diverging fit)")
        lpath = self.dir / LOSS_FILE
        loss = np.fromfile(lpath, np.float64) if lpath.exists() else np.empty(0)
        if loss.size < step:
            raise HbmError(f"checkpoint {path} is at step {step} but {lpath} holds {loss.size} losses",
                           hint="the checkpoint directory was edited; delete it to start the fit again")
        self.last_step, self.resumed_from, self.loss_valid = step, step, step
        return SVICheckpoint(leaves, step, loss[:step].copy(), dict(meta.get("loop") or {}))

    def restore(self, saved: SVICheckpoint, like):
        """``saved``'s leaves in the structure (and on the devices) of the freshly initialised ``like``."""
        import jax
        ref, treedef = jax.tree.flatten(like)
        if len(ref) != len(saved.leaves) or any(
                np.shape(a) != np.shape(b) or np.dtype(a.dtype) != np.dtype(b.dtype)
                for a, b in zip(ref, saved.leaves)):
            raise HbmError(f"the checkpoint in {self.dir} does not fit this model and inference settings",
                           hint="it was written by a fit with another formula, data, guide or optimizer; "
                                "resume with the settings it was started with, or delete it")
        leaves = [jax.device_put(b, getattr(a, "sharding", None)) for a, b in zip(ref, saved.leaves)]
        return jax.tree.unflatten(treedef, leaves)

    # ---- NUTS chains
    def save_chain(self, k: int, samples: dict, stats: dict, meta: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"s:{n}": np.asarray(v) for n, v in samples.items()}
        arrays.update({f"t:{n}": np.asarray(v) for n, v in stats.items()})
        arrays["meta"] = np.frombuffer(json.dumps(meta, default=_json_default).encode(), np.uint8)
        atomic_write(self.dir / f"chain-{k}.npz", _npz_bytes(arrays))
        self.saves += 1

    def load_chain(self, k: int, meta: dict) -> tuple[dict, dict] | None:
        """Chain ``k`` as saved, if it was saved with the same ``meta`` (settings); else None."""
        path = self.dir / f"chain-{k}.npz"
        if not path.exists():
            return None
        z = _read_npz(path)
        try:
            saved_meta = json.loads(bytes(z["meta"]).decode()) if "meta" in z else None
        except ValueError as e:
            raise _damaged(self.dir, path.name, f"is incomplete or edited ({e})") from None
        if saved_meta != json.loads(json.dumps(meta, default=_json_default)):
            return None
        samples = {n[2:]: v for n, v in z.items() if n.startswith("s:")}
        stats = {n[2:]: v for n, v in z.items() if n.startswith("t:")}
        return samples, stats


def all_finite(leaves) -> bool:
    """Whether every floating value of ``leaves`` (arrays) is finite; integer leaves (keys, counts) pass."""
    return all(np.isfinite(x).all() for x in map(np.asarray, leaves)
               if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating))


def append_losses(path: Path, keep: int, new: np.ndarray) -> None:
    """Cut ``path`` (raw float64) to its first ``keep`` values (a killed process's torn append goes)
    and append ``new``, flushed to disk."""
    with open(path, "ab") as f:
        f.truncate(keep * 8)
        f.write(np.asarray(new, np.float64).tobytes())
        f.flush()
        os.fsync(f.fileno())


def _damaged(part: Path, name: str, what: str) -> HbmError:
    run = run_dir_of(part)
    return HbmError(f"the interrupted fit in {part} is damaged: file {name} {what}", where=str(part / name),
                    hint=f"delete {part} and start the fit again (hbm fit SPEC DATA --out {run}; "
                         "the resolved spec is kept in its spec.yaml)")


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ---------------------------------------------------------------- partial run directories

def partial_dir(run_dir: Path | str) -> Path:
    """Where a fit writing ``run_dir`` keeps its checkpoints: ``<run_dir>.partial``."""
    p = Path(run_dir)
    return p if p.name.endswith(PARTIAL_SUFFIX) else p.with_name(p.name + PARTIAL_SUFFIX)


def run_dir_of(partial: Path | str) -> Path:
    p = Path(partial)
    return p.with_name(p.name[: -len(PARTIAL_SUFFIX)]) if p.name.endswith(PARTIAL_SUFFIX) else p


LOCK_FILE = "lock"


def lock_partial(part: Path):
    """Hold ``part`` for this process (an exclusive ``flock``, released when the process ends, even
    by SIGKILL); the returned file keeps the lock until closed. Two fits never share a partial directory."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): no guard
        return None
    part.mkdir(parents=True, exist_ok=True)
    f = open(part / LOCK_FILE, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise HbmError(f"another hbm process is fitting in {part} right now",
                       hint="wait for it to finish, or stop it first") from None
    return f


def is_locked(part: Path) -> bool:
    """Whether a running process holds ``part``."""
    if not (part / LOCK_FILE).exists():
        return False
    try:
        lock_partial(part).close()
        return False
    except HbmError:
        return True


def start_partial(run_dir: Path, spec_dict: dict, overwrite: bool = False) -> Path:
    """Create ``<run_dir>.partial`` holding the resolved spec; refuse to clobber an interrupted fit."""
    import yaml
    part = partial_dir(run_dir)
    if part.exists():
        if is_locked(part):
            raise HbmError(f"another hbm process is fitting {run_dir} right now (in {part})",
                           hint="wait for it to finish, or choose another --out")
        if not overwrite:
            raise HbmError(f"an interrupted fit of {run_dir} is in {part}",
                           hint=f"continue it with `hbm fit --resume {run_dir}`, or pass --overwrite "
                                "to start again")
        shutil.rmtree(part)
    try:
        part.mkdir(parents=True)
    except OSError as e:
        raise os_error(e, "cannot create the checkpoint directory", part) from None
    try:
        atomic_write(part / SPEC_FILE, yaml.safe_dump(_plain(spec_dict), sort_keys=False, allow_unicode=True))
    except BaseException:       # a directory without its spec could not be resumed: leave none
        shutil.rmtree(part, ignore_errors=True)
        raise
    return part


def write_resume_info(part: Path, info: dict) -> None:
    atomic_write(part / RESUME_FILE, json.dumps(info, indent=2, default=_json_default) + "\n")


def read_partial(path: Path | str) -> tuple[Path, Path, dict, dict]:
    """(partial dir, run dir, spec dict, resume info) of an interrupted fit.

    ``path`` is the run directory the fit was writing or its ``.partial`` directory.
    """
    import yaml
    path = Path(path)
    part = partial_dir(path)
    run = run_dir_of(part)
    if not part.is_dir():
        if run.is_dir() and (run / "fit.json").exists():
            raise HbmError(f"the fit of {run} has finished; there is nothing to resume",
                           hint=f"see it with `hbm show {run}`")
        raise HbmError(f"no interrupted fit at {path} (no {part.name} directory)",
                       hint="--resume takes the run directory (--out) of a fit that was interrupted")
    if is_locked(part):
        raise HbmError(f"the fit of {run} is still running (in {part})",
                       hint="--resume continues a fit that was interrupted; wait for this one to finish")
    spec_path, info_path = part / SPEC_FILE, part / RESUME_FILE
    if not spec_path.exists() or not info_path.exists():
        raise HbmError(f"{part} holds no resumable fit (the fit stopped before it had started: no "
                       f"{RESUME_FILE if spec_path.exists() else SPEC_FILE})",
                       hint=f"start the fit again (hbm fit SPEC DATA --out {run}: it replaces {part.name}), "
                            f"or delete {part}")
    docs = {}
    for name, path_, load in ((SPEC_FILE, spec_path, yaml.safe_load), (RESUME_FILE, info_path, json.loads)):
        try:
            docs[name] = load(path_.read_text(encoding="utf-8"))
        except OSError as e:
            raise os_error(e, "cannot read", path_) from None
        except (ValueError, yaml.YAMLError) as e:
            raise _damaged(part, name, f"cannot be read ({str(e).splitlines()[0]})") from None
        if not isinstance(docs[name], dict):
            raise _damaged(part, name, f"holds {json.dumps(docs[name], default=str)[:40]}, not a mapping")
    info = docs[RESUME_FILE]
    for key, kinds in (("data", (str, type(None))), ("source", (str, type(None))),
                       ("fingerprint", (str, type(None))), ("overwrite", (bool, type(None)))):
        if not isinstance(info.get(key), kinds):
            raise _damaged(part, RESUME_FILE, f"has {key}: {json.dumps(info.get(key), default=str)[:40]}, "
                                              "not what hbm writes")
    return part, run, docs[SPEC_FILE], info


def partial_holds_state(part: Path) -> bool:
    """Whether ``part`` holds anything a resumed fit would go on from (an SVI state, a finished chain)."""
    return (part / SVI_FILE).exists() or any(part.glob("chain-*.npz"))


def clean_for_resume(part: Path) -> list[Path]:
    """Remove what killed processes left around an interrupted fit (only while holding ``part``'s lock):
    temporary files inside ``part`` and the run directory's temporary siblings (a half-written run);
    returns what was removed."""
    gone = [q for q in part.glob(".*.tmp-*") if q.is_file()]
    for q in gone:
        q.unlink(missing_ok=True)
    return gone + remove_stale_siblings(run_dir_of(part))


def remove_partial(part: Path) -> None:
    shutil.rmtree(part, ignore_errors=True)
