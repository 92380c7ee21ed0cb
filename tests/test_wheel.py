"""The wheel holds everything hbm needs at run time (the formula grammar is package data)."""
from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_into_a_fresh_environment_and_checks_a_spec(tmp_path):
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, cwd=tmp_path, capture_output=True)
    wheel = next(out.glob("hbm-*.whl"))
    assert "hbm/frontend/formula.lark" in zipfile.ZipFile(wheel).namelist()
    env = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    py = env / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    # the dependencies come from this environment (appended after the wheel's own site-packages,
    # and without this environment's .pth files, so the repository's editable hbm stays out)
    fresh_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
    (fresh_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    where = subprocess.run([str(py), "-c", "import hbm; print(hbm.__file__)"], check=True, cwd=tmp_path,
                           capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(fresh_site)), where
    spec = tmp_path / "spec.yaml"
    spec.write_text((ROOT / "specs" / "sleepstudy.yaml").read_text())
    r = subprocess.run([str(env / "bin" / "hbm"), "check", str(spec)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "formula   Reaction ~ Days + (Days | Subject)" in r.stdout and "(1 + Days | Subject)" in r.stdout
