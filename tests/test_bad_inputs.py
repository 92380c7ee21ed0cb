"""Every case of tests/bad_inputs/ through the command line: exit 2, the expected message, no traceback.

Most cases run in-process through ``hbm.cli.main`` (fast); those marked with a
``subprocess`` file run through a real ``python -m hbm.cli`` process. See
tests/bad_inputs/README.md for the layout of a case.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hbm import cli

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "bad_inputs"
SHARED = CASES / "_shared" / "data.csv"
REFUSED_WITHIN_S = 10   # issue #12: no bad input runs longer than this before it is refused (a subprocess case
                        # includes starting Python and importing hbm)


def _cases():
    return sorted(p.name for p in CASES.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _argv(case: Path, tmp: Path) -> list[str]:
    data = next((str(p) for p in sorted(case.glob("data.*"))), str(SHARED))
    args_file = case / "args.txt"
    text = args_file.read_text().strip() if args_file.exists() else "check {dir}/spec.yaml {data}"
    return [a.format(dir=case, data=data, shared=SHARED, tmp=tmp) for a in shlex.split(text)]


def _materialise(case: Path, tmp: Path) -> Path:
    """A copy of the case with ``{tmp}`` filled in (cases that write, or would, must only touch tmp)."""
    if not any("{tmp}" in p.read_text(errors="ignore") for p in case.glob("spec.yaml")):
        return case
    copy = tmp / "case"
    copy.mkdir()
    for p in case.iterdir():
        if p.is_file():
            text = p.read_bytes()
            if p.name == "spec.yaml":
                text = text.replace(b"{tmp}", str(tmp).encode())
            (copy / p.name).write_bytes(text)
    return copy


def test_the_corpus_is_large_enough():
    assert len(_cases()) >= 40


@pytest.mark.parametrize("name", _cases())
def test_bad_input(name, tmp_path, capsys, monkeypatch):
    case = CASES / name
    monkeypatch.chdir(tmp_path)   # a default run directory (runs/...) would land here, never in the repo
    src = _materialise(case, tmp_path)
    argv = _argv(src, tmp_path)
    t0 = time.perf_counter()
    if (case / "subprocess").exists():
        env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
        r = subprocess.run([sys.executable, "-m", "hbm.cli", *argv], capture_output=True, text=True,
                           env=env, timeout=300, cwd=tmp_path)
        code, err = r.returncode, r.stdout + r.stderr
    else:
        try:
            code = cli.main(argv)
        except SystemExit as e:   # argparse's own errors
            code = e.code
        out = capsys.readouterr()
        err = out.out + out.err
    seconds = time.perf_counter() - t0
    assert code == 2, f"exit {code}, expected 2:\n{err}"
    assert seconds < REFUSED_WITHIN_S, f"refused after {seconds:.1f} s (the target is {REFUSED_WITHIN_S} s)"
    assert "Traceback" not in err and "internal error" not in err, err
    for fragment in (case / "expect.txt").read_text().splitlines():
        if fragment.strip():
            assert fragment.format(tmp=tmp_path) in err, f"expected {fragment!r} in:\n{err}"
    for rel in ((case / "absent.txt").read_text().split() if (case / "absent.txt").exists() else []):
        assert not (tmp_path / rel).exists(), f"{rel} should not exist"
