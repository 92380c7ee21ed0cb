"""XLA's cost analysis of the compiled value-and-gradient of a seed model's potential, for one source tree.

    PYTHONPATH=TREE python benchmarks/step_cost.py elasticity|dose     # one JSON line

Deterministic (no clock): flops and bytes accessed of the optimised program, its fusions. Two trees whose
figures are equal compile the same step, which settles a "no slower step" question that timings on a noisy
machine cannot (the model, data and initial point of benchmarks/step_time.py).
"""
import json
import sys
from pathlib import Path

import hbm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import potential_grad, seed_model  # noqa: E402

which = sys.argv[1]
vg, x0 = potential_grad(seed_model(which))
compiled = vg.lower(x0).compile()
cost = compiled.cost_analysis()
cost = cost[0] if isinstance(cost, list) else cost
hlo = compiled.as_text()
print(json.dumps({"which": which, "tree": hbm.__file__, "flops": cost.get("flops"), "bytes": cost.get("bytes accessed"),
                  "fusions": hlo.count(" fusion("), "hlo_lines": hlo.count("\n")}))
