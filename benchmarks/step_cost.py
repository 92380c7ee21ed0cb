"""XLA's cost analysis of the compiled value-and-gradient of a seed model's potential, for one source tree.

    PYTHONPATH=TREE python benchmarks/step_cost.py elasticity|dose     # one JSON line

Deterministic (no clock): flops and bytes accessed of the optimised program, its fusions. Two trees whose
figures are equal compile the same step, which settles a "no slower step" question that timings on a noisy
machine cannot (benchmarks/step_time.py: same data, same model, same initial point).
"""
import json, sys
from pathlib import Path
import pandas as pd, jax, hbm
from numpyro.infer.util import initialize_model
which = sys.argv[1]
if which == "dose":
    df = pd.read_parquet("/tmp/hbm-bench-data/dose_response_400k.parquet")
    spec = hbm.load_spec(str(Path(hbm.__file__).resolve().parents[1] / "specs" / "dose_response.yaml"))
else:
    df = pd.read_parquet("/tmp/hbm-bench-data/elasticity_p1000_c10_t156_s0.parquet")
    sys.path.insert(0, str(Path(hbm.__file__).parents[1] / "benchmarks"))
    import elasticity as E
    spec = hbm.load_spec({"name": "el", "formula": E.FORMULA, "family": "poisson", "priors": E.PRIORS})
model = hbm.compile(spec, df)
info = initialize_model(jax.random.PRNGKey(0), model.numpyro_model, model_kwargs=model.data, dynamic_args=False)
vg = jax.jit(jax.value_and_grad(info.potential_fn))
comp = vg.lower(info.param_info.z).compile()
ca = comp.cost_analysis()
ca = ca[0] if isinstance(ca, list) else ca
hlo = comp.as_text()
print(json.dumps({"which": which, "tree": hbm.__file__, "flops": ca.get("flops"), "bytes": ca.get("bytes accessed"),
                  "fusions": hlo.count(" fusion("), "hlo_lines": hlo.count("\n")}))
