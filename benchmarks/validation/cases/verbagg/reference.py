"""Reference posterior for lme4's VerbAgg (bernoulli GLMM, crossed respondent and item intercepts),
hand-written in NumPyro (no hbm).

    logit P(r2 = 1) = Intercept + b_Anger Anger + Gender[M] + btype[scold/shout] + situ[self]
                      + v_item + u_id,  v_item ~ normal(0, sd_item), u_id ~ normal(0, sd_id)
    Sampled as: m_item = Intercept + btype/situ effects + v_item ~ normal(Intercept + btype/situ
    effects, sd_item) (centred, with the item-level covariates btype and situ inside the item's
    mean: each item has 316 responses and a single btype and situ), u_id = sd_id * z,
    z ~ normal(0, 1) (respondents, non-centred: 24 responses each). The same model.
    Intercept ~ normal(0, 2.5); Anger ~ normal(0, 1); Gender, btype, situ levels ~ normal(0, 2.5);
    sd_id, sd_item ~ half_normal(2)
"""
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from refkit import indexed, load_case_data, run_reference  # noqa: E402

CASE = "verbagg"
ITEM_COEFS = ("btype[scold]", "btype[shout]", "situ[self]")


def model(anger, male, X_item, id_idx, n_id, item_idx, r2):
    intercept = numpyro.sample("Intercept", dist.Normal(0.0, 2.5))
    b_anger = numpyro.sample("Anger", dist.Normal(0.0, 1.0))
    b_male = numpyro.sample("Gender[M]", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([X_item.shape[1]]))   # scold, shout, self
    sd_id = numpyro.sample("sd_id", dist.HalfNormal(2.0))
    sd_item = numpyro.sample("sd_item", dist.HalfNormal(2.0))
    m_item = numpyro.sample("m_item", dist.Normal(intercept + X_item @ beta, sd_item))
    z_id = numpyro.sample("z_id", dist.Normal(0.0, 1.0).expand([n_id]))
    eta = m_item[item_idx] + b_anger * anger + b_male * male + sd_id * z_id[id_idx]
    numpyro.sample("y", dist.Bernoulli(logits=eta), obs=r2)


def main():
    df = load_case_data(CASE)
    ids = sorted(df["id"].unique(), key=int)
    items = sorted(df["item"].unique())
    per_item = df.groupby("item")[["btype", "situ"]].first().loc[items]       # one btype, situ per item
    assert (df.groupby("item")[["btype", "situ"]].nunique() == 1).all().all()
    X_item = np.column_stack([per_item["btype"] == "scold", per_item["btype"] == "shout",
                              per_item["situ"] == "self"]).astype(np.float32)
    kwargs = dict(anger=jnp.asarray(df["Anger"].to_numpy(), dtype=jnp.float32),
                  male=jnp.asarray((df["Gender"] == "M").to_numpy(), dtype=jnp.float32),
                  X_item=jnp.asarray(X_item),
                  id_idx=jnp.asarray(df["id"].map({s: i for i, s in enumerate(ids)}).to_numpy()), n_id=len(ids),
                  item_idx=jnp.asarray(df["item"].map({s: i for i, s in enumerate(items)}).to_numpy()),
                  r2=jnp.asarray(df["r2"].to_numpy(), dtype=jnp.float32))

    def to_hbm(d):
        out = {"Intercept": d["Intercept"], "Anger": d["Anger"], "Gender[M]": d["Gender[M]"]}
        for j, c in enumerate(ITEM_COEFS):
            out[c] = d["beta"][..., j]
        out["sd(1 | id)"] = d["sd_id"]
        out["sd(1 | item)"] = d["sd_item"]
        out.update(indexed("Intercept", "id", ids, d["Intercept"][..., None] + d["sd_id"][..., None] * d["z_id"]))
        # an item's value: Intercept plus its own deviation (its btype/situ effects taken out)
        out.update(indexed("Intercept", "item", items, d["m_item"] - np.einsum("cdk,jk->cdj", d["beta"], X_item)))
        return out

    src = ("MixedModels.jl test/markdown.jl (JuliaStats/MixedModels.jl): Laplace ML of "
           "r2 ~ 1 + anger + gender + btype + situ + (1|subj) + (1|item) on lme4's VerbAgg")
    vals = {"Intercept": 0.1955554704948119, "Anger": 0.05755412761885973, "Gender[M]": 0.3207843518569843,
            "btype[scold]": -1.0582595252774376, "btype[shout]": -2.1047524824609853,
            "situ[self]": -1.0549789653925743, "sd(1 | id)": 1.339766125847893,
            "sd(1 | item)": 0.4953047709862237}
    published = {k: {"value": round(v, 6), "source": src} for k, v in vals.items()}
    run_reference(CASE, model, kwargs, to_hbm, chains=4, warmup=2000, samples=2500, target_accept=0.9,
                  dense_mass=True,
                  published=published,
                  notes="Item means centred around Intercept plus their btype/situ effects (each item has "
                        "316 responses), respondent effects non-centred. Published values are ML.")


if __name__ == "__main__":
    main()
