"""The names of ``inference:`` choices, one tuple each: the one source the spec validates against and
the engines and diagnostics implement (tests/test_vocabulary.py checks that they implement exactly
these). Engines are not listed: plugins register them (``hbm.engines`` entry points), so
``inference.engine`` is checked against the registry when a fit starts."""
from __future__ import annotations

GUIDES: tuple[str, ...] = ("normal", "lowrank", "mvn", "structured", "delta")   # engines/guides.py
DEFAULT_GUIDE = "structured"
LOSSES: tuple[str, ...] = ("elbo", "renyi")                                       # engines/svi.py
CORRECTIONS: tuple[str, ...] = ("none", "psis")                                   # results/diagnostics.py

__all__ = ["GUIDES", "DEFAULT_GUIDE", "LOSSES", "CORRECTIONS"]
