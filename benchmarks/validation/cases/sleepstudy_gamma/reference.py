"""Reference posterior for sleepstudy (gamma): inverse(rt) ~ Days + (Days | Subject), gamma, without hbm.

rt ~ Gamma(shape phi, rate phi / mu), 1 / mu = eta (the inverse link: eta is the response speed, per s).
Each subject's (intercept, slope) deviation is diag(sd) L z, z ~ N(0, I), L ~ LKJCholesky(2, 2)
(non-centred). eta <= 0 has no density (log density -inf there; the posterior is far from it:
speeds of 2-5 per s). Priors as in spec.yaml.
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

CASE = "sleepstudy_gamma"


def gamma_inverse_ll(eta, y, phi):
    """log Gamma(y; shape phi, rate phi * eta) per row; -inf where eta <= 0."""
    ok = eta > 0
    e = jnp.where(ok, eta, 1.0)
    ll = phi * jnp.log(phi * e) + (phi - 1) * jnp.log(y) - phi * e * y - jsp.gammaln(phi)
    return jnp.where(ok, ll, -jnp.inf)


def model(days, subj, n_subj, y):
    a = numpyro.sample("Intercept", dist.Normal(3.0, 2.0))
    b = numpyro.sample("Days", dist.Normal(0.0, 1.0))
    sd_a = numpyro.sample("sd_a", dist.HalfNormal(1.0))
    sd_b = numpyro.sample("sd_b", dist.HalfNormal(0.5))
    L = numpyro.sample("L", dist.LKJCholesky(2, 2.0))
    phi = numpyro.sample("phi", dist.Gamma(2.0, 0.02))
    with numpyro.plate("Subject", n_subj):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    r = z @ (jnp.stack([sd_a, sd_b])[:, None] * L).T
    eta = a + r[subj, 0] + (b + r[subj, 1]) * days
    numpyro.factor("loglik", jnp.sum(gamma_inverse_ll(eta, y, phi)))


def main():
    df = load_case_data(CASE)
    subj, labels = codes(df["Subject"])
    days, y = df["Days"].to_numpy(float), df["rt"].to_numpy(float)

    def to_hbm(d):
        L = d["L"]
        r = np.einsum("cdgk,cdjk->cdgj", d["z"], np.stack([d["sd_a"], d["sd_b"]], -1)[..., :, None] * L)
        out = {"Intercept": d["Intercept"], "Days": d["Days"], "sd(1 | Subject)": d["sd_a"],
               "sd(Days | Subject)": d["sd_b"], "cor(1, Days | Subject)": L[..., 1, 0], "phi": d["phi"]}
        out.update(indexed("Intercept", "Subject", labels, d["Intercept"][..., None] + r[..., 0]))
        out.update(indexed("Days", "Subject", labels, d["Days"][..., None] + r[..., 1]))
        return out

    X = np.c_[np.ones(len(df)), days]
    fit = laplace_fit(lambda eta, y, aux: gamma_inverse_ll(eta, y, aux[0]), X, X, subj, y, n_aux=1,
                      x0=[3.5, -0.1, np.log(0.5), np.log(0.1), 0.0, np.log(50.0)])
    print("glmm_laplace ML:", fit["beta"], fit["sd"], fit["cor"], fit["aux"], fit["loglik"])
    src = ("ML by the Laplace approximation (glmer(rt ~ Days + (Days | Subject), family = Gamma), nAGQ = 1), "
           "computed by cases/glmm_laplace.py; no published fit of this model")
    names = ["Intercept", "Days", "sd(1 | Subject)", "sd(Days | Subject)", "cor(1, Days | Subject)", "phi"]
    vals = [*fit["beta"], *fit["sd"], fit["cor"], fit["aux"][0]]
    published = {k: {"value": round(float(v), 5), "source": src} for k, v in zip(names, vals)}
    run_reference(CASE, model, dict(days=jnp.asarray(days), subj=jnp.asarray(subj), n_subj=len(labels),
                                    y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=1500, samples=2500, target_accept=0.9, published=published,
                  notes="Gamma, inverse link (eta = speed per s), non-centred correlated subject effects.")


if __name__ == "__main__":
    main()
