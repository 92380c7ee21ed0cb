"""Optax optimizers from spec text: ``adam(lr=0.01)``, ``adamw(lr=exponential_decay(0.01, 1000, 0.9))``.

Any ``optax.<name>`` optimizer that takes a learning rate is accepted, with
``lr`` as a short name for ``learning_rate``. A learning rate may itself be a
call naming an optax schedule (positional or keyword arguments). ``clip=c``
chains ``optax.clip_by_global_norm(c)`` in front. The result is wrapped with
``numpyro.optim.optax_to_numpyro`` for ``numpyro.infer.SVI``.

    >>> build_optimizer("adam(lr=0.01, clip=10)")  # doctest: +ELLIPSIS
    <numpyro.optim._NumPyroOptim object at ...>
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

from hbm.errors import HbmError, did_you_mean
from hbm.frontend.parse import Fn, parse_call

# take a learning rate but cannot run under numpyro's SVI (need extra update arguments)
# or are building blocks rather than optimizers
_NOT_OPTIMIZERS = {"lbfgs", "scale_by_learning_rate", "scale_by_rprop"}
# in optax.schedules but not a schedule written as a call of numbers
_NOT_SCHEDULES = {"inject_hyperparams", "inject_stateful_hyperparams"}
# the range of an optimizer's numeric arguments, by name (any other number must be finite)
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "learning_rate": ("a positive number", lambda v: v > 0),
    "b1": ("at least 0 and below 1", lambda v: 0 <= v < 1),
    "b2": ("at least 0 and below 1", lambda v: 0 <= v < 1),
    "momentum": ("at least 0 and below 1", lambda v: 0 <= v < 1),
    "decay": ("at least 0 and below 1", lambda v: 0 <= v < 1),
    "eps": ("at least 0", lambda v: v >= 0),
    "eps_root": ("at least 0", lambda v: v >= 0),
    "weight_decay": ("at least 0", lambda v: v >= 0),
}


@functools.lru_cache(maxsize=1)
def optimizer_names() -> tuple[str, ...]:
    """Every ``optax`` optimizer usable here (those with a ``learning_rate`` argument)."""
    import optax

    out = []
    for name in dir(optax):
        obj = getattr(optax, name)
        if name.startswith("_") or name in _NOT_OPTIMIZERS or isinstance(obj, type) or not callable(obj):
            continue
        try:
            if "learning_rate" in inspect.signature(obj).parameters:
                out.append(name)
        except (TypeError, ValueError):
            continue
    return tuple(sorted(out))


@functools.lru_cache(maxsize=1)
def schedule_names() -> tuple[str, ...]:
    """Every optax schedule: the functions of ``optax.schedules``."""
    import optax.schedules as S

    return tuple(sorted(n for n in dir(S) if not n.startswith("_") and n[0].islower()
                        and n not in _NOT_SCHEDULES and callable(getattr(S, n))))


def build_optimizer(spec: Fn | str | None, where: str = "inference.optimizer"):
    """A ``numpyro.optim`` optimizer from ``adam(lr=0.01)``-style text or a parsed :class:`Fn`."""
    from numpyro.optim import optax_to_numpyro

    return optax_to_numpyro(build_optax(spec, where))


def build_optax(spec: Fn | str | None, where: str = "inference.optimizer"):
    """The ``optax.GradientTransformation`` described by ``spec`` (default ``adam(lr=0.01)``)."""
    import optax

    fn = _as_fn(spec if spec is not None else "adam(lr=0.01)", where)
    if fn.name not in optimizer_names():
        raise HbmError(f"unknown optimizer '{fn.name}'", where=where,
                       hint=_hint(fn.name, optimizer_names(), "optimizers are optax's:"))
    kw = fn.kw()
    clip = kw.pop("clip", None)
    if "lr" in kw:
        if "learning_rate" in kw:
            raise HbmError("give either 'lr' or 'learning_rate', not both", where=where)
        kw["learning_rate"] = kw.pop("lr")
    args = list(fn.args)
    if args and isinstance(args[0], Fn):
        args[0] = _schedule(args[0], where)
    if isinstance(kw.get("learning_rate"), Fn):
        kw["learning_rate"] = _schedule(kw["learning_rate"], where)
    opt = _call(getattr(optax, fn.name), fn.name, args, kw, where)
    if clip is not None:
        if not isinstance(clip, (int, float)) or isinstance(clip, bool) or clip <= 0:
            raise HbmError(f"'clip' must be a positive number, got {clip!r}", where=where,
                           hint="e.g. adam(lr=0.01, clip=10): gradients are rescaled to global norm <= 10")
        opt = optax.chain(optax.clip_by_global_norm(float(clip)), opt)
    return opt


def _as_fn(spec, where: str) -> Fn:
    if isinstance(spec, Fn):
        return spec
    parsed = parse_call(spec) if isinstance(spec, str) else spec
    if not isinstance(parsed, Fn):
        raise HbmError(f"expected an optimizer such as adam(lr=0.01), got {spec!r}", where=where)
    return parsed


def _schedule(fn: Fn, where: str) -> Callable:
    import optax.schedules as S

    if fn.name not in schedule_names():
        raise HbmError(f"unknown learning-rate schedule '{fn.name}'", where=where,
                       hint=_hint(fn.name, schedule_names(), "schedules are optax's:"))
    return _call(getattr(S, fn.name), fn.name, list(fn.args), fn.kw(), where)


def _call(f: Callable, name: str, args: list, kw: dict, where: str):
    """Call an optax factory, coercing spec values to the declared types (1000.0 -> 1000, 'true' -> True)."""
    sig = inspect.signature(f)
    try:
        bound = sig.bind(*args, **kw)
    except TypeError as e:
        params = list(sig.parameters)
        bad = [k for k in kw if k not in sig.parameters]
        hint = did_you_mean(bad[0], params) if bad else None
        raise HbmError(f"bad arguments to {name}(): {e}", where=where,
                       hint=hint or f"{name}{_short_sig(sig)}") from None
    for k, v in list(bound.arguments.items()):
        bound.arguments[k] = _coerce(v, sig.parameters[k].annotation)
        _check_range(name, k, bound.arguments[k], where, f"{name}{_short_sig(sig)}")
    try:
        return f(*bound.args, **bound.kwargs)
    except (TypeError, ValueError) as e:
        raise HbmError(f"bad arguments to {name}(): {e}", where=where,
                       hint=f"{name}{_short_sig(sig)}") from None


def _check_range(fn: str, key: str, v: Any, where: str, signature: str) -> None:
    """A numeric argument out of its range (``_RANGES``) or not finite: an HbmError before optax runs
    with it (``adam(lr=-1)`` would climb the loss to 1e20 and report it as a finished fit)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    what, ok = _RANGES.get(key, ("a finite number", lambda x: True))
    if not math.isfinite(v) or not ok(v):
        shown = "lr" if key == "learning_rate" else key
        raise HbmError(f"{fn}(): {shown} must be {what}, got {v:g}", where=where,
                       hint=f"the learning rate is the size of a step, e.g. {fn}(lr=0.01)"
                       if key == "learning_rate" else signature)


def _coerce(v: Any, annotation: Any) -> Any:
    ann = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    ann = ann.replace("typing.", "")
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if isinstance(v, float) and v.is_integer() and ann in ("int", "Optional[int]", "int | None"):
        return int(v)
    return v


def _short_sig(sig: inspect.Signature) -> str:
    parts = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return "(" + ", ".join(parts) + ")"


def _hint(name: str, names: tuple[str, ...], lead: str) -> str:
    dym = did_you_mean(name, names)
    listing = f"{lead} {', '.join(names)}"
    return f"{dym} {listing}" if dym else listing
