"""The words a user writes, one registry each: response families and links (``families``), the
functions and operators an expression may use and the bounds' transforms (``functions``), and the
names of guides, losses and corrections (``names``), and how large an input may be (``limits``). Every later stage looks words up here; nothing
here imports a stage."""
from hbm.vocabulary.families import FAMILIES, FAMILY_ALIASES, FUSED, INVERSE_LINKS, FamilySpec
from hbm.vocabulary.functions import (BOUND_SPECS, BOUNDS, EXPRESSION_FUNCTIONS, FORMULA_FUNCTIONS, JAX_OPS,
                                      NP_OPS, OPS, BoundSpec, OpSpec)
from hbm.vocabulary.names import CORRECTIONS, DEFAULT_GUIDE, GUIDES, LOSSES

__all__ = ["FAMILIES", "FAMILY_ALIASES", "FUSED", "INVERSE_LINKS", "FamilySpec", "BOUND_SPECS", "BOUNDS",
           "EXPRESSION_FUNCTIONS", "FORMULA_FUNCTIONS", "JAX_OPS", "NP_OPS", "OPS", "BoundSpec", "OpSpec",
           "CORRECTIONS", "DEFAULT_GUIDE", "GUIDES", "LOSSES"]
