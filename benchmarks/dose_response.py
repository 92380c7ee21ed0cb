#!/usr/bin/env python
"""The hierarchical 4PL dose-response model (specs/dose_response.yaml): hbm against hand-written NumPyro.

    .venv/bin/python benchmarks/dose_response.py                  # everything, appended to RESULTS.md
    .venv/bin/python benchmarks/dose_response.py --skip-nuts --min-time 10

Data: the spec's ``simulate:`` block (400,000 rows, 3,000 compounds in 60 targets,
1,200 plates, 8-12 concentrations per compound plus controls at dose 0), written
once to --data-dir with the true parameter values.

1. Speed, side by side in one process on the same data: hbm's compiled model and a
   hand-written NumPyro 4PL with the same hierarchy, priors, site names and
   parametrisation (``LocScaleReparam(0)`` on the plate effects and population values,
   the compound chain centred, as hbm chooses; controls by a double ``jnp.where``; the
   stable ``sigmoid`` form). The two log densities are first checked
   equal at a draw from the prior. Both run under one driver: AutoNormal, Trace_ELBO,
   adam(lr=0.02), blocks of --block SVI steps in one jitted ``lax.scan``, alternating
   hbm / hand-written, steady state (compilation and the first block excluded).
   ratio = hbm seconds per step / hand-written seconds per step (<= 1.0: hbm is as fast).
2. Time to convergence: ``hbm.fit`` with the spec's settings (its SVI engine stops when
   the loss changes by less than ``tolerance`` over two blocks): steps, seconds after
   compilation, and the 90% coverage of the true compound log IC50s.
3. NUTS on a 3% subsample (3% of the compounds, with all their rows): wall time, and its
   90% intervals of log IC50 against the full-data SVI fit's on the same compounds
   (width ratio, coverage of the truth, overlap).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = ROOT / "specs" / "dose_response.yaml"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/tmp/hbm-bench-data")
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--min-time", type=float, default=20.0, help="timed seconds per side")
    ap.add_argument("--subsample", type=float, default=0.03, help="share of compounds for NUTS")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--skip-nuts", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    return ap.parse_args(argv)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_data(data_dir: str):
    """The spec's simulated data and the truth, generated once."""
    import hbm
    from hbm.pipeline.simulate import simulate
    path = Path(data_dir) / "dose_response_400k.parquet"
    truth_path = path.with_suffix(".truth.json")
    if path.exists() and truth_path.exists():
        return pd.read_parquet(path), json.loads(truth_path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    df, truth = simulate(hbm.load_spec(SPEC))
    df.to_parquet(path, index=False)
    truth_path.write_text(json.dumps(truth))
    return df, truth


# ---------------------------------------------------------------------- the hand-written model
def hand_written(df: pd.DataFrame, priors_from):
    """The 4PL as a careful NumPyro user writes it, with hbm's site names (for the log density check)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer.reparam import LocScaleReparam

    plate_idx, plates = pd.factorize(df["plate"], sort=True)
    comp_idx, comps = pd.factorize(df["compound"], sort=True)
    target_idx, targets = pd.factorize(df["target"], sort=True)
    parent = np.zeros(len(comps), np.int32)
    parent[comp_idx] = target_idx
    dose = df["dose"].to_numpy()
    data = dict(plate=jnp.asarray(plate_idx, jnp.int32), comp=jnp.asarray(comp_idx, jnp.int32),
                x=jnp.asarray(np.log(np.where(dose > 0, dose, 1.0)), jnp.float32),
                control=jnp.asarray(dose == 0), y=jnp.asarray(df["response"].to_numpy(), jnp.float32))
    parent = jnp.asarray(parent)
    P, C, T = len(plates), len(comps), len(targets)
    pr = priors_from

    def model(plate, comp, x, control, y):
        bottom = numpyro.sample("bottom", dist.Normal(*pr("bottom")))
        sd_b = numpyro.sample("sd(bottom | plate)", dist.HalfNormal(*pr("sd(bottom | plate)")))
        top = numpyro.sample("top", dist.Normal(*pr("top")))
        sd_t = numpyro.sample("sd(top | plate)", dist.HalfNormal(*pr("sd(top | plate)")))
        with numpyro.plate("plate", P):
            r_b = numpyro.sample("r(bottom | plate)", dist.Normal(0.0, sd_b))
            r_t = numpyro.sample("r(top | plate)", dist.Normal(0.0, sd_t))
        lic = numpyro.sample("log_ic50", dist.Normal(*pr("log_ic50")))
        sd_target = numpyro.sample("sd(log_ic50 | target)", dist.HalfNormal(*pr("sd(log_ic50 | target)")))
        sd_comp = numpyro.sample("sd(log_ic50 | compound)", dist.HalfNormal(*pr("sd(log_ic50 | compound)")))
        with numpyro.plate("target", T):
            lic_t = numpyro.sample("log_ic50[target]", dist.Normal(lic, sd_target))
        with numpyro.plate("compound", C):
            lic_c = numpyro.sample("log_ic50[compound]", dist.Normal(lic_t[parent], sd_comp))
        hill = numpyro.sample("hill", dist.LogNormal(*pr("hill")))     # hbm samples it itself
        sigma = numpyro.sample("sigma", dist.Exponential(*pr("sigma")))
        nu = numpyro.sample("nu", dist.Gamma(*pr("nu")))
        lo, hi = bottom + r_b[plate], top + r_t[plate]
        mu = jnp.where(control, hi, lo + (hi - lo) * jax_sigmoid(-hill * (x - lic_c[comp])))
        with numpyro.plate("rows", y.shape[0]):
            numpyro.sample("y", dist.StudentT(nu, mu, sigma), obs=y)

    # the parametrisation hbm picks (and a careful user would): plate effects and the normal-prior
    # population values non-centred, the data-rich log IC50 chain centred (hbm.resolve.nonlinear.centring)
    sites = ["bottom", "top", "r(bottom | plate)", "r(top | plate)"]
    return numpyro.handlers.reparam(model, config={s: LocScaleReparam(0) for s in sites}), data


def jax_sigmoid(z):
    import jax
    return jax.nn.sigmoid(z)


def prior_args(spec):
    from hbm.spec import prior_for

    def get(name):
        return tuple(float(a) for a in prior_for(spec, name).args)
    return get


# ---------------------------------------------------------------------- one driver for both
class Runner:
    """SVI (AutoNormal, Trace_ELBO, adam) in jitted blocks of ``block`` steps for one model."""

    def __init__(self, model, kwargs: dict, block: int, lr: float = 0.02):
        import jax
        import optax
        from numpyro.infer import SVI, Trace_ELBO
        from numpyro.infer.autoguide import AutoNormal
        from numpyro.infer.initialization import init_to_median

        def make(kw):
            svi = SVI(model, AutoNormal(model, init_loc_fn=init_to_median(num_samples=15)), optax.adam(lr),
                      Trace_ELBO())
            return svi

        def init(key, kw):
            return make(kw).init(key, **kw)

        def run(state, kw):
            svi = make(kw)
            svi.init(jax.random.PRNGKey(0), **kw)   # sets up the guide in this trace; dead code
            return jax.lax.scan(lambda s, _: svi.update(s, **kw), state, None, length=block)

        self.kw = kwargs
        t = time.perf_counter()
        self.state = jax.jit(init)(jax.random.PRNGKey(0), kwargs)
        jax.block_until_ready(self.state)
        self.init_s = time.perf_counter() - t
        t = time.perf_counter()
        self.block = jax.jit(run).lower(self.state, kwargs).compile()
        self.compile_s = time.perf_counter() - t
        self.steps, self.seconds, self.block_size = 0, 0.0, block
        self.step()                                   # the first block is not timed
        self.steps, self.seconds = 0, 0.0

    def step(self):
        import jax
        t = time.perf_counter()
        self.state, losses = self.block(self.state, self.kw)
        jax.block_until_ready(losses)
        self.seconds += time.perf_counter() - t
        self.steps += self.block_size
        self.last_loss = float(np.asarray(losses)[-1])

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


def speed(args, spec, df) -> dict:
    import jax
    from numpyro.infer.util import log_density

    import hbm
    model = hbm.compile(spec, df, devices=1)
    hand, hand_data = hand_written(df, prior_args(spec))
    # the same model: equal log densities at one point (the hand-written model's prior draw)
    from numpyro import handlers
    tr = handlers.trace(handlers.seed(hand, 0)).get_trace(**hand_data)
    point = {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}
    lp_hand = float(log_density(hand, (), hand_data, point)[0])
    lp_hbm = float(log_density(model.numpyro_model, (), model.data, point)[0])
    assert abs(lp_hand - lp_hbm) <= 1e-4 * abs(lp_hand) + 1.0, (lp_hand, lp_hbm)
    print(f"log density at a prior draw: hbm {lp_hbm:.6g}, hand-written {lp_hand:.6g}", file=sys.stderr)

    sides = {"hbm": Runner(model.numpyro_model, model.data, args.block),
             "hand-written": Runner(hand, hand_data, args.block)}
    while min(r.seconds for r in sides.values()) < args.min_time:
        for r in sides.values():                      # alternating: a busy machine slows both
            r.step()
    out = {name: {"steps_per_s": r.rate, "init_s": r.init_s, "compile_s": r.compile_s, "steps": r.steps,
                  "loss": r.last_loss} for name, r in sides.items()}
    out["ratio"] = sides["hand-written"].rate / sides["hbm"].rate   # hbm s/step over hand-written s/step
    out["log_density"] = {"hbm": lp_hbm, "hand-written": lp_hand}
    del sides
    jax.clear_caches()
    return out


def coverage(summary, truth, names) -> tuple[float, float]:
    t = np.array([truth[n] for n in names])
    lo, hi = summary.loc[names, "q5"].to_numpy(), summary.loc[names, "q95"].to_numpy()
    return float(np.mean((lo <= t) & (t <= hi))), float(np.median(hi - lo))


def convergence(spec, df, truth) -> tuple[dict, object]:
    import hbm
    t0 = time.perf_counter()
    model = hbm.compile(spec, df)
    compile_model_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = hbm.fit(model)
    wall = time.perf_counter() - t0
    info, tm = result.engine.info, result.engine.timings
    s = result.summary()
    names = [n for n in s.index if n.startswith("log_ic50[compound=")]
    cov, width = coverage(s, truth, names)
    return {"compile_model_s": compile_model_s, "init_s": tm.get("init_s"), "compile_s": tm.get("compile_s"),
            "fit_s": tm.get("fit_s"), "sample_s": tm.get("sample_s"), "wall_s": wall,
            "steps_run": info.get("steps_run"), "converged": info.get("converged"),
            "steps_per_s": info.get("steps_per_s"), "coverage": cov, "median_width": width,
            "hill": float(s.loc["hill", "mean"]), "hill_true": truth["hill"]}, s


def nuts(args, spec, df, truth, svi_summary) -> dict:
    import hbm
    rng = np.random.default_rng(0)
    comps = np.unique(df["compound"])
    keep = rng.choice(comps, max(1, int(round(args.subsample * len(comps)))), replace=False)
    sub = df[df["compound"].isin(keep)].reset_index(drop=True)
    model = hbm.compile(spec, sub, devices=1)
    t0 = time.perf_counter()
    result = hbm.fit(model, engine="nuts", warmup=args.warmup, samples=args.samples, chains=args.chains)
    wall = time.perf_counter() - t0
    s = result.summary()
    names = [f"log_ic50[compound={c}]" for c in sorted(keep)]
    cov_n, width_n = coverage(s, truth, names)
    cov_s, width_s = coverage(svi_summary, truth, names)
    lo_n, hi_n = s.loc[names, "q5"].to_numpy(), s.loc[names, "q95"].to_numpy()
    lo_s, hi_s = svi_summary.loc[names, "q5"].to_numpy(), svi_summary.loc[names, "q95"].to_numpy()
    overlap = np.clip(np.minimum(hi_n, hi_s) - np.maximum(lo_n, lo_s), 0, None) / (hi_n - lo_n)
    stats = result.engine.sample_stats
    return {"rows": len(sub), "compounds": len(keep), "plates": int(sub["plate"].nunique()),
            "wall_s": wall, "timings": result.engine.timings, "chains": args.chains, "warmup": args.warmup,
            "samples": args.samples, "divergences": int(np.sum(stats.get("diverging", 0))),
            "r_hat_max": float(np.nanmax(s.loc[names, "r_hat"])) if "r_hat" in s else None,
            "coverage_nuts": cov_n, "coverage_svi": cov_s, "median_width_nuts": width_n,
            "median_width_svi": width_s, "width_ratio_median": float(np.median((hi_s - lo_s) / (hi_n - lo_n))),
            "median_abs_mean_diff": float(np.median(np.abs(s.loc[names, "mean"].to_numpy()
                                                           - svi_summary.loc[names, "mean"].to_numpy()))),
            "median_overlap": float(np.median(overlap))}


def report(args, res: dict) -> str:
    import jax
    import numpyro
    sp, cv = res["speed"], res["convergence"]
    lines = [
        f"\n## Dose response (hierarchical 4PL), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"`{' '.join([Path(sys.executable).name, 'benchmarks/dose_response.py'] + sys.argv[1:])}` — "
        f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, numpyro {numpyro.__version__}, "
        f"{jax.default_backend()}. Data: specs/dose_response.yaml simulated, {res['rows']:,} rows, "
        f"{res['compounds']:,} compounds, {res['plates']:,} plates, {res['controls']:.1%} controls at dose 0.",
        "",
        "| side | steps/s (steady, one driver) | init s | compile s |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("hbm", "hand-written"):
        r = sp[name]
        lines.append(f"| {name} | {r['steps_per_s']:.1f} | {r['init_s']:.1f} | {r['compile_s']:.1f} |")
    lines += [
        "",
        f"ratio (hbm s/step over hand-written s/step): **{sp['ratio']:.2f}**; log densities at a prior "
        f"draw: {sp['log_density']['hbm']:.6g} vs {sp['log_density']['hand-written']:.6g}.",
        "",
        f"`hbm.fit` (SVI, spec settings): {cv['steps_run']:,} steps, converged={cv['converged']}, "
        f"**{cv['fit_s']:.1f} s after compilation** ({cv['steps_per_s']:.0f} steps/s in its engine); "
        f"compiling the SVI program {cv['compile_s']:.1f} s, drawing {cv['sample_s']:.1f} s, "
        f"whole call {cv['wall_s']:.1f} s. 90% intervals of the 3,000 compound log IC50s cover "
        f"{cv['coverage']:.1%} of the true values (median width {cv['median_width']:.3f}); "
        f"hill {cv['hill']:.4f} (true {cv['hill_true']:.4f}).",
    ]
    if "nuts" in res:
        n = res["nuts"]
        lines += [
            "",
            f"NUTS on a {args.subsample:.0%} subsample ({n['compounds']} compounds, all their "
            f"{n['rows']:,} rows, {n['plates']:,} plates): {n['chains']} chains x ({n['warmup']} warmup + "
            f"{n['samples']} draws), **{n['wall_s']:.0f} s**, {n['divergences']} divergences, max r_hat of "
            f"the compound log IC50s {n['r_hat_max']:.3f}. On those compounds: 90% coverage of the truth "
            f"NUTS {n['coverage_nuts']:.0%}, full-data SVI {n['coverage_svi']:.0%}; median interval width "
            f"NUTS {n['median_width_nuts']:.3f}, SVI {n['median_width_svi']:.3f} (SVI/NUTS width ratio, "
            f"median {n['width_ratio_median']:.2f}); median |mean difference| {n['median_abs_mean_diff']:.3f}; "
            f"median share of the NUTS interval inside the SVI one {n['median_overlap']:.0%}.",
        ]
    lines.append(f"\nPeak RSS {res['rss_mb']:,.0f} MB.\n")
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    import hbm
    spec = hbm.load_spec(SPEC)
    t = time.perf_counter()
    df, truth = load_data(args.data_dir)
    print(f"data: {len(df):,} rows ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    res = {"rows": len(df), "compounds": df["compound"].nunique(), "plates": df["plate"].nunique(),
           "controls": float((df["dose"] == 0).mean())}
    res["speed"] = speed(args, spec, df)
    print(json.dumps(res["speed"], indent=1), file=sys.stderr)
    res["convergence"], svi_summary = convergence(spec, df, truth)
    print(json.dumps(res["convergence"], indent=1), file=sys.stderr)
    if not args.skip_nuts:
        res["nuts"] = nuts(args, spec, df, truth, svi_summary)
        print(json.dumps(res["nuts"], indent=1, default=float), file=sys.stderr)
    res["rss_mb"] = rss_mb()
    text = report(args, res)
    print(text)
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
