"""The functions a non-linear expression may call (NumPy and JAX), and the bounds' transforms."""
from __future__ import annotations

from typing import Callable
import jax
import jax.numpy as jnp
import numpy as np

BOUNDS: dict[str, Callable] = {"real": lambda eta: eta, "positive": jnp.exp, "unit": jax.nn.sigmoid}


_BOUND_TEXT = {"positive": "exp", "unit": "inv_logit"}


_LINK = {"positive": "log", "unit": "logit"}            # the name a linked parameter's predictor takes


_NP_BOUNDS = {"positive": np.exp, "unit": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x))}


def _logit_np(x):
    return np.log(x) - np.log1p(-x)


NP_OPS: dict[str, Callable] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power, "neg": np.negative,
    "exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1, "sqrt": np.sqrt, "abs": np.abs,
    "inv_logit": lambda x: 1.0 / (1.0 + np.exp(-x)), "logit": _logit_np,
    "softplus": lambda x: np.logaddexp(0.0, x),
}


JAX_OPS: dict[str, Callable] = {
    "+": jnp.add, "-": jnp.subtract, "*": jnp.multiply, "/": jnp.divide, "^": jnp.power,
    "neg": jnp.negative, "exp": jnp.exp, "log": jnp.log, "log1p": jnp.log1p, "expm1": jnp.expm1,
    "sqrt": jnp.sqrt, "abs": jnp.abs, "inv_logit": jax.nn.sigmoid, "logit": jax.scipy.special.logit,
    "softplus": jax.nn.softplus,
}

