"""The rules of the house (docs/design.md, "The package"), read from the code with ``ast``.

* Each stage imports only the stages below it (``LAYERS``, lowest first); modules of one stage may
  import each other, without circles.
* No module imports another of hbm inside a function, except in ``hbm/cli/`` (where a command
  loads what it needs); a function-local import hides a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hbm"
LAYERS = ("errors", "vocabulary", "frontend", "spec", "ir", "data", "resolve", "lowering", "engines",
          "results", "io", "pipeline", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    """The stage of ``hbm.<stage>[.x]``; the package's own face is above every stage."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hbm"


def imports(path: Path, mod: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported hbm module, line, inside a function) for every import of an hbm module in ``path``
    (the module ``mod``, by default the one at ``path``)."""
    tree = ast.parse(path.read_text())
    mod = mod or module_name(path)
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - child.level + 1] + ([base] if base else []))
                if base == "hbm" or base.startswith("hbm."):
                    for a in child.names:   # `from hbm.x import y`: y may be a module
                        sub = f"{base}.{a.name}"
                        target = sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists() \
                            or (PKG.parent / sub.replace(".", "/")).is_dir() else base
                        found.append((target, child.lineno, in_function))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name == "hbm" or a.name.startswith("hbm."):
                        found.append((a.name, child.lineno, in_function))
            visit(child, inside)
    visit(tree, False)
    return [(m, line, f) for m, line, f in found if m != mod]


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def test_every_module_belongs_to_a_stage():
    strays = [m for m in MODULES if m != "hbm" and stage(m) not in LAYERS]
    assert not strays, f"modules outside every stage of LAYERS: {strays}"


def test_stages_import_only_the_stages_below():
    bad = []
    for mod, path in MODULES.items():
        if mod == "hbm":
            continue
        for target, line, _ in imports(path):
            if target == "hbm":
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} imports the package face 'hbm'")
            elif LAYERS.index(stage(target)) > LAYERS.index(stage(mod)):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} ({stage(mod)}) imports {target} "
                           f"({stage(target)}), a later stage")
    assert not bad, "imports against the stage order:\n" + "\n".join(bad)


def test_no_function_local_imports_outside_the_cli():
    bad = [f"{path.relative_to(PKG.parent)}:{line}: {mod} imports {target} inside a function"
           for mod, path in MODULES.items() if stage(mod) != "cli"
           for target, line, local in imports(path) if local]
    assert not bad, "function-local imports (import at the top of the module):\n" + "\n".join(bad)


def test_no_import_circles():
    graph = {m: sorted({t for t, _, _ in imports(p) if t in MODULES and t != "hbm"}) for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def dfs(m):
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2
    for m in graph:
        if m not in state:
            dfs(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def violations(mod: str, path: Path) -> list[str]:
    """What the rules above say of one module."""
    out = []
    for target, line, local in imports(path, mod):
        if local and stage(mod) != "cli":
            out.append(f"{mod}:{line} imports {target} inside a function")
        if LAYERS.index(stage(target)) > LAYERS.index(stage(mod)):
            out.append(f"{mod}:{line} imports {target}, a later stage")
    return out


@pytest.mark.parametrize("source, rule", [
    ("from hbm.pipeline.fit import fit\n", "hbm.data.probe:1 imports hbm.pipeline.fit, a later stage"),
    ("from hbm.lowering import model\n", "hbm.data.probe:1 imports hbm.lowering.model, a later stage"),
    ("def f():\n    from hbm.errors import HbmError\n", "hbm.data.probe:2 imports hbm.errors inside a function"),
])
def test_the_rules_name_a_violation(tmp_path, source, rule):
    """A module of the ``data`` stage that breaks a rule is named, with the module it imports."""
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    assert violations("hbm.data.probe", probe) == [rule]
    assert violations("hbm.cli.probe", probe) == []
