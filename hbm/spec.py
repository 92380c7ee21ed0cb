"""The YAML spec: what to fit (formula, family, priors, data) and how (inference settings).

:func:`load_spec` reads a path, YAML text or a dict into a frozen :class:`Spec`, checking
every key and collecting all problems into one :class:`HbmError`. ``Spec.to_dict()`` gives
the resolved spec back with every default filled in; ``Spec.with_overrides`` applies the
command line's ``--set key=value`` pairs.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from hbm.errors import HbmError, Problem, ProblemList, Span, closest
from hbm.frontend.parse import Fn, parse_call
from hbm.frontend.priors import Fixed, Prior, _fmt, parse_prior
from hbm.vocabulary.families import FAMILIES, FAMILY_ALIASES
from hbm.vocabulary.functions import BOUND_SPECS
from hbm.vocabulary.limits import MAX_SPEC_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, check_regular_file
from hbm.vocabulary.names import CORRECTIONS, DEFAULT_GUIDE, GUIDES, LOSSES

MAX_STEPS = 10_000_000
DEFAULT_OPTIMIZER = Fn("adam", (), (("lr", 0.01),))
STRUCTURED_OPTIMIZER = Fn("adam", (), (("lr", 0.003),))   # the structured guide's, when none is given


@dataclass(frozen=True, slots=True)
class InferenceSpec:
    """How to fit: the engine and its settings (``inference:`` in the YAML)."""

    engine: str = "auto"           # auto (nuts for small data, else svi: hbm.pipeline.fit.choose_engine) | svi | nuts
                                   # | map | laplace | a registered plugin
    guide: str = DEFAULT_GUIDE     # structured | normal | lowrank | mvn | delta (hbm/vocabulary/names.py)
    rank: int | None = None        # lowrank guide rank (None: sqrt of the latent dimension)
    correct: str = "none"          # none | psis: reweigh a guide's draws by PSIS (hbm/vocabulary/names.py)
    loss: str = "elbo"             # elbo | renyi
    alpha: float = 0.0             # renyi alpha
    particles: int = 1
    optimizer: Fn | None = None    # None: adam, lr 0.003 with the structured guide, else 0.01 (optimizer_fn)
    steps: int = 20000             # upper bound when convergence stopping is on
    tolerance: float = 1e-4        # relative loss change counted as converged; 0 disables stopping
    draws: int = 1000
    seed: int = 0
    warmup: int = 1000             # nuts
    samples: int = 1000            # nuts
    chains: int = 4                # nuts
    target_accept: float = 0.8     # nuts
    max_tree_depth: int = 10       # nuts
    checkpoint_every: int | None = None       # save the fit's state every N steps (None: by time only)
    checkpoint_seconds: float | None = 60.0   # ... and at least every M seconds (None: by steps only)
    options: tuple[tuple[str, Any], ...] = ()   # free-form options for plugin engines

    @property
    def optimizer_fn(self) -> Fn:
        """The optimizer: as set, else adam with lr 0.003 for SVI with the structured guide (its
        calibrated default: a larger step's noise narrows its intervals, benchmarks/RESULTS.md) and
        0.01 otherwise (other guides, map, laplace)."""
        if self.optimizer is not None:
            return self.optimizer
        structured = self.engine in ("svi", "auto") and self.guide == "structured"
        return STRUCTURED_OPTIMIZER if structured else DEFAULT_OPTIMIZER


@dataclass(frozen=True, slots=True)
class SimulateSpec:
    """Synthetic data when no data is given (``simulate:``)."""

    rows: int = 1000
    seed: int = 0
    columns: tuple[tuple[str, Any], ...] = ()    # per-column generators, sorted (name, value) pairs
    params: tuple[tuple[str, float], ...] = ()   # true parameter values by name


LOG_LIKELIHOOD_CHOICES = ("auto", "yes", "no")


@dataclass(frozen=True, slots=True)
class OutputsSpec:
    """What the run directory holds beside the posterior (``outputs:``)."""

    log_likelihood: str = "auto"   # auto (up to hbm.results.pointwise.LOG_LIKELIHOOD_MAX_VALUES) | yes | no


@dataclass(frozen=True, slots=True)
class Spec:
    """A whole model spec. Build it with :func:`load_spec`; every field but ``formula`` has a default."""

    formula: str
    name: str = "model"
    family: str | None = None      # None: inferred from the link and the data
    priors: tuple[tuple[str, Prior | Fixed], ...] = ()   # in file order
    data: str | None = None        # resolved against the spec file's directory
    simulate: SimulateSpec | None = None
    inference: InferenceSpec = InferenceSpec()
    devices: int | str = "auto"
    batch_size: int | None = None
    noncentered: bool = True
    outputs: OutputsSpec = OutputsSpec()
    params: tuple[tuple[str, str], ...] = ()   # non-linear formulas: parameter -> its linear formula
    bounds: tuple[tuple[str, str], ...] = ()   # non-linear parameter -> real | positive | unit
    source_path: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        """A plain, YAML-serialisable dict with every default filled in."""
        inf = {f.name: getattr(self.inference, f.name) for f in fields(InferenceSpec)}
        inf["optimizer"] = None if self.inference.optimizer is None else str(self.inference.optimizer)
        inf["options"] = _thaw_map(self.inference.options)
        sim = None
        if self.simulate is not None:
            s = self.simulate
            sim = {"rows": s.rows, "seed": s.seed, "columns": _thaw_map(s.columns), "params": dict(s.params)}
        return {
            "name": self.name, "formula": self.formula, "family": self.family,
            "params": dict(self.params), "bounds": dict(self.bounds),
            "priors": {k: v.value if isinstance(v, Fixed) else str(v) for k, v in self.priors},
            "data": self.data, "simulate": sim, "inference": inf, "devices": self.devices,
            "batch_size": self.batch_size, "noncentered": self.noncentered,
            "outputs": {f.name: getattr(self.outputs, f.name) for f in fields(OutputsSpec)},
        }

    def with_overrides(self, pairs: list[str]) -> "Spec":
        """Apply ``key=value`` pairs (dotted keys, YAML values) and re-validate."""
        d, probs = self.to_dict(), ProblemList()
        for item in pairs:
            key, eq, text = item.partition("=")
            key = key.strip()
            if not eq or not key:
                probs.add(f"--set needs key=value, got {item!r}", hint="e.g. --set inference.steps=100")
                continue
            try:
                value = yaml.load(text, Loader=_Loader)   # the spec's limits (a value is small)
            except yaml.YAMLError:
                value = text
            head, _, rest = key.partition(".")
            if head == "priors" and rest:
                pri = d["priors"]
                norm = rest.replace(" ", "")
                pri[next((k for k in pri if k.replace(" ", "") == norm), rest.strip())] = value
                continue
            node, parts = d, key.split(".")
            for i, p in enumerate(parts[:-1]):
                if node.get(p) is None:
                    node[p] = {}
                if not isinstance(node[p], dict):
                    probs.add(f"--set {key}: '{'.'.join(parts[:i + 1])}' is not a mapping")
                    break
                node = node[p]
            else:
                node[parts[-1]] = value
        probs.raise_if_any()
        return replace(load_spec(d), source_path=self.source_path)


def prior_for(spec: Spec, name: str) -> Prior | Fixed | None:
    """The prior the spec gives parameter ``name`` (spaces ignored), or None."""
    key = name.replace(" ", "")
    return next((v for k, v in spec.priors if k.replace(" ", "") == key), None)


# ---------------------------------------------------------------- reading
class _TooLarge(yaml.MarkedYAMLError):
    """A spec beyond hbm/vocabulary/limits.py's YAML limits, found while composing it."""


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, collections nested more than
    MAX_YAML_DEPTH deep (PyYAML composes recursively), and documents of more than MAX_YAML_NODES values
    counting every use of an alias in full (an alias bomb is small as nodes, huge once walked)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._sizes: dict[int, int] = {}   # id(node) -> its values, aliases expanded
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        nested = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        self._depth += nested
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooLarge(None, None, f"mappings and lists are nested more than {MAX_YAML_DEPTH} deep",
                                event.start_mark, f"a spec may nest at most {MAX_YAML_DEPTH} levels; "
                                "no setting needs more")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= nested
        if id(node) not in self._sizes:   # an alias's node is counted once composed, then reused
            kids = node.value if isinstance(node, yaml.SequenceNode) else \
                [x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode) else ()
            size = 1 + sum(self._sizes[id(k)] for k in kids)
            if size > MAX_YAML_NODES:
                raise _TooLarge(None, None, f"the spec holds more than {MAX_YAML_NODES:,} values once its "
                                "aliases (*name) are expanded", event.start_mark,
                                "each alias *name repeats everything under its anchor &name: aliases of "
                                "aliases multiply; write the values out, or use fewer aliases")
            self._sizes[id(node)] = size
        return node


def _unique_mapping(loader: _Loader, node, deep: bool = False):
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:
            continue
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                    key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read(source: str | os.PathLike) -> tuple[str, Path | None]:
    """(text, path): the YAML text of a path, or the string itself when it is YAML text."""
    if isinstance(source, str):
        s = source.strip()
        is_text = not s or "\n" in s or (":" in s and not s.endswith((".yaml", ".yml")))
        if is_text and not os.path.exists(source):  # False, not an error, for odd strings
            return source, None
    path = Path(source).expanduser()
    if not path.exists():
        sibs = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
        best = closest(path.name, sibs)
        raise HbmError(f"spec file not found: {path}", where=str(path),
                       hint=f"did you mean '{path.parent / best}'?" if best else None)
    if path.is_dir():
        raise HbmError(f"spec path is a directory, not a YAML file: {path}", where=str(path))
    check_regular_file(path, "spec")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise HbmError(f"spec file {path} is {path.stat().st_size:,} bytes; a spec is at most "
                       f"{MAX_SPEC_BYTES:,}", where=str(path), hint="is this the data file? give data as DATA")
    try:
        return path.read_text(encoding="utf-8"), path
    except (OSError, UnicodeDecodeError) as e:
        raise HbmError(f"cannot read spec file {path}: {e}", where=str(path)) from None


def _parse_yaml(text: str, label: str) -> Any:
    if len(text) > MAX_SPEC_BYTES:
        raise HbmError(f"the spec is {len(text):,} characters; a spec is at most {MAX_SPEC_BYTES:,}", where=label)
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only, never objects
    except _TooLarge as e:
        m = e.problem_mark
        raise HbmError(f"the spec is too large: {e.problem} (line {m.line + 1}, column {m.column + 1})",
                       where=label, hint=e.note) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        span = Span(mark.index, mark.index + 1) if mark else None
        raise HbmError(f"the spec is not valid YAML: {e.problem} (line {line}, column {col})",
                       span=span, source=text if span else None, where=label,
                       hint=_context(e)) from None
    except yaml.YAMLError as e:
        raise HbmError(f"the spec is not valid YAML: {e}", where=label) from None


def _context(e: yaml.MarkedYAMLError) -> str | None:
    if not e.context or e.context == e.problem:
        return None
    m = e.context_mark
    return f"{e.context} that starts at line {m.line + 1}, column {m.column + 1}" if m else e.context


_YAML_KEY = re.compile(r"\s*[A-Za-z_][\w.]*\s*:(\s|$)")


def is_formula(text: str) -> bool:
    """Whether a SPEC argument is a formula (``"y ~ x + (1 | g)"``) rather than a spec: one line with a
    ``~``, not the path of an existing file, not YAML (``formula: y ~ x``)."""
    s = text.strip()
    return ("~" in s and "\n" not in s and not _YAML_KEY.match(s) and not s.startswith(("{", "["))
            and not os.path.exists(text))


def load_spec(source, base_dir: str | os.PathLike | None = None) -> Spec:
    """Read a spec from a path, YAML text, a formula (:func:`is_formula`: a spec of that formula and
    every default), a dict or a Spec (returned as is).

    A relative ``data:`` path is resolved against the spec file's directory (or
    ``base_dir``). Every problem found is raised together as one HbmError.
    """
    if isinstance(source, Spec):
        return source
    path = None
    if isinstance(source, str) and is_formula(source):
        raw = {"formula": source.strip()}
    elif isinstance(source, dict):
        raw = source
    elif isinstance(source, (str, os.PathLike)):
        text, path = _read(source)
        raw = _parse_yaml(text, str(path) if path else "spec")
    else:
        raise HbmError(f"a spec must be a path, YAML text, a dict or a Spec, got {type(source).__name__}")
    if raw is None:
        raise HbmError("the spec is empty", where=str(path) if path else "spec",
                       hint="it needs at least a formula, e.g. 'formula: y ~ x + (1 | g)'")
    if not isinstance(raw, dict):
        raise HbmError(f"the spec must be a mapping of keys such as 'formula:', got {_kind(raw)}",
                       where=str(path) if path else "spec")
    if path is not None and base_dir is None:
        base_dir = path.resolve().parent
    return _Builder(str(path) if path else None).build(raw, base_dir,
                                                       str(path.resolve()) if path else None)


# ---------------------------------------------------------------- checking
class _Bad(Exception):
    def __init__(self, what: str, hint: str | None = None):
        super().__init__(what)
        self.what, self.hint = what, hint


_BOOL_HINT = "true/false is a boolean, not a number"


def _kind(v) -> str:
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(v), type(v).__name__)


def _show(v) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, (dict, list)):
        return _kind(v)
    return _fmt(v) if isinstance(v, float) and math.isfinite(v) else repr(v)


def _number(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _integer(lo: int = 1, hi: int | None = None) -> Callable:
    what = "a positive integer" if lo == 1 else "a non-negative integer"

    def conv(v):
        x = v if isinstance(v, int) and not isinstance(v, bool) else _number(v)
        if x is None or isinstance(x, float) and not (math.isfinite(x) and x.is_integer()):
            raise _Bad(what, _BOOL_HINT if isinstance(v, bool) else None)
        if int(x) < lo:
            raise _Bad(what)
        if hi is not None and int(x) > hi:
            raise _Bad(f"at most {hi}", "convergence stopping ends a fit early; the default is 20000"
                       if hi == MAX_STEPS else None)
        return int(x)
    return conv


def _real(what: str = "a number", ok: Callable[[float], bool] = lambda x: True) -> Callable:
    def conv(v):
        x = _number(v)
        if x is None or not math.isfinite(x) or not ok(x):
            raise _Bad(what, _BOOL_HINT if isinstance(v, bool) else None)
        return x
    return conv


def _choice(options: tuple[str, ...], aliases: dict | None = None) -> Callable:
    def conv(v):
        key = v.strip().lower() if isinstance(v, str) else v
        key = (aliases or {}).get(key, key)
        if key in options:
            return key
        best = closest(str(v), options) if isinstance(v, str) else None
        raise _Bad(f"one of {', '.join(options)}", f"did you mean '{best}'?" if best else None)
    return conv


def _text(v):
    if not isinstance(v, str) or not v.strip():
        raise _Bad("a non-empty string")
    return v.strip()


def _optional(conv: Callable) -> Callable:
    return lambda v: None if v is None else conv(v)


def _bool(v):
    if not isinstance(v, bool):
        raise _Bad("true or false")
    return v


def _devices(v):
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        return _integer()(v)
    except _Bad:
        raise _Bad("'auto' or a positive integer") from None


def _freeze(v):
    """Mappings -> sorted tuples of (key, value) pairs, lists -> tuples, recursively (hashable)."""
    if isinstance(v, dict):
        return tuple(sorted(((str(k), _freeze(x)) for k, x in v.items()), key=lambda kv: kv[0]))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v):
    if isinstance(v, tuple):
        if v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
            keys = [x[0] for x in v]
            if keys == sorted(set(keys)):
                return {k: _thaw(x) for k, x in v}
        return [_thaw(x) for x in v]
    return v


def _thaw_map(pairs) -> dict:
    return {k: _thaw(x) for k, x in pairs}


_INFERENCE = {
    "engine": _text, "guide": _choice(GUIDES), "rank": _optional(_integer()), "correct": _choice(CORRECTIONS),
    "loss": _choice(LOSSES), "alpha": _real(), "particles": _integer(), "optimizer": None,
    "steps": _integer(1, MAX_STEPS), "tolerance": _real("a non-negative number", lambda x: x >= 0),
    "draws": _integer(), "seed": _integer(0, 2**32 - 1), "warmup": _integer(0), "samples": _integer(),
    "chains": _integer(), "target_accept": _real("a number between 0 and 1 (exclusive)", lambda x: 0 < x < 1),
    "max_tree_depth": _integer(), "checkpoint_every": _optional(_integer(1, MAX_STEPS)),
    "checkpoint_seconds": _optional(_real("a positive number of seconds", lambda x: x > 0)), "options": None,
}
_SIMULATE = {"rows": _integer(), "seed": _integer(0, 2**32 - 1), "columns": None, "params": None}


def _yes_no_auto(v):
    """auto | yes | no; YAML's booleans (``yes`` unquoted is true) count as yes and no."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    return _choice(LOG_LIKELIHOOD_CHOICES, {"true": "yes", "false": "no", "on": "yes", "off": "no"})(v)


_OUTPUTS = {"log_likelihood": _yes_no_auto}
_TOP = ("formula", "name", "family", "priors", "data", "simulate", "inference", "devices",
        "batch_size", "noncentered", "outputs", "params", "bounds")
_ALL_KEYS = list(_TOP) + [f"inference.{k}" for k in _INFERENCE] + [f"simulate.{k}" for k in _SIMULATE] \
    + [f"outputs.{k}" for k in _OUTPUTS]


class _Builder:
    """Checks a raw mapping key by key, collecting problems."""

    def __init__(self, label: str | None):
        self.label, self.probs = label, ProblemList()

    def where(self, key: str) -> str:
        return f"{self.label}: key '{key}'" if self.label else f"spec key '{key}'"

    def add(self, msg: str, key: str, hint: str | None = None) -> None:
        self.probs.add(msg, where=self.where(key), hint=hint)

    def section(self, raw, key: str) -> dict:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.add(f"{key} must be a mapping, got {_kind(raw)}", key)
            return {}
        return {str(k).strip(): v for k, v in raw.items()}

    def unknown(self, d: dict, allowed, prefix: str = "") -> None:
        for k in d:
            if k in allowed:
                continue
            best = closest(k, allowed)
            full = f"{prefix}{best}" if best else next(
                (a for a in _ALL_KEYS if a.rsplit(".", 1)[-1] == k.lower()), None)
            hint = f"did you mean '{full}'?" if full else \
                f"valid keys{' under ' + prefix[:-1] if prefix else ''} are: {', '.join(allowed)}"
            self.add(f"unknown key '{prefix}{k}'", prefix + k, hint)

    def take(self, d: dict, key: str, conv: Callable, default, prefix: str = ""):
        if key not in d:
            return default
        try:
            return conv(d[key])
        except _Bad as b:
            self.add(f"{prefix}{key} must be {b.what}, got {_show(d[key])}", prefix + key, b.hint)
            return default

    def pairs(self, raw, key: str) -> list[tuple[str, Any]]:
        """A mapping's (key, value) pairs in file order, keys stripped, duplicates (ignoring spaces) reported."""
        seen: dict[str, str] = {}
        out = []
        for k, v in self.section(raw, key).items():
            norm = k.replace(" ", "")
            if norm in seen:
                self.add(f"{key}: '{k}' and '{seen[norm]}' name the same parameter", key)
                continue
            seen[norm] = k
            out.append((k, v))
        return out

    def build(self, raw: dict, base_dir, source_path: str | None) -> Spec:
        d = self.section(raw, "spec")
        self.unknown(d, _TOP)
        if d.get("formula") is None:
            self.add("the spec has no 'formula'", "formula", "e.g. formula: y ~ x + (1 | g)")
        formula = self.take(d, "formula", _text, "") if d.get("formula") is not None else ""
        kw: dict[str, Any] = {
            "name": self.take(d, "name", _text, "model"),
            "family": self.take(d, "family", _optional(_choice(tuple(FAMILIES), FAMILY_ALIASES)), None),
            "devices": self.take(d, "devices", _devices, "auto"),
            "batch_size": self.take(d, "batch_size", _optional(_integer()), None),
            "noncentered": self.take(d, "noncentered", _bool, True),
            "data": self.take(d, "data", _optional(lambda v: _text(os.fspath(v) if isinstance(
                v, os.PathLike) else v)), None),
        }
        if kw["data"] is not None and base_dir is not None and "://" not in kw["data"]:
            p = os.path.expanduser(kw["data"])
            kw["data"] = p if os.path.isabs(p) else os.path.normpath(os.path.join(os.fspath(base_dir), p))
        priors = []
        for k, v in self.pairs(d.get("priors"), "priors"):
            try:
                priors.append((k, parse_prior(v, where=f"priors: {k}")))
            except HbmError as e:
                self.probs.extend(e)
        params = []
        for k, v in self.pairs(d.get("params"), "params"):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = _fmt(v)
            if not isinstance(v, str) or not v.strip():
                self.add(f"params.{k} must be a formula such as '1 + (1 | g)', got {_show(v)}", f"params.{k}")
            else:
                params.append((k, v.strip()))
        bounds = []
        for k, v in self.pairs(d.get("bounds"), "bounds"):
            if k not in dict(params):
                best = closest(k, dict(params))
                self.add(f"bounds: '{k}' is not a parameter under 'params'", f"bounds.{k}",
                         f"did you mean '{best}'?" if best else None)
            b = self.take({k: v}, k, _choice(tuple(BOUND_SPECS)), None, "bounds.")
            if b is not None:
                bounds.append((k, b))
        simulate = None if d.get("simulate") is None else self.simulate(d["simulate"])
        inference = self.inference(d.get("inference"))
        outputs = self.outputs(d.get("outputs"))
        self.probs.raise_if_any()
        return Spec(formula=formula, priors=tuple(priors), params=tuple(params), bounds=tuple(bounds),
                    simulate=simulate, inference=inference, outputs=outputs, source_path=source_path, **kw)

    def outputs(self, raw) -> OutputsSpec:
        d = self.section(raw, "outputs")
        self.unknown(d, _OUTPUTS, "outputs.")
        dflt = OutputsSpec()
        return OutputsSpec(**{k: self.take(d, k, c, getattr(dflt, k), "outputs.") for k, c in _OUTPUTS.items()})

    def simulate(self, raw) -> SimulateSpec:
        d = self.section(raw, "simulate")
        self.unknown(d, _SIMULATE, "simulate.")
        kw = {k: self.take(d, k, c, getattr(SimulateSpec(), k), "simulate.") for k, c in _SIMULATE.items() if c}
        columns = _freeze(self.section(d.get("columns"), "simulate.columns"))
        params = []
        for k, v in self.pairs(d.get("params"), "simulate.params"):
            x = self.take({k: v}, k, _real(), None, "simulate.params.")
            if x is not None:
                params.append((k, x))
        return SimulateSpec(columns=columns, params=tuple(params), **kw)

    def inference(self, raw) -> InferenceSpec:
        d = self.section(raw, "inference")
        self.unknown(d, _INFERENCE, "inference.")
        dflt = InferenceSpec()
        kw = {k: self.take(d, k, c, getattr(dflt, k), "inference.") for k, c in _INFERENCE.items() if c}
        kw["options"] = _freeze(self.section(d.get("options"), "inference.options"))
        kw["optimizer"] = self.optimizer(d["optimizer"]) if d.get("optimizer") is not None else None
        if kw["loss"] == "renyi" and kw["alpha"] == 1:
            self.add("inference.alpha = 1 makes the Renyi bound the ELBO", "inference.alpha",
                     "use loss: elbo, or another alpha (0 is the default)")
        return InferenceSpec(**kw)

    def optimizer(self, v) -> Fn:
        key, dflt = "inference.optimizer", DEFAULT_OPTIMIZER
        if isinstance(v, Fn):
            return v
        if not isinstance(v, str) or not v.strip():
            self.add(f"{key} must be an optimizer such as 'adam(lr=0.01)', got {_show(v)}", key)
            return dflt
        try:
            call = parse_call(v)
        except HbmError as e:
            self.probs.items.extend(Problem(p.message, p.span, p.source, p.hint, self.where(key))
                                    for p in e.problems)
            return dflt
        if isinstance(call, str):
            return Fn(call)
        if not isinstance(call, Fn):
            self.add(f"{key} must be an optimizer such as 'adam(lr=0.01)', got {_show(v)}", key)
            return dflt
        return call
