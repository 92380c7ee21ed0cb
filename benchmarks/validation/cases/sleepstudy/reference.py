"""Reference posterior for sleepstudy: Reaction ~ Days + (Days | Subject), normal, without hbm.

Non-centred: each subject's (intercept, slope) deviation is diag(sd) L z with z ~ N(0, I) and
L ~ LKJCholesky(2, 2). Priors as in spec.yaml.
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

CASE = "sleepstudy"


def model(days, subj, n_subj, y):
    a = numpyro.sample("Intercept", dist.Normal(250.0, 100.0))
    b = numpyro.sample("Days", dist.Normal(0.0, 25.0))
    sd_a = numpyro.sample("sd_a", dist.HalfNormal(100.0))
    sd_b = numpyro.sample("sd_b", dist.HalfNormal(25.0))
    L = numpyro.sample("L", dist.LKJCholesky(2, 2.0))
    sigma = numpyro.sample("sigma", dist.Exponential(0.02))
    with numpyro.plate("Subject", n_subj):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    r = z @ (jnp.stack([sd_a, sd_b])[:, None] * L).T
    mu = a + r[subj, 0] + (b + r[subj, 1]) * days
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def main():
    df = load_case_data(CASE)
    subj, labels = codes(df["Subject"])
    days, y = df["Days"].to_numpy(float), df["Reaction"].to_numpy(float)

    def to_hbm(d):
        L = d["L"]
        r = np.einsum("cdgk,cdjk->cdgj", d["z"], np.stack([d["sd_a"], d["sd_b"]], -1)[..., :, None] * L)
        out = {"Intercept": d["Intercept"], "Days": d["Days"], "sd(1 | Subject)": d["sd_a"],
               "sd(Days | Subject)": d["sd_b"], "cor(1, Days | Subject)": L[..., 1, 0], "sigma": d["sigma"]}
        out.update(indexed("Intercept", "Subject", labels, d["Intercept"][..., None] + r[..., 0]))
        out.update(indexed("Days", "Subject", labels, d["Days"][..., None] + r[..., 1]))
        return out

    X = np.c_[np.ones(len(df)), days]
    fit = lmm_fit(X, y, [(subj, X)], reml=True)
    src = ("lme4 REML, Bates, Maechler, Bolker & Walker (2015) JSS 67(1), fm1 (sleepstudy); "
           "reproduced by cases/lmm_reml.py")
    published = {
        "Intercept": {"value": 251.405, "source": src},
        "Days": {"value": 10.467, "source": src},
        "sd(1 | Subject)": {"value": 24.741, "source": src},
        "sd(Days | Subject)": {"value": 5.922, "source": src},
        "cor(1, Days | Subject)": {"value": 0.066, "source": src},
        "sigma": {"value": 25.592, "source": src},
    }
    print("lmm_reml REML:", fit["beta"], fit["sd"], fit["cor"][0][0, 1], fit["sigma"])
    run_reference(CASE, model, dict(days=jnp.asarray(days), subj=jnp.asarray(subj), n_subj=len(labels),
                                    y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=1500, samples=2500, target_accept=0.9, published=published,
                  notes="Non-centred varying intercept and slope, LKJCholesky(2, 2). The posterior means of "
                        "the sd's sit above REML (18 subjects; the half-normal priors are weak).")


if __name__ == "__main__":
    main()
