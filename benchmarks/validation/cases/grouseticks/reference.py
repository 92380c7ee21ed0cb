"""Reference posterior for lme4's grouseticks (Poisson GLMM, three intercept terms), in NumPyro (no hbm).

    TICKS ~ poisson(exp(Intercept + year effect + cHEIGHT * b + u_BROOD + u_INDEX + u_LOCATION))
    Intercept ~ normal(0, 5); factor(YEAR)[96], [97] ~ normal(0, 2.5); cHEIGHT ~ normal(0, 0.25)
    sd(1 | BROOD), sd(1 | INDEX), sd(1 | LOCATION) ~ half_normal(1); u_g = sd_g * z_g, z ~ normal(0, 1)
"""
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from refkit import indexed, load_case_data, run_reference  # noqa: E402

CASE = "grouseticks"
GROUPS = ("BROOD", "INDEX", "LOCATION")


def model(year_idx, height, idx, sizes, ticks):
    intercept = numpyro.sample("Intercept", dist.Normal(0.0, 5.0))
    beta_year = numpyro.sample("beta_year", dist.Normal(0.0, 2.5).expand([2]))   # 96, 97 vs 95
    b_height = numpyro.sample("cHEIGHT", dist.Normal(0.0, 0.25))
    eta = intercept + jnp.concatenate([jnp.zeros(1), beta_year])[year_idx] + b_height * height
    for g in GROUPS:
        sd = numpyro.sample(f"sd_{g}", dist.HalfNormal(1.0))
        z = numpyro.sample(f"z_{g}", dist.Normal(0.0, 1.0).expand([sizes[g]]))
        eta = eta + sd * z[idx[g]]
    numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=ticks)


def main():
    df = load_case_data(CASE)
    years = sorted(df["YEAR"].unique())
    labels = {g: sorted(df[g].unique(), key=int) for g in GROUPS}
    idx = {g: jnp.asarray(df[g].map({l: i for i, l in enumerate(labels[g])}).to_numpy()) for g in GROUPS}
    kwargs = dict(year_idx=jnp.asarray(df["YEAR"].map({y: i for i, y in enumerate(years)}).to_numpy()),
                  height=jnp.asarray(df["cHEIGHT"].to_numpy(), dtype=jnp.float32), idx=idx,
                  sizes={g: len(labels[g]) for g in GROUPS},
                  ticks=jnp.asarray(df["TICKS"].to_numpy(), dtype=jnp.float32))

    def to_hbm(d):
        out = {"Intercept": d["Intercept"]}
        for j, y in enumerate(years[1:]):
            out[f"factor(YEAR)[{y}]"] = d["beta_year"][..., j]
        out["cHEIGHT"] = d["cHEIGHT"]
        for g in GROUPS:
            out[f"sd(1 | {g})"] = d[f"sd_{g}"]
        for g in GROUPS:
            vals = d["Intercept"][..., None] + d[f"sd_{g}"][..., None] * d[f"z_{g}"]
            out.update(indexed("Intercept", g, labels[g], vals))
        return out

    # lme4's stored glmer fit of TICKS ~ YEAR + HEIGHT + (1|BROOD) + (1|INDEX) + (1|LOCATION)
    # (Laplace ML; variances 0.29323, 0.56255, 0.27955). HEIGHT is uncentred there: with
    # cHEIGHT = HEIGHT - mean(HEIGHT) the intercept is 11.35591 - 0.0237607 * mean(HEIGHT).
    src = "lme4 tests/elston.R (stored glmer Laplace ML fit, lme4 GitHub repository)"
    mean_height = float(df["HEIGHT"].mean())
    published = {
        "Intercept": {"value": round(11.3559080756861 - 0.0237607330254979 * mean_height, 4),
                      "source": src + "; intercept shifted to centred height"},
        "factor(YEAR)[96]": {"value": 1.1804, "source": src},
        "factor(YEAR)[97]": {"value": -0.9787, "source": src},
        "cHEIGHT": {"value": -0.02376, "source": src},
        "sd(1 | INDEX)": {"value": round(0.293232458048324 ** 0.5, 4), "source": src},
        "sd(1 | BROOD)": {"value": round(0.562551624933584 ** 0.5, 4), "source": src},
        "sd(1 | LOCATION)": {"value": round(0.279548178949372 ** 0.5, 4), "source": src},
    }
    run_reference(CASE, model, kwargs, to_hbm, chains=4, warmup=2000, samples=8000, target_accept=0.99,
                  published=published,
                  notes="All three intercept terms non-centred; target_accept 0.99 (at 0.9 and 0.95 a few "
                        "divergences remained, in float32 and float64 alike). Published values are lme4 ML.")


if __name__ == "__main__":
    main()
