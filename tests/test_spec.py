"""YAML specs: defaults, checking (every error names its key), round trips, overrides, paths."""
import dataclasses
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as hs

from hbm.errors import HbmError
from hbm.frontend.parse import Fn
from hbm.frontend.priors import Fixed, Prior
from hbm.spec import InferenceSpec, SimulateSpec, Spec, load_spec, prior_for

SEED_SPEC = """\
name: price_elasticity
formula: log(units) ~ log(price) | product/category + 1 | product + (1 | category:period)
family: poisson
priors:
  log(price): normal(-2, 1)
  sd(log(price) | category): 1
  sd(log(price) | product): 2
  sd(1 | product): 3
  sd(1 | category:period): 3
  Intercept: normal(0, 5)
  cor(1, Days | Subject): lkj(2)
data: sales.parquet
simulate: {rows: 100000, seed: 0}
inference:
  engine: svi
  guide: normal
  loss: elbo
  particles: 1
  optimizer: adam(lr=0.01)
  steps: 20000
  draws: 1000
  seed: 0
devices: auto
batch_size: null
"""


def err(source, **kw) -> HbmError:
    with pytest.raises(HbmError) as e:
        load_spec(source, **kw)
    return e.value


def messages(e: HbmError) -> list[str]:
    return [p.message for p in e.problems]


def hints(e: HbmError) -> list[str]:
    return [p.hint or "" for p in e.problems]


# ---------------------------------------------------------------- defaults and loading
def test_defaults():
    s = load_spec("formula: y ~ x")
    assert s == Spec(formula="y ~ x")
    assert (s.name, s.family, s.priors, s.data, s.simulate) == ("model", None, (), None, None)
    assert (s.devices, s.batch_size, s.noncentered, s.params, s.bounds) == ("auto", None, True, (), ())
    i = s.inference
    assert (i.engine, i.guide, i.rank, i.loss, i.alpha, i.particles) == ("auto", "structured", None, "elbo", 0.0, 1)
    # no optimizer given: the guide's calibrated default
    assert i.optimizer is None and i.optimizer_fn == Fn("adam", (), (("lr", 0.003),))
    normal = load_spec({"formula": "y ~ x", "inference": {"engine": "svi", "guide": "normal"}}).inference
    assert normal.optimizer_fn == Fn("adam", (), (("lr", 0.01),))
    assert load_spec({"formula": "y ~ x", "inference": {"engine": "map"}}).inference.optimizer_fn == normal.optimizer_fn
    given = load_spec({"formula": "y ~ x", "inference": {"engine": "svi", "optimizer": "sgd(lr=0.1)"}}).inference
    assert given.optimizer_fn == Fn("sgd", (), (("lr", 0.1),))
    assert (i.steps, i.tolerance, i.draws, i.seed) == (20000, 1e-4, 1000, 0)
    assert (i.warmup, i.samples, i.chains, i.target_accept, i.max_tree_depth, i.options) == (
        1000, 1000, 4, 0.8, 10, ())
    assert SimulateSpec() == SimulateSpec(rows=1000, seed=0, columns=(), params=())
    hash(s)


def test_seed_spec_from_file(tmp_path):
    path = tmp_path / "price.yaml"
    path.write_text(SEED_SPEC)
    s = load_spec(path)
    assert s.name == "price_elasticity" and s.family == "poisson"
    assert s.formula.startswith("log(units) ~ log(price) | product/category")
    assert dict(s.priors)["log(price)"] == Prior("normal", (-2.0, 1.0))
    assert dict(s.priors)["sd(1 | product)"] == Fixed(3.0)
    assert dict(s.priors)["cor(1, Days | Subject)"] == Prior("lkj", (2.0,))
    assert [k for k, _ in s.priors][:2] == ["log(price)", "sd(log(price) | category)"]  # file order
    assert s.simulate == SimulateSpec(rows=100000, seed=0)
    assert s.data == str(tmp_path / "sales.parquet")
    assert s.source_path == str(path.resolve())
    assert load_spec(str(path)) == s


def test_sources():
    s = load_spec({"formula": "y ~ x"})
    assert load_spec(s) is s
    assert load_spec("formula: y ~ x\nfamily: normal\n").family == "normal"
    assert load_spec("formula: y ~ x").formula == "y ~ x"  # text with ':' and no newline
    with pytest.raises(HbmError, match="a spec must be a path, YAML text, a dict or a Spec"):
        load_spec(42)


def test_numbers_written_the_yaml_1_1_way():
    s = load_spec("formula: y ~ x\ninference: {tolerance: 1e-4, steps: 1e4, alpha: '0.5', seed: 3.0}")
    assert s.inference.tolerance == 1e-4 and s.inference.steps == 10000
    assert s.inference.alpha == 0.5 and s.inference.seed == 3


def test_aliases_and_case():
    assert load_spec({"formula": "y ~ x", "family": "gaussian"}).family == "normal"
    assert load_spec({"formula": "y ~ x", "family": "Poisson"}).family == "poisson"
    assert load_spec({"formula": "y ~ x", "family": "negbinomial"}).family == "negative_binomial"
    assert load_spec({"formula": "y ~ x", "inference": {"engine": "svi", "guide": "LowRank", "rank": 4}}).inference.rank == 4


def test_optimizer_calls():
    opt = lambda text: load_spec({"formula": "y ~ x", "inference": {"engine": "svi", "optimizer": text}}).inference.optimizer  # noqa
    assert opt("adam(lr=0.001)") == Fn("adam", (), (("lr", 0.001),))
    assert opt("sgd") == Fn("sgd")
    nested = opt("adam(lr=exponential_decay(0.01, 1000, 0.9))")
    assert nested.kw()["lr"] == Fn("exponential_decay", (0.01, 1000.0, 0.9))


def test_free_form_mappings_are_sorted_pairs():
    s = load_spec({"formula": "y ~ x",
                   "inference": {"engine": "myplugin", "options": {"z": 1, "a": {"k": [1, 2]}}},
                   "simulate": {"rows": 10, "columns": {"x": {"dist": "normal", "sd": 2}, "g": {"levels": 5}},
                                "params": {"x": 0.5, "sd(1 | g)": "1e-1"}}})
    assert s.inference.engine == "myplugin"
    assert s.inference.options == (("a", (("k", (1, 2)),)), ("z", 1))
    assert s.simulate.columns == (("g", (("levels", 5),)), ("x", (("dist", "normal"), ("sd", 2))))
    assert s.simulate.params == (("x", 0.5), ("sd(1 | g)", 0.1))
    hash(s)


def test_null_sections_are_empty():
    s = load_spec("formula: y ~ x\npriors:\ninference:\nsimulate:\n")
    assert s.priors == () and s.inference == InferenceSpec() and s.simulate is None
    assert load_spec("formula: y ~ x\nsimulate: {}\n").simulate == SimulateSpec()


def test_nonlinear_params_and_bounds():
    s = load_spec("""
formula: response ~ bottom + (top - bottom) / (1 + exp(hill * (log(dose) - log_ic50)))
params:
  bottom: 1 + (1 | plate)
  top: 1 + (1 | plate)
  log_ic50: 1 | compound/target
  hill: 1
bounds: {hill: positive}
""")
    assert s.params == (("bottom", "1 + (1 | plate)"), ("top", "1 + (1 | plate)"),
                        ("log_ic50", "1 | compound/target"), ("hill", "1"))
    assert s.bounds == (("hill", "positive"),)
    e = err({"formula": "y ~ a", "params": {"hill": "1"}, "bounds": {"hil": "postive"}})
    assert "bounds: 'hil' is not a parameter under 'params'" in messages(e)
    assert "did you mean 'hill'?" in hints(e) and "did you mean 'positive'?" in hints(e)


def test_prior_for_ignores_spaces():
    s = load_spec(SEED_SPEC)
    assert prior_for(s, "sd(1|product)") == Fixed(3.0)
    assert prior_for(s, "sd( 1 | category : period )") == Fixed(3.0)
    assert prior_for(s, "sigma") is None


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("as_text", [True, False])
def test_unknown_nested_key(as_text):
    raw = {"formula": "y ~ x", "inference": {"stpes": 100}}
    e = err(yaml.safe_dump(raw) if as_text else raw)
    assert "unknown key 'inference.stpes'" in e.message
    assert e.problems[0].hint == "did you mean 'inference.steps'?"
    assert "inference.stpes" in e.problems[0].where
    assert "unknown key 'inference.stpes'" in str(e)


def test_unknown_keys_at_every_level():
    e = err({"formula": "y ~ x", "famliy": "poisson", "steps": 10, "zzzz": 1,
             "simulate": {"row": 10}, "inference": {"nonsense_key": 1}})
    got = dict(zip(messages(e), hints(e)))
    assert got["unknown key 'famliy'"] == "did you mean 'family'?"
    assert got["unknown key 'steps'"] == "did you mean 'inference.steps'?"  # a key from another level
    assert got["unknown key 'simulate.row'"] == "did you mean 'simulate.rows'?"
    assert got["unknown key 'zzzz'"].startswith("valid keys are: formula, name")
    assert got["unknown key 'inference.nonsense_key'"].startswith("valid keys under inference are: engine")


def test_all_problems_are_reported_together():
    e = err("formula: y ~ x\nfamily: poison\ninference:\n  steps: abc\n  chains: 0\npriors:\n  b: nromal(0, 1)\n")
    assert len(e.problems) == 4
    text = str(e)
    for part in ("family must be one of", "did you mean 'poisson'?", "inference.steps must be a positive integer, got 'abc'",
                 "inference.chains must be a positive integer, got 0", "unknown prior family 'nromal'"):
        assert part in text


@pytest.mark.parametrize("key, value, message", [
    ("inference.steps", "abc", "inference.steps must be a positive integer, got 'abc'"),
    ("inference.steps", True, "inference.steps must be a positive integer, got true"),
    ("inference.steps", 0, "inference.steps must be a positive integer, got 0"),
    ("inference.steps", -5, "inference.steps must be a positive integer, got -5"),
    ("inference.steps", 2.5, "inference.steps must be a positive integer, got 2.5"),
    ("inference.steps", 50_000_000, "inference.steps must be at most 10000000, got 50000000"),
    ("inference.draws", 0, "inference.draws must be a positive integer"),
    ("inference.chains", 0, "inference.chains must be a positive integer"),
    ("inference.particles", -1, "inference.particles must be a positive integer"),
    ("inference.samples", 0, "inference.samples must be a positive integer"),
    ("inference.warmup", -1, "inference.warmup must be a non-negative integer, got -1"),
    ("inference.seed", -1, "inference.seed must be a non-negative integer"),
    ("inference.rank", 0, "inference.rank must be a positive integer"),
    ("inference.max_tree_depth", 0, "inference.max_tree_depth must be a positive integer"),
    ("inference.target_accept", 1.0, "inference.target_accept must be a number between 0 and 1 (exclusive), got 1"),
    ("inference.target_accept", 0, "inference.target_accept must be a number between 0 and 1"),
    ("inference.tolerance", -0.1, "inference.tolerance must be a non-negative number, got -0.1"),
    ("inference.tolerance", "nan", "inference.tolerance must be a non-negative number, got 'nan'"),
    ("inference.alpha", "x", "inference.alpha must be a number, got 'x'"),
    ("inference.guide", "lowrnak", "inference.guide must be one of normal, lowrank, mvn, structured, delta, got 'lowrnak'"),
    ("inference.loss", "elob", "inference.loss must be one of elbo, renyi, got 'elob'"),
    ("inference.engine", "", "inference.engine must be a non-empty string"),
    ("inference.engine", 3, "inference.engine must be a non-empty string, got 3"),
    ("inference.optimizer", 0.01, "inference.optimizer must be an optimizer such as 'adam(lr=0.01)', got 0.01"),
    ("inference.options", [1], "inference.options must be a mapping, got a list"),
    ("simulate.rows", 0, "simulate.rows must be a positive integer, got 0"),
    ("simulate.rows", False, "simulate.rows must be a positive integer, got false"),
    ("simulate.params", {"b": "x"}, "simulate.params.b must be a number, got 'x'"),
    ("simulate.columns", 3, "simulate.columns must be a mapping"),
    ("simulate", 5, "simulate must be a mapping, got a number"),
    ("inference", "nuts", "inference must be a mapping, got a string"),
    ("devices", 0, "devices must be 'auto' or a positive integer, got 0"),
    ("devices", "many", "devices must be 'auto' or a positive integer, got 'many'"),
    ("devices", True, "devices must be 'auto' or a positive integer, got true"),
    ("batch_size", 0, "batch_size must be a positive integer, got 0"),
    ("noncentered", "yes", "noncentered must be true or false, got 'yes'"),
    ("name", 3, "name must be a non-empty string, got 3"),
    ("family", "poison", "family must be one of normal, student_t, poisson"),
    ("priors", ["normal(0, 1)"], "priors must be a mapping, got a list"),
    ("data", 5, "data must be a non-empty string, got 5"),
])
def test_wrong_values(key, value, message):
    raw: dict = {"formula": "y ~ x"}
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    e = err(raw)
    assert message in e.message, e.message
    assert key in e.problems[0].where
    e2 = err(yaml.safe_dump(raw))  # the same from YAML text
    assert message in e2.message


def test_hints():
    assert err({"formula": "y ~ x", "inference": {"engine": "svi", "steps": True}}).problems[0].hint == \
        "true/false is a boolean, not a number"
    assert err({"formula": "y ~ x", "family": "poison"}).problems[0].hint == "did you mean 'poisson'?"
    assert err({"formula": "y ~ x", "inference": {"engine": "svi", "guide": "lowrnak"}}).problems[0].hint == "did you mean 'lowrank'?"
    assert "convergence stopping" in err({"formula": "y ~ x", "inference": {"engine": "svi", "steps": 10**8}}).problems[0].hint


def test_renyi_alpha_one():
    e = err({"formula": "y ~ x", "inference": {"loss": "renyi", "alpha": 1}})
    assert "inference.alpha = 1 makes the Renyi bound the ELBO" in e.message
    assert load_spec({"formula": "y ~ x", "inference": {"loss": "renyi", "alpha": 0.5}}).inference.alpha == 0.5


def test_formula_problems():
    e = err("name: m\nfamily: normal\n")
    assert e.message == "the spec has no 'formula'" and "formula: y ~ x" in e.problems[0].hint
    assert "formula must be a non-empty string" in err({"formula": "  "}).message
    assert "formula must be a non-empty string, got 3" in err({"formula": 3}).message


def test_prior_errors_name_the_prior():
    e = err({"formula": "y ~ x", "priors": {"b": "normal(0, -1)", "sd(1 | g)": "exponential(1, 2)"}})
    assert [p.where for p in e.problems] == ["priors: b", "priors: sd(1 | g)"]
    assert "normal(): sigma must be positive, got -1" in e.problems[0].message
    e = err({"formula": "y ~ x", "priors": {"sd(1 | g)": 1, "sd(1|g)": 2}})
    assert "priors: 'sd(1|g)' and 'sd(1 | g)' name the same parameter" in e.message


def test_optimizer_syntax_error_points_at_it():
    e = err({"formula": "y ~ x", "inference": {"engine": "svi", "optimizer": "adam(lr=)"}})
    assert "inference.optimizer" in e.problems[0].where and e.problems[0].source == "adam(lr=)"


def test_yaml_problems(tmp_path):
    e = err("formula: y ~ x\n  family: normal\n")
    assert e.message == "the spec is not valid YAML: mapping values are not allowed here (line 2, column 9)"
    assert e.problems[0].source is not None and "2 |   family: normal" in str(e)  # a caret under it
    e = err("formula: y ~ x\ninference:\n  steps: [1,\n  chains: 2\n")
    assert "while parsing a flow sequence that starts at line 3, column 10" in e.problems[0].hint
    e = err("formula: y ~ x\npriors:\n  b: 1\n  b: 2\n")
    assert "the key 'b' is given twice (line 4, column 3)" in e.message
    assert "got a list" in err("- formula: y ~ x\n- b\n").message
    assert err("").message == "the spec is empty"
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    e = err(path)
    assert e.message == "the spec is empty" and e.problems[0].where == str(path)


def test_file_problems(tmp_path):
    (tmp_path / "model.yaml").write_text("formula: y ~ x\n")
    e = err(tmp_path / "modle.yaml")
    assert e.message == f"spec file not found: {tmp_path / 'modle.yaml'}"
    assert e.problems[0].hint == f"did you mean '{tmp_path / 'model.yaml'}'?"
    assert "spec file not found: nowhere/spec.yaml" in err("nowhere/spec.yaml").message
    assert "is a directory" in err(tmp_path).message
    bad = tmp_path / "bad.yaml"
    bad.write_text("formula: y ~ x\ninference: {stpes: 3}\n")
    assert err(bad).problems[0].where == f"{bad}: key 'inference.stpes'"


# ---------------------------------------------------------------- round trips
def test_to_dict_fills_every_default():
    d = load_spec("formula: y ~ x").to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(Spec)} - {"source_path"}
    assert set(d["inference"]) == {f.name for f in dataclasses.fields(InferenceSpec)}
    assert d["inference"]["optimizer"] is None and d["inference"]["tolerance"] == 1e-4
    assert d["simulate"] is None and d["priors"] == {} and d["devices"] == "auto"


def test_round_trip(tmp_path):
    path = tmp_path / "price.yaml"
    path.write_text(SEED_SPEC)
    s = load_spec(path)
    d = s.to_dict()
    assert d["priors"]["log(price)"] == "normal(-2, 1)" and d["priors"]["sd(1 | product)"] == 3.0
    assert load_spec(d) == s
    text = yaml.safe_dump(d, sort_keys=False)
    assert load_spec(text) == s
    out = tmp_path / "elsewhere" / "spec.yaml"
    out.parent.mkdir()
    out.write_text(text)
    assert load_spec(out) == s  # the data path was made absolute, so it survives a move


def test_round_trip_of_everything():
    s = load_spec({
        "name": "m", "formula": "y ~ x + (1 | g)", "family": "student_t",
        "priors": {"x": "student_t(3, 0, 2.5)", "sigma": "half_normal(1)", "sd(1 | g)": 0.5},
        "params": {"a": "1 + x"}, "bounds": {"a": "unit"},
        "simulate": {"rows": 7, "seed": 3, "columns": {"x": {"dist": "normal", "args": [0, 1]}, "g": 4},
                     "params": {"x": 1.5}},
        "inference": {"engine": "nuts", "guide": "lowrank", "rank": 3, "loss": "renyi", "alpha": 0.5,
                      "particles": 4, "optimizer": "adam(lr=exponential_decay(0.01, 1000, 0.9))",
                      "steps": 500, "tolerance": 0, "draws": 10, "seed": 9, "warmup": 0, "samples": 20,
                      "chains": 2, "target_accept": 0.95, "max_tree_depth": 6,
                      "options": {"b": [1, {"c": 2}], "a": "x"}},
        "devices": 2, "batch_size": 128, "noncentered": False, "data": "rel/x.csv",
    })
    assert load_spec(s.to_dict()) == s
    assert load_spec(yaml.safe_dump(s.to_dict(), sort_keys=False)) == s


@settings(max_examples=40, deadline=None)
@given(steps=hs.integers(1, 10_000_000), tol=hs.floats(0, 1), mu=hs.floats(-1e3, 1e3),
       sd=hs.floats(1e-3, 1e3), fixed=hs.floats(-1e3, 1e3), chains=hs.integers(1, 64),
       ta=hs.floats(0.01, 0.99), family=hs.sampled_from([None, "normal", "poisson", "beta"]))
def test_round_trip_property(steps, tol, mu, sd, fixed, chains, ta, family):
    s = load_spec({"formula": "y ~ x", "family": family,
                   "priors": {"x": f"normal({mu!r}, {sd!r})", "sd(1 | g)": fixed},
                   "inference": {"engine": "svi", "steps": steps, "tolerance": tol, "chains": chains, "target_accept": ta}})
    assert load_spec(s.to_dict()) == s
    assert load_spec(yaml.safe_dump(s.to_dict(), sort_keys=False)) == s


# ---------------------------------------------------------------- overrides
def test_overrides():
    s = load_spec(SEED_SPEC)
    t = s.with_overrides(["inference.steps=100", "family=negative_binomial", "priors.sd(1|product)=normal(0, 2)",
                          "priors.sigma=half_normal(1)", "inference.optimizer=adam(lr=0.1)",
                          "inference.tolerance=1e-6", "devices=2", "inference.options.depth=3"])
    assert t.inference.steps == 100 and t.family == "negative_binomial"
    assert dict(t.priors)["sd(1 | product)"] == Prior("normal", (0.0, 2.0))  # same key, same place
    assert [k for k, _ in t.priors][3] == "sd(1 | product)" and dict(t.priors)["sigma"] == Prior("half_normal", (1.0,))
    assert t.inference.optimizer == Fn("adam", (), (("lr", 0.1),)) and t.inference.tolerance == 1e-6
    assert t.devices == 2 and t.inference.options == (("depth", 3),)
    assert s.inference.steps == 20000  # unchanged


def test_overrides_create_sections_and_keep_source(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("formula: y ~ x\ndata: d.csv\n")
    s = load_spec(path)
    t = s.with_overrides(["simulate.rows=50", "batch_size=null"])
    assert t.simulate == SimulateSpec(rows=50) and t.source_path == s.source_path
    assert t.data == str(tmp_path / "d.csv")
    assert s.with_overrides(["data=other.csv"]).data == "other.csv"  # relative to the working directory
    assert s.with_overrides([]) == s


def test_override_errors():
    s = load_spec("formula: y ~ x")
    e = pytest.raises(HbmError, s.with_overrides, ["inference.stpes=100"]).value
    assert "unknown key 'inference.stpes'" in e.message and e.problems[0].hint == "did you mean 'inference.steps'?"
    e = pytest.raises(HbmError, s.with_overrides, ["stesp=1"]).value
    assert "unknown key 'stesp'" in e.message
    e = pytest.raises(HbmError, s.with_overrides, ["inference.steps=abc"]).value
    assert "inference.steps must be a positive integer, got 'abc'" in e.message
    e = pytest.raises(HbmError, s.with_overrides, ["steps"]).value
    assert "--set needs key=value, got 'steps'" in e.message
    e = pytest.raises(HbmError, s.with_overrides, ["inference.steps.x=1"]).value
    assert "'inference.steps' is not a mapping" in e.message


# ---------------------------------------------------------------- data paths
def test_relative_data_path_resolves_against_the_spec_file(tmp_path):
    sub = tmp_path / "specs"
    sub.mkdir()
    path = sub / "m.yml"
    path.write_text("formula: y ~ x\ndata: ../data/sales.parquet\n")
    assert load_spec(path).data == str(tmp_path / "data" / "sales.parquet")
    path.write_text(f"formula: y ~ x\ndata: {tmp_path / 'abs.csv'}\n")
    assert load_spec(path).data == str(tmp_path / "abs.csv")
    path.write_text("formula: y ~ x\ndata: s3://bucket/sales.parquet\n")
    assert load_spec(path).data == "s3://bucket/sales.parquet"
    path.write_text("formula: y ~ x\ndata: d.csv\n")
    assert load_spec(path, base_dir=tmp_path).data == str(tmp_path / "d.csv")  # base_dir wins


def test_data_path_for_dicts_and_text(tmp_path):
    assert load_spec({"formula": "y ~ x", "data": "d.csv"}).data == "d.csv"
    assert load_spec({"formula": "y ~ x", "data": "d.csv"}, base_dir=tmp_path).data == str(tmp_path / "d.csv")
    assert load_spec("formula: y ~ x\ndata: d.csv\n", base_dir=str(tmp_path)).data == str(tmp_path / "d.csv")
    assert load_spec({"formula": "y ~ x", "data": Path("x") / "d.csv"}).data == os.path.join("x", "d.csv")
