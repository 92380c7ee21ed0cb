"""Reference posterior for cake: angle ~ recipe + temp + (1 | recipe:replicate), lognormal, without hbm.

log(angle) ~ N(eta, sigma). recipe: treatment coding, A the reference (recipe[B], recipe[C]).
Each batch (recipe:replicate; recipe is constant within it) is sampled centred, as its linear predictor at
the mean temperature 200: m'_g ~ N(Intercept + recipe_g + 200 temp, sd) (six rows a batch inform it well),
an exact reparameterisation of m_g ~ N(Intercept + recipe_g, sd) with eta = m_g + temp * temp_i.
hbm's Intercept[recipe:replicate=g] is Intercept + the batch's deviation = m'_g - 200 temp - recipe_g.
The population intercept is likewise sampled at the mean temperature, a' = Intercept + 200 temp (flat
base measure), with Intercept's normal(3, 2) prior added as a factor at Intercept = a' - 200 temp (a shear,
Jacobian 1: the same posterior; it removes the -0.999 correlation of Intercept and temp that made NUTS
take 220 leapfrog steps a draw). Priors as in spec.yaml.
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

CASE = "cake_lognormal"
T0 = 200.0   # mean temperature (balanced design)


def model(temp, batch, recipe_b, n_batch, y):
    a0 = numpyro.sample("a0", dist.ImproperUniform(dist.constraints.real, (), ()))   # Intercept + T0 temp
    c = numpyro.sample("recipe", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    b = numpyro.sample("temp", dist.Normal(0.0, 0.1))
    a = numpyro.deterministic("Intercept", a0 - T0 * b)
    numpyro.factor("prior_Intercept", dist.Normal(3.0, 2.0).log_prob(a))
    sd = numpyro.sample("sd", dist.HalfNormal(1.0))
    sigma = numpyro.sample("sigma", dist.Exponential(1.0))
    c_full = jnp.concatenate([jnp.zeros(1), c])
    with numpyro.plate("recipe:replicate", n_batch):
        m = numpyro.sample("m", dist.Normal(a0 + c_full[recipe_b], sd))
    eta = m[batch] + b * (temp - T0)
    numpyro.sample("y", dist.LogNormal(eta, sigma), obs=y)


def main():
    df = load_case_data(CASE)
    batch, labels = codes(df["recipe"] + ":" + df["replicate"])
    recipe_b = np.array([["A", "B", "C"].index(g.split(":")[0]) for g in labels])
    temp, y = df["temp"].to_numpy(float), df["angle"].to_numpy(float)

    def to_hbm(d):
        c_full = np.concatenate([np.zeros(d["recipe"].shape[:2] + (1,)), d["recipe"]], -1)
        out = {"Intercept": d["Intercept"], "recipe[B]": d["recipe"][..., 0], "recipe[C]": d["recipe"][..., 1],
               "temp": d["temp"], "sd(1 | recipe:replicate)": d["sd"], "sigma": d["sigma"]}
        out.update(indexed("Intercept", "recipe:replicate", labels,
                           d["m"] - T0 * d["temp"][..., None] - c_full[..., recipe_b]))
        return out

    n = len(df)
    r = df["recipe"].to_numpy()
    X = np.c_[np.ones(n), r == "B", r == "C", temp]
    fit = lmm_fit(X, np.log(y), [(batch, np.ones(n))], reml=True)
    print("lmm_reml REML on log(angle):", fit["beta"], fit["sd"], fit["sigma"])
    src = ("REML of the normal model of log(angle), by cases/lmm_reml.py (lme4's profiled deviance; it reproduces "
           "lme4's published REML fits of sleepstudy, Dyestuff, Penicillin, Pastes, Orthodont); lme4's ?cake "
           "fits angle, not log(angle)")
    names = ["Intercept", "recipe[B]", "recipe[C]", "temp", "sd(1 | recipe:replicate)", "sigma"]
    vals = [*fit["beta"], fit["sd"][0][0], fit["sigma"]]
    published = {k: {"value": round(float(v), 6), "source": src} for k, v in zip(names, vals)}
    run_reference(CASE, model, dict(temp=jnp.asarray(temp), batch=jnp.asarray(batch), recipe_b=jnp.asarray(recipe_b),
                                    n_batch=len(labels), y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=1500, samples=2500, target_accept=0.9,
                  published=published,
                  notes="Lognormal; batches and the population intercept sampled at the mean temperature "
                        "(exact reparameterisation; Intercept and the uncentred temp are -0.999 correlated).")


if __name__ == "__main__":
    main()
