"""Parse: formula text and prior expressions to frozen ASTs with source spans
(``parse``, ``ast``, ``nl_ast``, ``priors``; the grammar is ``formula.lark``)."""
from hbm.frontend.parse import parse_formula, parse_nonlinear, parse_call
from hbm.frontend.priors import Prior, Fixed, parse_prior

__all__ = ['parse_formula', 'parse_nonlinear', 'parse_call', 'Prior', 'Fixed', 'parse_prior']
