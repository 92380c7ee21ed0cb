"""hbm: a compiler for hierarchical Bayesian models.

    import hbm
    model = hbm.compile("spec.yaml", df)
    result = hbm.fit(model, engine="svi", steps=5000)
    result.summary()
"""
from .compiler import CompiledModel, compile  # noqa: A004
from .errors import HbmError
from .fit import FitResult, fit
from .spec import Spec, load_spec

__all__ = ["compile", "fit", "CompiledModel", "FitResult", "HbmError", "Spec", "load_spec"]
