"""The dose-response 4PL written by hand in NumPyro, with hbm's site names: what the non-linear
formula's compiled log density is held to (tests/test_nonlinear.py, tests/test_nonlinear_pipeline.py)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.reparam import LocScaleReparam


def codes(col, df):
    """0-based codes of ``df[col]`` in sorted label order (hbm's), and the number of labels."""
    labels, idx = np.unique(df[col].to_numpy(), return_inverse=True)
    return jnp.asarray(idx), len(labels)


def prior_draw(model, seed):
    """One draw of every latent site of ``model`` from its prior."""
    tr = handlers.trace(handlers.seed(model, seed)).get_trace()
    return {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}


def hand_4pl(df, noncentered=False, student_t=False):
    """``response ~ bottom + (top - bottom) / (1 + exp(hill * (log(dose) - log_ic50)))`` with
    ``bottom``, ``top`` varying by plate and ``log_ic50`` by compound within target; controls
    (dose 0) by the double where; normal errors, or Student-t (``nu ~ gamma(2, 0.1)``)."""
    plate, n_plate = codes("plate", df)
    comp, n_comp = codes("compound", df)
    target, n_target = codes("target", df)
    parent = np.zeros(n_comp, np.int32)
    parent[np.asarray(comp)] = np.asarray(target)
    dose = jnp.asarray(df["dose"].to_numpy(), jnp.float32)
    y = jnp.asarray(df["response"].to_numpy(), jnp.float32)

    def model():
        bottom = numpyro.sample("bottom", dist.Normal(0.0, 20.0))
        sd_b = numpyro.sample("sd(bottom | plate)", dist.HalfNormal(5.0))
        with numpyro.plate("plate", n_plate):
            r_b = numpyro.sample("r(bottom | plate)", dist.Normal(0.0, sd_b))
        top = numpyro.sample("top", dist.Normal(100.0, 20.0))
        sd_t = numpyro.sample("sd(top | plate)", dist.HalfNormal(5.0))
        with numpyro.plate("plate", n_plate):
            r_t = numpyro.sample("r(top | plate)", dist.Normal(0.0, sd_t))
        lic = numpyro.sample("log_ic50", dist.Normal(0.0, 3.0))
        sd_target = numpyro.sample("sd(log_ic50 | target)", dist.HalfNormal(2.0))
        with numpyro.plate("target", n_target):
            lic_t = numpyro.sample("log_ic50[target]", dist.Normal(lic, sd_target))
        sd_comp = numpyro.sample("sd(log_ic50 | compound)", dist.HalfNormal(2.0))
        with numpyro.plate("compound", n_comp):
            lic_c = numpyro.sample("log_ic50[compound]", dist.Normal(lic_t[parent], sd_comp))
        hill = numpyro.sample("hill", dist.LogNormal(0.0, 0.5))   # a bounded parameter of formula 1: itself
        sigma = numpyro.sample("sigma", dist.Exponential(0.2))
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1)) if student_t else None
        lo, hi = bottom + r_b[plate], top + r_t[plate]
        control = dose == 0
        x = jnp.log(jnp.where(control, 1.0, dose))
        mu = jnp.where(control, hi, lo + (hi - lo) / (1.0 + jnp.exp(hill * (x - lic_c[comp]))))
        with numpyro.plate("rows", len(y)):
            numpyro.sample("y", dist.StudentT(nu, mu, sigma) if student_t else dist.Normal(mu, sigma), obs=y)

    if not noncentered:
        return model
    sites = ["bottom", "top", "log_ic50", "r(bottom | plate)", "r(top | plate)",
             "log_ic50[target]", "log_ic50[compound]"]
    return handlers.reparam(model, config={s: LocScaleReparam(0) for s in sites})
