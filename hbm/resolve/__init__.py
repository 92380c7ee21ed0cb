"""Resolve: an AST and the table's ``TableInfo`` to the IR (terms expanded, factors coded,
plates and nesting checked, family, link and every prior): ``linear``, ``nonlinear``."""
from hbm.resolve.linear import resolve, apply_priors
from hbm.resolve.nonlinear import resolve_nonlinear

__all__ = ['resolve', 'apply_priors', 'resolve_nonlinear']
