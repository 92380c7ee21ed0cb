"""Engines by name, from the ``hbm.engines`` entry-point group.

The built-in engines are registered there too (see ``pyproject.toml``), so a
plugin is found exactly as ``svi`` is. An entry point may name an engine
object or a class (instantiated with no arguments). Running from a source tree
where hbm is not installed, the built-in table stands in for the missing
entry points. What an engine can do (kind, minibatches, checkpoints) it declares
itself (:class:`hbm.engines.base.Engine`); a plugin that declares nothing loads
with the defaults (variational, no minibatches, no checkpoints).
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from hbm.errors import HbmError, did_you_mean
from hbm.engines.base import Engine, capabilities

GROUP = "hbm.engines"
BUILTIN: dict[str, str] = {
    "svi": "hbm.engines.svi:SVIEngine",
    "map": "hbm.engines.map:MAPEngine",
    "laplace": "hbm.engines.laplace:LaplaceEngine",
    "nuts": "hbm.engines.nuts:NUTSEngine",
}


def _entry_points() -> dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    for name, value in BUILTIN.items():  # source tree without installed metadata
        found.setdefault(name, EntryPoint(name=name, value=value, group=GROUP))
    return found


def available_engines() -> list[str]:
    """Names of every registered engine, sorted."""
    return sorted(_entry_points())


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``; an :class:`HbmError` with a suggestion if there is none."""
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        names = sorted(eps)
        dym = did_you_mean(str(name), names)
        raise HbmError(f"unknown engine '{name}'", where="inference.engine",
                       hint=(f"{dym} " if dym else "") + f"engines: {', '.join(names)}")
    try:
        obj = ep.load()
    except Exception as e:  # a broken plugin must not look like a bug in hbm
        raise HbmError(f"engine '{name}' failed to load from entry point '{ep.value}': "
                       f"{type(e).__name__}: {e}", where="inference.engine",
                       hint=f"check the package that registers '{name}' in the '{GROUP}' entry points") from e
    engine = obj() if isinstance(obj, type) else obj
    if not callable(getattr(engine, "fit", None)):
        raise HbmError(f"entry point '{ep.value}' for engine '{name}' has no fit() method",
                       where="inference.engine", hint="an engine needs `name` and `fit(problem, config, progress)`")
    try:
        capabilities(engine)
    except ValueError as e:
        raise HbmError(f"engine '{name}' from entry point '{ep.value}' declares a bad capability: {e}",
                       where="inference.engine",
                       hint="kind: sampler, variational or optimizer; minibatches, checkpoints: True or False") from e
    return engine


def engines_that(capability: str) -> list[str]:
    """Names of the registered engines that declare ``capability`` (``"minibatches"`` or
    ``"checkpoints"``), sorted; engines that fail to load are left out."""
    found = []
    for name in available_engines():
        try:
            engine = get_engine(name)
        except HbmError:
            continue
        if getattr(capabilities(engine), capability):
            found.append(name)
    return found


def check_minibatches(name: str) -> None:
    """An :class:`HbmError` (``where="batch_size"``) unless engine ``name`` fits on minibatches;
    the message names the engines that do."""
    if capabilities(get_engine(name)).minibatches:
        return
    able = engines_that("minibatches")
    raise HbmError(f"batch_size needs an optimisation engine that fits on minibatches ({', '.join(able)}), "
                   f"not {name}", where="batch_size",
                   hint="remove batch_size, or use engine: " + ("svi" if "svi" in able or not able else able[0]))


__all__ = ["available_engines", "get_engine", "engines_that", "check_minibatches", "GROUP", "BUILTIN"]
