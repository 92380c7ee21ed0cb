"""Lowering: the IR to a NumPyro model: priors in plates, chains outermost first, the
coordinates the engines see (``whiten``, ``centring``), one fused likelihood (``likelihood``) under
``jax.shard_map`` with several devices (``model``, ``nonlinear``)."""
from hbm.lowering.model import make_model, reparam_config
from hbm.lowering.nonlinear import make_nonlinear_model

__all__ = ['make_model', 'reparam_config', 'make_nonlinear_model']
