"""Reference posterior for InstEval: y ~ factor(service) + (1 | s) + (1 | d) + (1 | dept:service), normal,
without hbm. 73,421 rows, 4,128 group levels.

Three crossed random intercepts, all centred (every level is well informed: ~25 ratings a student, ~65 an
instructor, ~2,600 a dept:service cell, against a residual sd of 1.18): student u_s ~ N(0, sd_s), each
dept:service cell's mean m_k ~ N(Intercept + factor(service)[1] service_k, sd_ds) (service is constant
within a cell), and each instructor centred on his main cell g(d) (the cell with most of his ratings; every
instructor is in one department): w_d = v_d + m_g(d) ~ N(m_g(d), sd_d), the row mean being
m_k - m_g(d) + w_d + u_s. This shear (Jacobian 1, exact for any choice of g) removes the direction that
made a plain centred sampler mix at 0.08 ESS per draw: shifting a department's cells up and its ~80
instructors down leaves the likelihood unchanged. hbm's group values: Intercept[s=i] = Intercept + u_i,
Intercept[d=j] = Intercept + v_j, Intercept[dept:service=k] = Intercept + the cell's deviation =
m_k - factor(service)[1] service_k. Priors as in spec.yaml.
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

CASE = "insteval"
WARMUP, SAMPLES = 1000, 1500
# lmm_reml's REML fit (python reference.py --reml recomputes it): Intercept, factor(service)[1],
# sd(1 | s), sd(1 | d), sd(1 | dept:service), sigma
REML = [3.28067, -0.05350, 0.32466, 0.51252, 0.10959, 1.17684]


def model(s, d, k, g, service_k, n_s, n_d, n_k, y):
    a = numpyro.sample("Intercept", dist.Normal(3.0, 2.0))
    b = numpyro.sample("service", dist.Normal(0.0, 1.0))
    sd_s = numpyro.sample("sd_s", dist.HalfNormal(1.0))
    sd_d = numpyro.sample("sd_d", dist.HalfNormal(1.0))
    sd_k = numpyro.sample("sd_k", dist.HalfNormal(1.0))
    sigma = numpyro.sample("sigma", dist.Exponential(1.0))
    with numpyro.plate("s", n_s):
        u = numpyro.sample("u", dist.Normal(0.0, sd_s))
    with numpyro.plate("dept:service", n_k):
        m = numpyro.sample("m", dist.Normal(a + b * service_k, sd_k))
    with numpyro.plate("d", n_d):
        w = numpyro.sample("w", dist.Normal(m[g], sd_d))
    numpyro.sample("y", dist.Normal(m[k] - m[g[d]] + w[d] + u[s], sigma), obs=y)


def main():
    df = load_case_data(CASE)
    s, sl = codes(df["s"])
    d, dl = codes(df["d"])
    k, kl = codes(df["dept"] + ":" + df["service"].astype(str))
    service_k = np.array([float(lab.split(":")[1]) for lab in kl])
    counts = np.zeros((len(dl), len(kl)))
    np.add.at(counts, (d, k), 1.0)
    g = counts.argmax(1)                      # each instructor's main dept:service cell
    y = df["y"].to_numpy(float)

    def to_hbm(dr):
        a = dr["Intercept"][..., None]
        out = {"Intercept": dr["Intercept"], "factor(service)[1]": dr["service"], "sd(1 | s)": dr["sd_s"],
               "sd(1 | d)": dr["sd_d"], "sd(1 | dept:service)": dr["sd_k"], "sigma": dr["sigma"]}
        out.update(indexed("Intercept", "s", sl, a + dr["u"]))
        out.update(indexed("Intercept", "d", dl, a + dr["w"] - dr["m"][..., g]))
        out.update(indexed("Intercept", "dept:service", kl, dr["m"] - dr["service"][..., None] * service_k))
        return out

    names = ["Intercept", "factor(service)[1]", "sd(1 | s)", "sd(1 | d)", "sd(1 | dept:service)", "sigma"]
    if "--reml" in sys.argv:   # about 7 minutes: dense 4,128 x 4,128 Cholesky factors
        n = len(df)
        X = np.c_[np.ones(n), df["service"].to_numpy(float)]
        fit = lmm_fit(X, y, [(s, np.ones(n)), (d, np.ones(n)), (k, np.ones(n))], reml=True, polish=False)
        vals = [*fit["beta"], *[x[0] for x in fit["sd"]], fit["sigma"]]
        print("lmm_reml REML:", [round(float(v), 5) for v in vals], flush=True)
    else:
        vals = REML
    src = ("REML by cases/lmm_reml.py (lme4's profiled deviance, L-BFGS-B; it reproduces lme4's published REML "
           "fits of sleepstudy, Dyestuff, Penicillin, Pastes, Orthodont); stored from a run of "
           "`reference.py --reml`, which recomputes it")
    published = {nm: {"value": round(float(v), 5), "source": src} for nm, v in zip(names, vals)}
    run_reference(CASE, model, dict(s=jnp.asarray(s), d=jnp.asarray(d), k=jnp.asarray(k), g=jnp.asarray(g),
                                    service_k=jnp.asarray(service_k), n_s=len(sl), n_d=len(dl), n_k=len(kl),
                                    y=jnp.asarray(y)),
                  to_hbm, chains=4, warmup=WARMUP, samples=SAMPLES, target_accept=0.9, published=published,
                  notes="Three crossed random intercepts, all centred: the dept:service cells on the population "
                        "mean, each instructor on his main cell (exact shear); 73,421 rows, 4,128 levels.")


if __name__ == "__main__":
    main()
