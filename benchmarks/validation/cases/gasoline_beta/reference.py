"""Reference posterior for GasolineYield: yield ~ temp + (1 | batch), beta (logit link), without hbm.

yield ~ Beta(mu phi, (1 - mu) phi), logit(mu) = eta. temp is uncentred (205-470), so the population intercept
and each batch are sampled at temp T0 = 330: a' = Intercept + T0 temp (flat base measure, with Intercept's
normal(0, 5) prior added as a factor at Intercept = a' - T0 temp: a shear with Jacobian 1, the same
posterior), and the batch values centred, m'_b ~ N(a', sd) (3-4 rows with phi ~ 400 inform each well).
hbm's Intercept[batch=b] is Intercept + the batch's deviation = m'_b - T0 temp. Priors as in spec.yaml.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import numpyro
import numpyro.distributions as dist

from glmm_laplace import laplace_fit
from lmm_reml import codes
from refkit import indexed, load_case_data, run_reference

CASE = "gasoline_beta"
T0 = 330.0


def beta_logit_ll(eta, y, phi):
    mu = jsp.expit(eta)
    return dist.Beta(mu * phi, (1 - mu) * phi).log_prob(y)


def model(temp, batch, n_batch, y):
    a0 = numpyro.sample("a0", dist.ImproperUniform(dist.constraints.real, (), ()))   # Intercept + T0 temp
    b = numpyro.sample("temp", dist.Normal(0.0, 0.05))
    a = numpyro.deterministic("Intercept", a0 - T0 * b)
    numpyro.factor("prior_Intercept", dist.Normal(0.0, 5.0).log_prob(a))
    sd = numpyro.sample("sd", dist.HalfNormal(2.0))
    phi = numpyro.sample("phi", dist.Gamma(2.0, 0.005))
    with numpyro.plate("batch", n_batch):
        m = numpyro.sample("m", dist.Normal(a0, sd))
    eta = m[batch] + b * (temp - T0)
    numpyro.factor("loglik", jnp.sum(beta_logit_ll(eta, y, phi)))


def main():
    df = load_case_data(CASE)
    batch, labels = codes(df["batch"])
    temp, y = df["temp"].to_numpy(float), df["yield"].to_numpy(float)

    def to_hbm(d):
        out = {"Intercept": d["Intercept"], "temp": d["temp"], "sd(1 | batch)": d["sd"], "phi": d["phi"]}
        out.update(indexed("Intercept", "batch", labels, d["m"] - T0 * d["temp"][..., None]))
        return out

    n = len(df)
    X = np.c_[np.ones(n), temp - T0]
    fit = laplace_fit(lambda eta, y, aux: beta_logit_ll(eta, y, aux[0]), X, np.ones(n), batch, y, n_aux=1,
                      x0=[-1.5, 0.01, np.log(0.5), np.log(300.0)])
    icpt = fit["beta"][0] - T0 * fit["beta"][1]
    print("glmm_laplace ML:", icpt, fit["beta"], fit["sd"], fit["aux"], fit["loglik"])
    src = ("ML by the Laplace approximation (glmmTMB-style beta GLMM, one random intercept), computed by "
           "cases/glmm_laplace.py; published for the fixed-batch model yield ~ batch + temp (betareg, "
           "Cribari-Neto & Zeileis 2010, JSS 34(2)): temp 0.01097, phi 440.3")
    vals = {"Intercept": icpt, "temp": fit["beta"][1], "sd(1 | batch)": fit["sd"][0], "phi": fit["aux"][0]}
    published = {k: {"value": round(float(v), 6), "source": src} for k, v in vals.items()}
    run_reference(CASE, model, dict(temp=jnp.asarray(temp), batch=jnp.asarray(batch), n_batch=len(labels),
                                    y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=1500, samples=2500, target_accept=0.9, published=published,
                  notes="Beta, logit link; uncentred temp; intercept and batches sampled at temp 330 "
                        "(exact reparameterisation), batches centred.")


if __name__ == "__main__":
    main()
