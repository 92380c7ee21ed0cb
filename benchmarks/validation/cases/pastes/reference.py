"""Reference posterior for Pastes: strength ~ 1 + (1 | batch/cask), normal, without hbm.

lme4 nesting: (1 | batch) + (1 | batch:cask). Parameterised for NUTS (fully non-centred gave
divergences): the batch deviations non-centred (weakly informed), each cask's mean centred on its
batch's, m_c ~ N(Intercept + b_batch, sd_cask) (2 assays per cask inform it well); the same model. hbm's Intercept[batch:cask=A:a] is the
population intercept plus that cask's deviation (not plus its batch's). Priors as in spec.yaml.
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

CASE = "pastes"


def model(cask_batch, cask, n_batch, n_cask, y):
    a = numpyro.sample("Intercept", dist.Normal(60.0, 20.0))
    sd_b = numpyro.sample("sd_b", dist.HalfNormal(5.0))
    sd_c = numpyro.sample("sd_c", dist.HalfNormal(5.0))
    sigma = numpyro.sample("sigma", dist.Exponential(1.0))
    with numpyro.plate("batch", n_batch):
        z_b = numpyro.sample("z_b", dist.Normal(0.0, 1.0))
    b = sd_b * z_b
    with numpyro.plate("batch:cask", n_cask):
        m_c = numpyro.sample("m_c", dist.Normal(a + b[cask_batch], sd_c))
    mu = m_c[cask]
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def main():
    df = load_case_data(CASE)
    batch, bl = codes(df["batch"])
    cask, cl = codes(df["batch"] + ":" + df["cask"])
    y = df["strength"].to_numpy(float)

    def to_hbm(d):
        a = d["Intercept"][..., None]
        out = {"Intercept": d["Intercept"], "sd(1 | batch)": d["sd_b"], "sd(1 | batch:cask)": d["sd_c"],
               "sigma": d["sigma"]}
        out.update(indexed("Intercept", "batch", bl, a + d["sd_b"][..., None] * d["z_b"]))
        b = d["sd_b"][..., None] * d["z_b"]
        out.update(indexed("Intercept", "batch:cask", cl, d["m_c"] - b[..., cask_batch]))
        return out

    n = len(df)
    fit = lmm_fit(np.ones((n, 1)), y, [(batch, np.ones(n)), (cask, np.ones(n))], reml=True)
    print("lmm_reml REML:", fit["beta"], fit["sd"], fit["sigma"])
    src = "lme4 REML, Bates (2010) lme4: Mixed-effects modeling with R, ch. 2 (Pastes); reproduced by cases/lmm_reml.py"
    published = {"Intercept": {"value": 60.0533, "source": src},
                 "sd(1 | batch)": {"value": 1.2874, "source": src},
                 "sd(1 | batch:cask)": {"value": 2.9041, "source": src},
                 "sigma": {"value": 0.8234, "source": src}}
    cask_batch = np.array([bl.index(c.split(":")[0]) for c in cl])
    run_reference(CASE, model, dict(cask_batch=jnp.asarray(cask_batch), cask=jnp.asarray(cask), n_batch=len(bl),
                                    n_cask=len(cl), y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=1500, samples=2500, target_accept=0.99, published=published,
                  notes="Nested random intercepts, batch non-centred, cask centred on its batch. sd(1 | batch) is weakly identified (REML "
                        "1.29 with a 10-batch design whose cask sd is 2.9): its posterior reaches 0.")


if __name__ == "__main__":
    main()
