"""Inference engines: one module per algorithm, found by name through the ``hbm.engines`` entry points.

    >>> from hbm.engines import get_engine, FitProblem
    >>> get_engine("svi").name
    'svi'
"""
from hbm.engines.base import (Batches, Capabilities, Engine, EngineResult, FitProblem, capabilities,
                              latent_site_names)
from hbm.engines.optim import build_optimizer, build_optax
from hbm.engines.registry import available_engines, engines_that, get_engine

__all__ = ["Batches", "Capabilities", "Engine", "EngineResult", "FitProblem", "available_engines",
           "build_optax", "build_optimizer", "capabilities", "engines_that", "get_engine", "latent_site_names"]
