"""Reference posterior for lme4's cbpp (binomial GLMM), hand-written in NumPyro (no hbm).

    incidence ~ binomial(size, inv_logit(Intercept + period effect + herd deviation))
    Intercept ~ normal(0, 5); factor(period)[2..4] ~ normal(0, 2.5); sd(1 | herd) ~ half_normal(2)
    herd deviation = sd * z, z ~ normal(0, 1)                      (non-centred)
"""
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from refkit import indexed, load_case_data, run_reference  # noqa: E402

CASE = "cbpp"


def model(period_idx, herd_idx, n_herd, size, incidence):
    intercept = numpyro.sample("Intercept", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([3]))          # periods 2, 3, 4
    sd = numpyro.sample("sd", dist.HalfNormal(2.0))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([n_herd]))
    eff = jnp.concatenate([jnp.zeros(1), beta])[period_idx]
    eta = intercept + eff + sd * z[herd_idx]
    numpyro.sample("y", dist.Binomial(total_count=size, logits=eta), obs=incidence)


def main():
    df = load_case_data(CASE)
    periods = sorted(df["period"].unique())                  # 1 is the reference level
    herds = sorted(df["herd"].unique(), key=int)
    kwargs = dict(period_idx=jnp.asarray(df["period"].map({p: i for i, p in enumerate(periods)}).to_numpy()),
                  herd_idx=jnp.asarray(df["herd"].map({h: i for i, h in enumerate(herds)}).to_numpy()),
                  n_herd=len(herds), size=jnp.asarray(df["size"].to_numpy(), dtype=jnp.float32),
                  incidence=jnp.asarray(df["incidence"].to_numpy(), dtype=jnp.float32))

    def to_hbm(d):
        out = {"Intercept": d["Intercept"]}
        for j, p in enumerate(periods[1:]):
            out[f"factor(period)[{p}]"] = d["beta"][..., j]
        out["sd(1 | herd)"] = d["sd"]
        herd_values = d["Intercept"][..., None] + d["sd"][..., None] * d["z"]
        out.update(indexed("Intercept", "herd", herds, herd_values))
        return out

    src = "lme4 ?cbpp / ?glmer example gm1 (Laplace ML), Bates et al. 2015 lme4 documentation"
    published = {"Intercept": {"value": -1.3983, "source": src},
                 "factor(period)[2]": {"value": -0.9919, "source": src},
                 "factor(period)[3]": {"value": -1.1282, "source": src},
                 "factor(period)[4]": {"value": -1.5797, "source": src},
                 "sd(1 | herd)": {"value": 0.6421, "source": src}}
    run_reference(CASE, model, kwargs, to_hbm, chains=4, warmup=2000, samples=2500, target_accept=0.9,
                  published=published,
                  notes="Non-centred herd effects; published values are ML (mode-like), the reference "
                        "reports posterior means.")


if __name__ == "__main__":
    main()
