"""Reference posterior for Dyestuff: Yield ~ 1 + (1 | Batch), normal, without hbm.

One random intercept, non-centred. Priors as in spec.yaml.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from lmm_reml import codes, lmm_fit
from refkit import indexed, load_case_data, run_reference

CASE = "dyestuff"


def model(batch, n_batch, y):
    a = numpyro.sample("Intercept", dist.Normal(1500.0, 500.0))
    sd_b = numpyro.sample("sd_b", dist.HalfNormal(100.0))
    sigma = numpyro.sample("sigma", dist.Exponential(0.02))
    with numpyro.plate("Batch", n_batch):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(a + sd_b * z[batch], sigma), obs=y)


def main():
    df = load_case_data(CASE)
    batch, bl = codes(df["Batch"])
    y = df["Yield"].to_numpy(float)

    def to_hbm(d):
        out = {"Intercept": d["Intercept"], "sd(1 | Batch)": d["sd_b"], "sigma": d["sigma"]}
        out.update(indexed("Intercept", "Batch", bl, d["Intercept"][..., None] + d["sd_b"][..., None] * d["z"]))
        return out

    n = len(df)
    for reml in (True, False):
        fit = lmm_fit(np.ones((n, 1)), y, [(batch, np.ones(n))], reml=reml)
        print("lmm_reml", "REML" if reml else "ML", fit["beta"], fit["sd"], fit["sigma"])
    src = "lme4 REML, Bates (2010) lme4: Mixed-effects modeling with R, ch. 1 (fm01, Dyestuff); reproduced by cases/lmm_reml.py"
    published = {"Intercept": {"value": 1527.5, "source": src},
                 "sd(1 | Batch)": {"value": 42.00, "source": src + " (ML: 37.26)"},
                 "sigma": {"value": 49.51, "source": src}}
    run_reference(CASE, model, dict(batch=jnp.asarray(batch), n_batch=len(bl), y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=1500, samples=2500, target_accept=0.95, published=published,
                  notes="One random intercept, 6 batches, non-centred. sd(1 | Batch)'s posterior is wide "
                        "(REML 42, ML 37; lme4's profile interval reaches 0).")


if __name__ == "__main__":
    main()
