"""Inference engines: one module per algorithm, found by name through the ``hbm.engines`` entry points.

    >>> from hbm.engines import get_engine, FitProblem
    >>> get_engine("svi").name
    'svi'
"""
from hbm.engines.base import Engine, EngineResult, FitProblem, latent_site_names
from hbm.engines.optim import build_optimizer, build_optax
from hbm.engines.registry import available_engines, get_engine

__all__ = ["Engine", "EngineResult", "FitProblem", "available_engines", "build_optax",
           "build_optimizer", "get_engine", "latent_site_names"]
