"""Reference posterior for Penicillin: diameter ~ 1 + (1 | plate) + (1 | sample), normal, without hbm.

Crossed random intercepts, centred (both groupings are well informed by the data: 6 rows per plate,
24 per sample; non-centring gave divergences): each sample's value m_s ~ N(Intercept, sd_s), each plate's
deviation b_p ~ N(0, sd_p). The same model as hbm's; priors as in spec.yaml.
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

CASE = "penicillin"


def model(plate, sample, n_plate, n_sample, y):
    a = numpyro.sample("Intercept", dist.Normal(20.0, 10.0))
    sd_p = numpyro.sample("sd_p", dist.HalfNormal(5.0))
    sd_s = numpyro.sample("sd_s", dist.HalfNormal(5.0))
    sigma = numpyro.sample("sigma", dist.Exponential(1.0))
    with numpyro.plate("plate", n_plate):
        b_p = numpyro.sample("b_p", dist.Normal(0.0, sd_p))
    with numpyro.plate("sample", n_sample):
        m_s = numpyro.sample("m_s", dist.Normal(a, sd_s))
    mu = m_s[sample] + b_p[plate]
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def main():
    df = load_case_data(CASE)
    plate, pl = codes(df["plate"])
    sample, sl = codes(df["sample"])
    y = df["diameter"].to_numpy(float)

    def to_hbm(d):
        a = d["Intercept"][..., None]
        out = {"Intercept": d["Intercept"], "sd(1 | plate)": d["sd_p"], "sd(1 | sample)": d["sd_s"],
               "sigma": d["sigma"]}
        out.update(indexed("Intercept", "plate", pl, a + d["b_p"]))
        out.update(indexed("Intercept", "sample", sl, d["m_s"]))
        return out

    n = len(df)
    fit = lmm_fit(np.ones((n, 1)), y, [(plate, np.ones(n)), (sample, np.ones(n))], reml=True)
    print("lmm_reml REML:", fit["beta"], fit["sd"], fit["sigma"])
    src = "lme4 REML, Bates (2010) lme4: Mixed-effects modeling with R, ch. 2 (Penicillin); reproduced by cases/lmm_reml.py"
    published = {"Intercept": {"value": 22.9722, "source": src},
                 "sd(1 | plate)": {"value": 0.8467, "source": src},
                 "sd(1 | sample)": {"value": 1.9316, "source": src},
                 "sigma": {"value": 0.5499, "source": src}}
    run_reference(CASE, model, dict(plate=jnp.asarray(plate), sample=jnp.asarray(sample), n_plate=len(pl),
                                    n_sample=len(sl), y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=1500, samples=4000, target_accept=0.9, published=published,
                  notes="Crossed random intercepts, centred. Only 6 samples: sd(1 | sample)'s posterior "
                        "is wide and right-skewed, its mean well above REML.")


if __name__ == "__main__":
    main()
