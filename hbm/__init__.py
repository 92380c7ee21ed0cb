"""hbm: a compiler for hierarchical Bayesian models.

    import hbm
    model = hbm.compile("spec.yaml", df)
    result = hbm.fit(model, engine="svi", steps=5000)
    result.summary()

The names below load on first use (PEP 562), so ``import hbm.cli`` (``hbm --help``, ``hbm show``)
does not load JAX.
"""
from importlib import import_module

_WHERE = {"compile": "hbm.pipeline.compile", "fit": "hbm.pipeline.fit", "CompiledModel": "hbm.pipeline.compiled",
          "FitResult": "hbm.pipeline.fit", "HbmError": "hbm.errors", "Spec": "hbm.spec", "load_spec": "hbm.spec"}

__all__ = ["compile", "fit", "CompiledModel", "FitResult", "HbmError", "Spec", "load_spec"]


_STAGES = ("errors", "vocabulary", "frontend", "spec", "ir", "data", "resolve", "lowering", "engines", "results",
           "io", "pipeline", "cli")


def __getattr__(name: str):
    if name in _STAGES:                  # hbm.spec.load_spec after a bare `import hbm`
        return import_module(f"hbm.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module 'hbm' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
