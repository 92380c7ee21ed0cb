"""hbm: a compiler for hierarchical Bayesian models.

    import hbm
    model = hbm.compile("spec.yaml", df)
    result = hbm.fit(model, engine="svi", steps=5000)
    result.summary()
"""
from hbm.pipeline.compiled import CompiledModel  # noqa: A004
from hbm.pipeline.compile import compile  # noqa: A004
from hbm.errors import HbmError
from hbm.pipeline.fit import FitResult, fit
from hbm.spec import Spec, load_spec

__all__ = ["compile", "fit", "CompiledModel", "FitResult", "HbmError", "Spec", "load_spec"]
