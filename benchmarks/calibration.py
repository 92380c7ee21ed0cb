"""Calibration study of hbm's variational guides against NUTS and the truth (issue #5).

For each spec, ``--datasets`` data sets are simulated with known parameters (hyperparameters
fixed, group values drawn from their population), and each is fitted with

* NUTS (the reference: ``--warmup`` + ``--samples`` draws, one chain),
* SVI with every guide in ``--guides``, at hbm's default variational settings (optimizer,
  steps, convergence stopping, draws; only the guide changes), and
* the same SVI fits with ``correct: psis`` (the draws resampled by their Pareto-smoothed
  importance weights when k-hat < 0.7; computed from the same fit, so it costs nothing extra).

Reported per spec and method: coverage of the true group-level values (every
``name[group=level]`` element) by the 50% and 90% central intervals; the median ratio of
90% interval widths to NUTS's, for the group-level values and for the population-level
parameters (coefficients, sds, correlations, family parameters); Pareto k-hat (mean, and how
often it is >= 0.7); and the cost (wall time of ``hbm.fit`` including compilation, the
optimisation's own time, steps), with the ratio of wall time to mean-field's.

Every data set of a spec has the same shapes and every prior is given explicitly, so the
compiled programs are identical from one data set to the next and JAX's persistent
compilation cache (``--cache``) serves all but the first; the first data set of each spec is
run once untimed as a warm-up.

    python benchmarks/calibration.py                       # the full study, ~15 min on 2 cores
    python benchmarks/calibration.py --datasets 3 --quick  # a smoke run
    python benchmarks/calibration.py --append benchmarks/RESULTS.md
    python benchmarks/calibration.py --jobs 8 --chunk 5    # 16 cores: 12 processes, 8 at a time

Results: a JSON file of every fit (``--out``) and, with ``--append``, a markdown section in
RESULTS.md (replacing only this study's own earlier section).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTION = "## Calibration of variational fits (issue #5)"

# Correlated varying intercepts and slopes, 24 subjects (the sleepstudy design).
SLOPES = {
    "name": "varying_slopes",
    "formula": "Reaction ~ Days + (Days | Subject)",
    "family": "normal",
    "priors": {"Intercept": "normal(250, 50)", "Days": "normal(10, 10)",
               "sd(1 | Subject)": "half_normal(50)", "sd(Days | Subject)": "half_normal(10)",
               "cor(1, Days | Subject)": "lkj(2)", "sigma": "half_normal(50)"},
    "simulate": {"rows": 240, "seed": 0,
                 "columns": {"Subject": {"levels": 24}, "Days": "uniform(0, 9)"},
                 "params": {"Intercept": 250, "Days": 10, "sd(1 | Subject)": 25,
                            "sd(Days | Subject)": 6, "sigma": 20}},
}


def elasticity_spec() -> dict:
    """specs/price_elasticity.yaml, shrunk: 4 categories, 32 products, 10 periods, 640 rows."""
    import yaml
    d = yaml.safe_load((ROOT / "specs" / "price_elasticity.yaml").read_text())
    d = copy.deepcopy(d)
    d.pop("inference", None)
    d["name"] = "price_elasticity_small"
    d["simulate"]["rows"] = 640
    d["simulate"]["columns"].update({"category": {"levels": 4},
                                     "product": {"levels": 32, "within": "category"},
                                     "period": {"levels": 10}})
    return d


def dose_spec() -> dict | None:
    """specs/dose_response.yaml (4PL curves, compounds within targets, plates) shrunk: 4 targets,
    24 compounds, 8 plates, 480 rows; None when the spec does not exist."""
    import yaml
    p = ROOT / "specs" / "dose_response.yaml"
    if not p.exists():
        return None
    d = copy.deepcopy(yaml.safe_load(p.read_text()))
    d.pop("inference", None)
    d["name"] = "dose_response_small"
    sim = d.setdefault("simulate", {})
    sim["rows"] = 480
    cols = sim.setdefault("columns", {})
    for name, levels in (("target", 4), ("compound", 24), ("plate", 8)):
        if isinstance(cols.get(name), dict):
            cols[name]["levels"] = levels
    return d


# ---------------------------------------------------------------- one data set

def group_names(truth: dict) -> list[str]:
    return [n for n in truth if re.search(r"\[[^\]]*=", n)]


def metrics(summary, truth: dict, ref=None) -> dict:
    """Coverage of the truth by the 50% and 90% intervals (group level), width ratios to ``ref``."""
    g = [n for n in group_names(truth) if n in summary.index]
    t = np.array([truth[n] for n in g])
    s = summary.loc[g]
    out = {"n_group": len(g),
           "cov50": float(np.mean((t >= s["q25"]) & (t <= s["q75"]))),
           "cov90": float(np.mean((t >= s["q5"]) & (t <= s["q95"])))}
    pop = [n for n in summary.index if "[" not in n and n in truth]
    out["cov90_pop"] = float(np.mean([(summary.loc[n, "q5"] <= truth[n] <= summary.loc[n, "q95"])
                                      for n in pop])) if pop else float("nan")
    if ref is not None:
        w = (s["q95"] - s["q5"]).to_numpy()
        wr = (ref.loc[g, "q95"] - ref.loc[g, "q5"]).to_numpy()
        out["width_group"] = float(np.median(w / wr))
        pop = [n for n in summary.index if "[" not in n and n in ref.index
               and (ref.loc[n, "q95"] - ref.loc[n, "q5"]) > 0]
        if pop:
            out["width_pop"] = float(np.median([(summary.loc[n, "q95"] - summary.loc[n, "q5"])
                                                / (ref.loc[n, "q95"] - ref.loc[n, "q5"]) for n in pop]))
            out["width_pop_min"] = float(np.min([(summary.loc[n, "q95"] - summary.loc[n, "q5"])
                                                 / (ref.loc[n, "q95"] - ref.loc[n, "q5"]) for n in pop]))
    return out


def corrected_summary(fit_result):
    """The summary of ``fit_result`` with ``correct: psis`` applied to its draws (same fit)."""
    from hbm.pipeline.fit import corrected
    if "log_weight" not in (fit_result.engine.sample_stats or {}):
        return None, None
    c = corrected(fit_result)
    return c.summary(), c.diagnostics


def svi_overrides(items: list[str]) -> dict:
    """``--set`` items as ``hbm.fit`` keyword overrides (values parsed as the spec parses them)."""
    from hbm.spec import load_spec
    if not items:
        return {}
    inf = load_spec({"formula": "y ~ 1", "inference": {k: _value(v) for k, v in (i.split("=", 1) for i in items)}})
    return {k.split("=", 1)[0]: getattr(inf.inference, k.split("=", 1)[0]) for k in items}


def _value(text: str):
    import yaml
    return yaml.safe_load(text) if not text.endswith(")") else text


def run_dataset(spec, seed: int, args, log) -> list[dict]:
    import hbm
    from hbm.pipeline.simulate import simulate

    df, truth = simulate(spec, seed=seed)
    model = hbm.compile(spec, df)
    rows = []
    t = time.perf_counter()
    nuts = hbm.fit(model, engine="nuts", warmup=args.warmup, samples=args.samples, chains=1, seed=seed)
    ref = nuts.summary()
    wall = time.perf_counter() - t
    rows.append({"method": "nuts", "wall_s": wall, "fit_s": nuts.engine.timings.get("fit_s"),
                 "divergences": nuts.engine.info.get("num_divergences"), **metrics(ref, truth, ref)})
    for guide in args.guides:
        t = time.perf_counter()
        try:
            if guide == "auto":     # the default engine, every setting its default
                r = hbm.fit(model, seed=seed)
            else:
                r = hbm.fit(model, engine="svi", guide=guide, seed=seed, **args.svi_overrides)
        except Exception as e:  # noqa: BLE001 - one failed fit must not end the study
            rows.append({"method": guide + args.label, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        s = r.summary()
        wall = time.perf_counter() - t
        d = r.diagnostics or {}
        base = {"wall_s": wall, "fit_s": r.engine.timings.get("fit_s"), "steps": r.engine.info.get("steps_run"),
                "khat": d.get("pareto_k"), "ess_is": d.get("ess"), "engine": r.config.engine,
                "trusted": d.get("trustworthy")}
        rows.append({"method": guide + args.label, **base, **metrics(s, truth, ref)})
        cs, cd = corrected_summary(r)
        if cs is not None:
            rows.append({"method": f"{guide}{args.label}+psis", **base, "applied": bool(cd["correction"]["applied"]),
                         **metrics(cs, truth, ref)})
    for row in rows:
        row.update(spec=spec.name, dataset=seed)
        if "error" in row:
            print(f"  {spec.name} {seed} {row['method']}: {row['error']}", flush=True)
            continue
        log(row)
    return rows


# ---------------------------------------------------------------- aggregate and report

def aggregate(rows: list[dict]) -> list[dict]:
    out = []
    specs = list(dict.fromkeys(r["spec"] for r in rows))
    for sp in specs:
        rs = [r for r in rows if r["spec"] == sp and "error" not in r]
        methods = list(dict.fromkeys(r["method"] for r in rs))
        mf_wall = np.median([r["wall_s"] for r in rs if r["method"] == "normal"] or [np.nan])
        mf_fit = np.median([r["fit_s"] for r in rs if r["method"] == "normal"] or [np.nan])
        for m in methods:
            x = [r for r in rs if r["method"] == m]
            get = lambda k: np.array([r.get(k, np.nan) for r in x], dtype=float)  # noqa: E731
            k = get("khat")
            out.append({
                "spec": sp, "method": m, "datasets": len(x),
                "cov50": np.nanmean(get("cov50")), "cov90": np.nanmean(get("cov90")),
                "cov90_worst": np.nanmin(get("cov90")), "cov90_pop": np.nanmean(get("cov90_pop")),
                "width_group": np.nanmedian(get("width_group")), "width_pop": np.nanmedian(get("width_pop")),
                "khat": np.nanmean(k) if np.isfinite(k).any() else np.nan,
                "flagged": np.nanmean(k >= 0.7) if np.isfinite(k).any() else np.nan,
                "applied": np.mean([bool(r.get("applied")) for r in x]) if m.endswith("+psis") else np.nan,
                "wall_s": np.median(get("wall_s")), "fit_s": np.median(get("fit_s")),
                "steps": np.nanmedian(get("steps")) if np.isfinite(get("steps")).any() else np.nan,
                "cost_vs_mf": np.median(get("wall_s")) / mf_wall,
                "fit_vs_mf": np.median(get("fit_s")) / mf_fit if m != "nuts" else np.nan,
            })
    return out


def flag_table(rows: list[dict]) -> list[str]:
    """How well k-hat >= 0.7 picks out the mean-field fits that under-cover badly."""
    lines = []
    for sp in dict.fromkeys(r["spec"] for r in rows):
        mf = [r for r in rows if r["spec"] == sp and r["method"] == "normal" and "error" not in r]
        bad = [r for r in mf if r["cov90"] < 0.80]
        flagged_bad = sum(r["khat"] >= 0.7 for r in bad)
        ok = [r for r in mf if r["cov90"] >= 0.80]
        lines.append(f"| {sp} | {len(bad)} of {len(mf)} | {flagged_bad} of {len(bad)} | "
                     f"{sum(r['khat'] >= 0.7 for r in ok)} of {len(ok)} |")
    return lines


COVER_OK = 0.80       # a fit passes when its 90% intervals cover at least this share of the true values,
COVER_SLACK = 0.05    # or no less than NUTS's coverage on the same data set minus this, and
WIDTH_POP_OK = 0.5    # no population-level 90% interval is under half as wide as NUTS's


def passes(row: dict, nuts: dict | None) -> bool:
    """The study's rule for one fit: coverage of the true group-level values (absolute, or relative to
    the exact posterior's on the same data, whose own coverage varies by data set) and population widths."""
    cover = row["cov90"] >= COVER_OK or (nuts is not None and row["cov90"] >= nuts["cov90"] - COVER_SLACK)
    width = row.get("width_pop_min")
    return bool(cover and (width is None or not np.isfinite(width) or width >= WIDTH_POP_OK))


def verdict_table(rows: list[dict]) -> list[str]:
    """Each method's printed verdict against the rule (``passes``), over every data set of every spec."""
    nuts = {(r["spec"], r["dataset"]): r for r in rows if r["method"] == "nuts" and "error" not in r}
    lines = ["| method | trusted: pass | trusted: fail | not trusted: pass | not trusted: fail | "
             "failures flagged | passes trusted |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in dict.fromkeys(r["method"] for r in rows):
        if m == "nuts" or m.endswith("+psis"):
            continue
        x = [r for r in rows if r["method"] == m and "error" not in r and r.get("trusted") is not None]
        if not x:
            continue
        t = {(tr, ok): 0 for tr in (True, False) for ok in (True, False)}
        for r in x:
            t[(bool(r["trusted"]), passes(r, nuts.get((r["spec"], r["dataset"]))))] += 1
        fails, oks = t[(True, False)] + t[(False, False)], t[(True, True)] + t[(False, True)]
        engines = sorted({r.get("engine") for r in x if r.get("engine")})
        lines.append(f"| {m} ({', '.join(engines)}) | {t[(True, True)]} | {t[(True, False)]} | {t[(False, True)]} | "
                     f"{t[(False, False)]} | {t[(False, False)]} of {fails} | {t[(True, True)]} of {oks} |")
    return lines


def _f(x, fmt="{:.2f}"):
    return "–" if x is None or not np.isfinite(x) else fmt.format(x)


def markdown(agg: list[dict], rows: list[dict], args, total_s: float) -> str:
    import jax
    lines = [SECTION, "",
             f"`python benchmarks/calibration.py` ({args.datasets} data sets per spec, NUTS {args.warmup}+"
             f"{args.samples} draws in one chain as the reference, SVI at hbm's default settings with only the "
             f"guide changed; {jax.device_count()} CPU device, {os.cpu_count()} cores; {total_s / 60:.1f} min "
             "in all). Coverage: share of the true group-level values inside the 50% / 90% central "
             "intervals (mean over data sets; worst data set in brackets). Width: median ratio of 90% "
             "interval widths to NUTS's on the same data, group-level values and population-level "
             "parameters. k-hat: Pareto k of the guide's importance weights (mean; share of data sets "
             "with k-hat >= 0.7). Cost: median wall time of `hbm.fit` (compilation included, "
             "compiled programs cached across data sets) and its ratio to mean-field's; the "
             "optimisation alone in brackets. `+psis`: the same fit with `correct: psis` (applied "
             "on the share of data sets shown).", "",
             "| spec | method | cov 50% | cov 90% | width group | width pop | k-hat (>= 0.7) | "
             "psis applied | wall s | cost vs mean-field (opt.) | steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    errors = [r for r in rows if "error" in r]
    for a in agg:
        lines.append(
            f"| {a['spec']} | {a['method']} | {_f(a['cov50'])} | {_f(a['cov90'])} ({_f(a['cov90_worst'])}) | "
            f"{_f(a['width_group'])} | {_f(a['width_pop'])} | "
            f"{_f(a['khat'])} ({_f(a['flagged'], '{:.0%}')}) | {_f(a['applied'], '{:.0%}')} | "
            f"{_f(a['wall_s'], '{:.1f}')} | {_f(a['cost_vs_mf'])} ({_f(a['fit_vs_mf'])}) | "
            f"{_f(a['steps'], '{:.0f}')} |")
    lines += ["", "Does k-hat flag the mean-field fits that under-cover (90% coverage below 0.80)?", "",
              "| spec | mean-field fits under-covering | of those, k-hat >= 0.7 | "
              "k-hat >= 0.7 among the others |", "| --- | --- | --- | --- |"]
    lines += flag_table(rows)
    lines += ["", f"Each fit's printed verdict against the study's rule (pass: 90% coverage of the true group-level "
              f"values >= {COVER_OK:.2f}, or within {COVER_SLACK:.2f} of NUTS's on the same data set, and every "
              f"population-level 90% interval at least {WIDTH_POP_OK:.1f} x NUTS's width); `auto` is the default "
              "engine with every setting its default, the engine it chose in brackets:", ""]
    lines += verdict_table(rows)
    if errors:
        lines += ["", f"{len(errors)} fits failed: " + "; ".join(
            f"{r['spec']} {r['dataset']} {r['method']}: {r['error'][:120]}" for r in errors[:5])]
    return "\n".join(lines) + "\n"


def append_section(path: Path, text: str) -> None:
    """Add ``text`` to RESULTS.md, replacing this study's earlier section only."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    i = old.find(SECTION)
    if i >= 0:
        j = old.find("\n## ", i + len(SECTION))
        old = old[:i].rstrip("\n") + ("\n\n" + old[j + 1:] if j >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", type=int, default=20)
    p.add_argument("--specs", default="slopes,elasticity,dose")
    p.add_argument("--guides", default="auto,normal,lowrank,mvn,structured",
                   help="SVI guides to fit; auto: the default engine (hbm.fit with no settings)")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="NUTS 200+200 (smoke runs only)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "calibration_results.json"))
    p.add_argument("--append", help="RESULTS.md to add the section to")
    p.add_argument("--cache", default=os.environ.get("HBM_JAX_CACHE", "/tmp/hbm-jax-cache"))
    p.add_argument("--jobs", type=int, default=2, help="processes run side by side")
    p.add_argument("--chunk", type=int, default=0,
                   help="data sets per process (0: a spec's all in one); with --jobs, splits a spec's data sets")
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)   # a chunk's first data set
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an inference setting for the SVI fits, e.g. particles=1 or 'optimizer=adam(lr=0.003)'")
    args = p.parse_args(argv)
    args.guides = [g.strip() for g in args.guides.split(",") if g.strip()]
    args.svi_overrides = svi_overrides(args.set)
    args.label = f"[{', '.join(args.set)}]" if args.set else ""
    if args.quick:
        args.warmup = args.samples = 200

    import jax
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import warnings
    warnings.filterwarnings("ignore")
    from hbm.spec import load_spec

    wanted = [s.strip() for s in args.specs.split(",")]
    specs = []
    if "slopes" in wanted:
        specs.append(load_spec(SLOPES))
    if "elasticity" in wanted:
        specs.append(load_spec(elasticity_spec()))
    if "dose" in wanted:
        d = dose_spec()
        if d is not None:
            specs.append(load_spec(d))
        else:
            print("specs/dose_response.yaml does not exist: skipped", file=sys.stderr)

    t0 = time.perf_counter()
    rows: list[dict] = []
    if args.jobs > 1 and (len(specs) > 1 or 0 < args.chunk < args.datasets):
        rows = _parallel(argv, wanted, args)
        return _report(rows, args, time.perf_counter() - t0)

    def log(row):
        keys = ("spec", "dataset", "method", "cov50", "cov90", "width_group", "width_pop", "khat", "wall_s")
        print("  ".join(f"{k}={_f(row[k]) if isinstance(row.get(k), float) else row.get(k)}" for k in keys),
              flush=True)

    for spec in specs:
        run_dataset(spec, 10_000, args, lambda row: None)   # warm-up: compile and cache, untimed
        for i in range(args.first, args.first + args.datasets):
            rows += run_dataset(spec, 1000 + i, args, log)
            Path(args.out).write_text(json.dumps(rows, indent=1, default=float))
    return _report(rows, args, time.perf_counter() - t0)


def _report(rows, args, total: float) -> int:
    Path(args.out).write_text(json.dumps(rows, indent=1, default=float))
    text = markdown(aggregate(rows), rows, args, total)
    print("\n" + text)
    if args.append:
        append_section(Path(args.append), text)
        print(f"appended to {args.append}")
    return 0


def _parallel(argv, wanted, args) -> list[dict]:
    """Each spec's data sets in processes of ``args.chunk`` data sets (``args.jobs`` at a time, the
    slowest spec first); their rows, in spec and data set order."""
    import subprocess
    own = ("--specs", "--out", "--append", "--jobs", "--chunk", "--first", "--datasets")
    argv = list(sys.argv[1:] if argv is None else argv)
    base = [a for i, a in enumerate(argv) if not (a.startswith(own) or (i > 0 and argv[i - 1] in own))]
    chunk = args.chunk if args.chunk > 0 else args.datasets
    pending = [(name, first, min(chunk, args.datasets - first))
               for name in ("dose", "elasticity", "slopes") if name in wanted
               for first in range(0, args.datasets, chunk)]
    running, outs = [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            name, first, count = pending.pop(0)
            out = f"{args.out}.{name}.{first}.json"
            cmd = [sys.executable, __file__, *base, "--specs", name, "--out", out, "--jobs", "1",
                   "--datasets", str(count), "--first", str(first)]
            running.append(subprocess.Popen(cmd))
            outs.append((name, first, out))
        time.sleep(2)
        running = [p for p in running if p.poll() is None]
    rows = []
    for name in ("slopes", "elasticity", "dose"):
        for n, first, out in sorted(outs, key=lambda o: o[1]):
            if n == name and Path(out).exists():
                rows += json.loads(Path(out).read_text())
    return rows


if __name__ == "__main__":
    sys.exit(main())
