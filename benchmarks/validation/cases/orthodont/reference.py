"""Reference posterior for Orthodont: distance ~ age * Sex + (age | Subject), normal, without hbm.

Treatment coding with Female (the first level, sorted) as reference: Sex[Male], age:Sex[Male].
The subject deviations (r0, r1) ~ N(0, Sigma), Sigma from sd(1 | Subject), sd(age | Subject) and
L ~ LKJCholesky(2, 2) (the priors are on these, as in hbm), are sampled in an exactly equivalent
parameterisation that NUTS handles (a plain non-centred one gave divergences and ESS ~150 for
sd(age | Subject)): the deviation at the mean age 11, rc = r0 + 11 r1, centred (4 rows per subject
inform it well), and the slope deviation given it, r1 | rc, non-centred (weakly informed). hbm's Intercept[Subject=M01] and
age[Subject=M01] are the population Intercept / age plus the subject's deviation (the Sex terms are
not added), which is what the reference reports. Priors as in spec.yaml.
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

CASE = "orthodont"
AGE0 = 11.0   # mean age (balanced design: 8, 10, 12, 14)


def model(age, male, subj, n_subj, y):
    a = numpyro.sample("Intercept", dist.Normal(20.0, 10.0))
    b = numpyro.sample("age", dist.Normal(0.0, 2.0))
    c = numpyro.sample("Sex", dist.Normal(0.0, 5.0))
    d = numpyro.sample("age_Sex", dist.Normal(0.0, 1.0))
    sd_a = numpyro.sample("sd_a", dist.HalfNormal(5.0))
    sd_b = numpyro.sample("sd_b", dist.HalfNormal(1.0))
    L = numpyro.sample("L", dist.LKJCholesky(2, 2.0))
    sigma = numpyro.sample("sigma", dist.Exponential(0.5))
    rho = L[1, 0]
    v00 = sd_a ** 2 + 2 * AGE0 * rho * sd_a * sd_b + AGE0 ** 2 * sd_b ** 2   # var(rc)
    v01 = rho * sd_a * sd_b + AGE0 * sd_b ** 2                              # cov(rc, r1)
    with numpyro.plate("Subject", n_subj):
        rc = numpyro.sample("rc", dist.Normal(0.0, jnp.sqrt(v00)))
        z1 = numpyro.sample("z1", dist.Normal(0.0, 1.0))
    r1 = v01 / v00 * rc + jnp.sqrt(jnp.clip(sd_b ** 2 - v01 ** 2 / v00, 1e-30)) * z1
    numpyro.deterministic("r1", r1)
    r0 = rc - AGE0 * r1
    mu = a + c * male + r0[subj] + (b + d * male + r1[subj]) * age
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def main():
    df = load_case_data(CASE)
    subj, labels = codes(df["Subject"])
    age, y = df["age"].to_numpy(float), df["distance"].to_numpy(float)
    male = (df["Sex"] == "Male").to_numpy(float)

    def to_hbm(d):
        L = d["L"]
        r1 = d["r1"]
        r0 = d["rc"] - AGE0 * r1
        out = {"Intercept": d["Intercept"], "age": d["age"], "Sex[Male]": d["Sex"], "age:Sex[Male]": d["age_Sex"],
               "sd(1 | Subject)": d["sd_a"], "sd(age | Subject)": d["sd_b"],
               "cor(1, age | Subject)": L[..., 1, 0], "sigma": d["sigma"]}
        out.update(indexed("Intercept", "Subject", labels, d["Intercept"][..., None] + r0))
        out.update(indexed("age", "Subject", labels, d["age"][..., None] + r1))
        return out

    X = np.c_[np.ones(len(df)), age, male, age * male]
    fit = lmm_fit(X, y, [(subj, X[:, :2])], reml=True)
    print("lmm_reml REML:", fit["beta"], fit["sd"], fit["cor"][0][0, 1], fit["sigma"])
    src = ("nlme/lme4 REML for random = ~ age | Subject, Pinheiro & Bates (2000) Mixed-Effects Models in S and "
           "S-PLUS, ch. 4 (fixed effects converted from the Male-reference coding: 16.3406, 0.7844, 1.0321, "
           "-0.3048); reproduced by cases/lmm_reml.py")
    published = {"Intercept": {"value": 17.3727, "source": src}, "age": {"value": 0.4795, "source": src},
                 "Sex[Male]": {"value": -1.0321, "source": src}, "age:Sex[Male]": {"value": 0.3048, "source": src},
                 "sd(1 | Subject)": {"value": 2.4055, "source": src},
                 "sd(age | Subject)": {"value": 0.1803, "source": src},
                 "cor(1, age | Subject)": {"value": -0.668, "source": src},
                 "sigma": {"value": 1.3100, "source": src}}
    run_reference(CASE, model, dict(age=jnp.asarray(age), male=jnp.asarray(male), subj=jnp.asarray(subj),
                                    n_subj=len(labels), y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=2000, samples=4000, target_accept=0.95, dense_mass=True,
                  published=published,
                  notes="Uncentred age (8-14): Intercept and age are strongly correlated a posteriori; dense "
                        "mass matrix. Subject effects: deviation at age 11 centred, slope given it non-centred.")


if __name__ == "__main__":
    main()
