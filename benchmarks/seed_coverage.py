"""Coverage of the seed model's product elasticities on the shared bench generator's data
(prices around 20, so log price is uncentred), with hbm's default engine for that size.

    PYTHONPATH=$PWD python benchmarks/seed_coverage.py --products 1000 --periods 52 --seeds 0 1

Prints, per data set, the 90% interval coverage of the true product elasticities, the mean
interval width, the population elasticity's error in posterior sds, steps and seconds (one JSON
line each). The truth is the generator's; the model is the README's (fixed category sd 1,
priors as there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "shared" / "bench"))

SPEC = {
    "name": "seed_bench",
    "formula": "log(units) ~ 0 + log(price) | product/category + 1 | product + (1 | cat_by_time)",
    "family": "poisson",
    "priors": {"log(price)": "normal(-2, 1)", "sd(log(price) | category)": 1, "sd(log(price) | product)": 2,
               "sd(1 | product)": 3, "sd(1 | cat_by_time)": 3},
}


def one(products: int, periods: int, seed: int, engine: str | None) -> dict:
    import hbm
    from gen_elasticity import generate
    df, truth = generate(products, 10, periods, seed)
    model = hbm.compile(SPEC, df)
    t0 = time.perf_counter()
    r = hbm.fit(model, **({"engine": engine} if engine else {}))
    seconds = time.perf_counter() - t0
    s = r.summary()
    names = [f"log(price)[product={p}]" for p in truth["product_names"]]
    lo, hi = s.loc[names, "q5"].to_numpy(), s.loc[names, "q95"].to_numpy()
    true = np.asarray(truth["product_a"])
    pop = s.loc["log(price)"]
    return {"products": products, "periods": periods, "seed": seed, "engine": r.config.engine,
            "coverage90": float(np.mean((lo <= true) & (true <= hi))), "mean_width": float(np.mean(hi - lo)),
            "pop_mean": float(pop["mean"]), "pop_sd": float(pop["sd"]), "pop_truth": truth["global_a"],
            "pop_err_sd": float((pop["mean"] - truth["global_a"]) / pop["sd"]),
            "steps": r.engine.info.get("steps_run"), "converged": r.engine.info.get("converged"),
            "verdict": (r.diagnostics or {}).get("verdict"), "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--products", type=int, default=1000)
    p.add_argument("--periods", type=int, default=52)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--engine", default=None)
    args = p.parse_args(argv)
    for seed in args.seeds:
        print(json.dumps(one(args.products, args.periods, seed, args.engine)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
