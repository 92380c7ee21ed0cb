"""Issue #12: inputs beyond hbm/vocabulary/limits.py are refused as HbmError before the work they would
cost, and everything up to each limit still parses, resolves and compiles.

The bad-input corpus (tests/bad_inputs/) holds the cases a spec and a small file can express; this file
holds the rest (a FIFO, /dev/zero, a 100,001-row factor), the tests at the limits, and generated deep and
long formulas and YAML (hypothesis).
"""
from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbm import cli
from hbm.data.table import TableInfo
from hbm.engines.base import Option, check_options
from hbm.engines.optim import build_optax
from hbm.engines.registry import get_engine
from hbm.errors import HbmError
from hbm.frontend.parse import parse_call, parse_formula, parse_nonlinear
from hbm.pipeline.compiled import compile_table
from hbm.pipeline.fit import with_checked_options
from hbm.resolve.linear import resolve
from hbm.spec import InferenceSpec, load_spec
from hbm.vocabulary.limits import MAX_NESTING, MAX_TERMS, MAX_YAML_DEPTH

REFUSED_WITHIN_S = 10          # the target for any bad input
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _table(k: int, n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(k)})
    df["y"] = rng.normal(size=n)
    df["g"] = [f"g{i % 3}" for i in range(n)]
    return df


def _cli(argv: list[str], capsys) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err, time.perf_counter() - t0


# ---------------------------------------------------------------- at the limits: everything works
def test_a_formula_at_both_limits_parses_resolves_and_compiles():
    """MAX_NESTING parentheses around a sum of MAX_TERMS operators: the deepest AST the limits allow
    (plus a group term's two), with no RecursionError in the parser, the resolver, str() or the lowering."""
    k = MAX_TERMS - 1
    body = " + ".join(f"x{i}" for i in range(k))
    text = "y ~ " + "(" * MAX_NESTING + body + ")" * MAX_NESTING + " + (1 | g)"
    assert sum(text.count(c) for c in "+|") == MAX_TERMS
    assert parse_formula(str(parse_formula(text))) == parse_formula(text)
    model = compile_table(load_spec({"formula": text}), _table(k))
    assert len(model.ir.population) == k + 1 and "x147" in model.describe()


def test_one_more_level_or_operator_is_refused():
    deep = "y ~ " + "(" * (MAX_NESTING + 1) + "x" + ")" * (MAX_NESTING + 1)
    with pytest.raises(HbmError, match=f"more than {MAX_NESTING} deep") as e:
        parse_formula(deep)
    assert e.value.problems[0].span.start == 4 + MAX_NESTING        # the caret: the first paren too deep
    long = "y ~ " + " + ".join(["x"] * (MAX_TERMS + 2))
    with pytest.raises(HbmError, match=f"has {MAX_TERMS + 1} operators"):
        parse_formula(long)


def test_a_nonlinear_formula_at_the_limits_compiles():
    text = "y ~ a * " + "(" * MAX_NESTING + " + ".join(["x0"] * (MAX_TERMS - 1)) + ")" * MAX_NESTING
    spec = load_spec({"formula": text, "params": {"a": "1 + (1 | g)"}})
    assert parse_nonlinear(text).rhs is not None
    compile_table(spec, _table(1))
    unary = "y ~ a * " + "-" * (MAX_TERMS + 1) + "x0"      # unary minus nests without parentheses
    with pytest.raises(HbmError, match="operators"):
        parse_nonlinear(unary)


def test_call_text_counts_nesting_not_commas():
    assert parse_call("[" * MAX_NESTING + "1" + "]" * MAX_NESTING)
    assert parse_call("f(" + ", ".join(["1"] * 500) + ")").args == (1.0,) * 500   # commas do not nest
    with pytest.raises(HbmError, match="more than 50 deep"):
        parse_call("normal(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1))


def test_yaml_at_the_depth_limit_loads():
    levels = MAX_YAML_DEPTH - 3           # the spec, simulate: and columns: are the first three
    nested = "[" * levels + "1" + "]" * levels
    spec = load_spec(f"formula: y ~ x\nsimulate:\n  columns:\n    x: {nested}\n")
    assert spec.simulate is not None
    with pytest.raises(HbmError, match="nested more than 50 deep"):
        load_spec(f"formula: y ~ x\nsimulate:\n  columns:\n    x: [{nested}]\n")


def test_aliases_within_the_budget_load():
    text = "formula: y ~ x\nsimulate:\n  rows: 10\n  columns:\n    a: &a {levels: 3}\n    b: *a\n    c: *a\n"
    assert dict(load_spec(text).simulate.columns)["c"] == (("levels", 3),)


# ---------------------------------------------------------------- what the corpus cannot hold
def test_a_fifo_is_refused_not_read(tmp_path, capsys):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    (tmp_path / "spec.yaml").write_text("formula: y ~ x\n")
    code, err, seconds = _cli(["check", str(tmp_path / "spec.yaml"), str(fifo)], capsys)
    assert code == 2 and seconds < REFUSED_WITHIN_S
    assert "is a named pipe (FIFO), not a regular file" in err and "Traceback" not in err


def test_dev_zero_is_refused_not_read(tmp_path, capsys):
    link = tmp_path / "data.csv"
    link.symlink_to("/dev/zero")
    (tmp_path / "spec.yaml").write_text(f"formula: y ~ x\ndata: {link}\n")
    code, err, seconds = _cli(["check", str(tmp_path / "spec.yaml")], capsys)
    assert code == 2 and seconds < REFUSED_WITHIN_S
    assert "data path" in err and "is a device, not a regular file" in err


def test_a_spec_that_is_a_fifo_is_refused(tmp_path, capsys):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    code, err, _ = _cli(["check", str(fifo)], capsys)
    assert code == 2 and "spec path" in err and "named pipe" in err


def test_a_factor_of_100000_levels_is_refused_before_its_design(tmp_path, capsys):
    n = 100_001
    pd.DataFrame({"y": np.zeros(n), "g": np.arange(n) % 100_000}).to_csv(tmp_path / "big.csv", index=False)
    (tmp_path / "spec.yaml").write_text("formula: y ~ factor(g)\n")
    code, err, seconds = _cli(["check", str(tmp_path / "spec.yaml"), str(tmp_path / "big.csv")], capsys)
    assert code == 2 and seconds < REFUSED_WITHIN_S, err
    assert "the design matrix would take 39,999,999,996 bytes (100,001 rows x 99,999 columns x 4 bytes)" in err
    assert "'factor(g)' has 100,000 levels" in err and "(1 | g)" in err


def test_duplicate_columns_of_a_dataframe_are_named():
    df = pd.DataFrame([[1.0, 2.0, 3.0]], columns=["y", "x", "x"])
    with pytest.raises(HbmError, match=r"'x' \(2 times\)"):
        TableInfo(df)


def test_datetime_columns_work_as_groups_and_factors():
    df = _table(1, 20).assign(t=pd.date_range("2024-01-01", periods=20, freq="D").repeat(1)[np.arange(20) % 4])
    model = compile_table(load_spec({"formula": "y ~ factor(t) + (1 | t)"}), df)
    assert "4 levels" in model.describe()


# ---------------------------------------------------------------- optimizers and engine options
@pytest.mark.parametrize("text, fragment", [
    ("adam(lr=-1)", "lr must be a positive number, got -1"), ("adam(lr=0)", "got 0"),
    ("adam(lr=1e999)", "got inf"), ("sgd(0.1, momentum=1)", "momentum must be at least 0 and below 1"),
    ("adamw(lr=0.01, weight_decay=-0.1)", "weight_decay must be at least 0")])
def test_optimizer_arguments_out_of_range(text, fragment):
    with pytest.raises(HbmError, match=fragment.replace("(", r"\(")):
        build_optax(text)


def test_optimizers_in_range_build():
    for text in ("adam(lr=0.01)", "adamw(lr=exponential_decay(0.01, 1000, 0.9))", "sgd(lr=0.1, momentum=0.9)"):
        build_optax(text)


def test_options_are_converted_by_the_declaration():
    opts = check_options({"block": "20", "stop": "LOSS"}, get_engine("svi").options, "svi")
    assert opts == {"block": 20, "stop": "loss"}
    assert Option("bool").convert("false") is False
    for bad in ("abc", 2.5, 0, True):
        with pytest.raises(ValueError, match="whole number >= 1"):
            Option("int", minimum=1).convert(bad)
    assert check_options({"anything": [1]}, None, "plugin") == {"anything": [1]}   # declares none


def test_auto_takes_the_options_of_the_engines_it_may_pick():
    config = with_checked_options(InferenceSpec(options=(("block", 10.0), ("dense_mass", "true"))))
    assert dict(config.options) == {"block": 10, "dense_mass": True}
    with pytest.raises(HbmError, match="unknown option 'block' for engine nuts"):
        with_checked_options(InferenceSpec(engine="nuts", options=(("block", 10),)))
    chosen = with_checked_options(InferenceSpec(engine="nuts", options=(("block", 10),)), auto=True)
    assert dict(chosen.options) == {"block": 10}     # auto chose nuts: an svi option is not an error


# ---------------------------------------------------------------- generated input: HbmError or success, quickly
_atoms = st.sampled_from(["x0", "x1", "log(x0)", "1", "0", "factor(g)", "(1 | g)", "x0:x1", "center(x1)"])
_ops = st.sampled_from([" + ", " - ", " * ", ":", " | ", " / ", " ^ ", " || ", "-"])


@st.composite
def _formulas(draw):
    """Sums of up to 400 terms, each wrapped in up to 120 parentheses (open and close may not match)."""
    n = draw(st.integers(1, 400))
    parts = []
    for _ in range(n):
        depth = draw(st.integers(0, 120))
        closing = depth if draw(st.booleans()) else draw(st.integers(0, 120))
        parts.append("(" * depth + draw(_atoms) + ")" * closing)
        parts.append(draw(_ops))
    return "y ~ " + "".join(parts[:-1])


@FUZZ
@given(_formulas())
def test_generated_deep_and_long_formulas(text):
    t0 = time.perf_counter()
    try:
        formula = parse_formula(text)
    except HbmError:
        formula = None
    if formula is not None:
        try:
            resolve(formula, TableInfo(_table(2), text))
        except HbmError:
            pass
    assert time.perf_counter() - t0 < 2.0


@st.composite
def _yaml(draw):
    """YAML nested up to 200 deep, with aliases of aliases up to 8 wide."""
    depth = draw(st.integers(0, 200))
    flow = "[" * depth + "1" + "]" * depth
    width, levels = draw(st.integers(1, 8)), draw(st.integers(0, 9))
    lines = ["    a0: &a0 [1, 2]"] + [f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
                                      for i in range(1, levels + 1)]
    return f"formula: y ~ x\nsimulate:\n  columns:\n    deep: {flow}\n" + "\n".join(lines) + "\n"


@FUZZ
@given(_yaml())
def test_generated_deep_and_aliased_yaml(text):
    t0 = time.perf_counter()
    try:
        load_spec(text)
    except HbmError:
        pass
    assert time.perf_counter() - t0 < 2.0
