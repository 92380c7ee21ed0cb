"""The words a user writes, one registry each: response families and links (``families``), the
functions an expression may call and the bounds' transforms (``functions``), and the names of guides,
losses and corrections (``names``). Every later stage looks words up here; nothing here imports a stage."""
from hbm.vocabulary.families import FAMILIES, FUSED, INVERSE_LINKS, FamilySpec
from hbm.vocabulary.functions import BOUNDS, JAX_OPS, NP_OPS

__all__ = ["FAMILIES", "FUSED", "INVERSE_LINKS", "FamilySpec", "BOUNDS", "JAX_OPS", "NP_OPS"]
