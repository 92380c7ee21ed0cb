"""What a user calls: ``compile`` (spec + table -> ``CompiledModel``), ``fit``, ``simulate``,
``predict``, ``compare``, ``loo``, the subset check, and the multi-host ``distributed`` compile."""
from hbm.pipeline.compiled import CompiledModel, compile_table
from hbm.pipeline.compile import compile
from hbm.pipeline.fit import FitResult, fit
from hbm.pipeline.simulate import simulate

__all__ = ['CompiledModel', 'compile_table', 'compile', 'FitResult', 'fit', 'simulate']
