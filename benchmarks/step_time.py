"""Seconds per gradient of the log density (a step's core) of hbm's compiled seed models, for one source tree.

    PYTHONPATH=TREE python benchmarks/step_time.py elasticity|dose     # one JSON line

For comparing two trees (a change against its parent): run both, alternately, on a quiet machine, and
compare medians as a ratio. Data: written by benchmarks/elasticity.py (1,000 products x 156 periods) and
benchmarks/dose_response.py (400,000 rows) under /tmp/hbm-bench-data. The model: the tree's own
``hbm.compile`` of the benchmark's spec, its default layout, one device; the gradient by ``jax.value_and_grad``
of NumPyro's potential at the initial point, 20 evaluations per timed block, the median block.
"""
import json, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import jax
import hbm
from numpyro.infer.util import initialize_model


def seed_model(which: str):
    """The tree's own ``hbm.compile`` of the benchmark's spec on its data (``which``: elasticity | dose)."""
    if which == "dose":
        df = pd.read_parquet("/tmp/hbm-bench-data/dose_response_400k.parquet")
        spec = hbm.load_spec(str(Path(hbm.__file__).resolve().parents[1] / "specs" / "dose_response.yaml"))
    else:
        df = pd.read_parquet("/tmp/hbm-bench-data/elasticity_p1000_c10_t156_s0.parquet")
        sys.path.insert(0, str(Path(hbm.__file__).parents[1] / "benchmarks"))
        import elasticity as E
        spec = hbm.load_spec({"name": "el", "formula": E.FORMULA, "family": "poisson", "priors": E.PRIORS})
    return hbm.compile(spec, df)


def potential_grad(model):
    """``jit(value_and_grad)`` of NumPyro's potential of ``model`` and its initial point."""
    info = initialize_model(jax.random.PRNGKey(0), model.numpyro_model, model_kwargs=model.data, dynamic_args=False)
    return jax.jit(jax.value_and_grad(info.potential_fn)), info.param_info.z


def main(which: str) -> None:
    model = seed_model(which)
    vg, x0 = potential_grad(model)

    def block(x, n=20):
        for _ in range(n):
            v, g = vg(x)
        jax.block_until_ready(g)

    block(x0, 3)
    times = []
    t_end = time.perf_counter() + 10.0
    while time.perf_counter() < t_end or len(times) < 5:
        t = time.perf_counter(); block(x0); times.append((time.perf_counter() - t) / 20)
    print(json.dumps({"which": which, "hbm": hbm.__file__, "rows": int(model.n_rows), "layout": model.layout.describe() if getattr(model, "layout", None) is not None else "flat", "s_per_grad_median": float(np.median(times)), "n": len(times)}))


if __name__ == "__main__":
    main(sys.argv[1])
