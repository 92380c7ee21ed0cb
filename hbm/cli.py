"""The ``hbm`` command line: fit, check, show, simulate.

Every bad input ends in a message and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import HbmError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same shape and status as ours
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hbm", description="Compile and fit hierarchical Bayesian models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    f = sub.add_parser("fit", help="fit a spec to data and write a run directory")
    f.add_argument("spec")
    f.add_argument("data", nargs="?")
    f.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    f.add_argument("--engine")
    f.add_argument("--steps", type=int)
    f.add_argument("--devices")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set inference.draws=500")
    f.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser("check", help="parse, validate and describe the model; no fitting")
    c.add_argument("spec")
    c.add_argument("data", nargs="?")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    s = sub.add_parser("show", help="print the summary of a finished fit")
    s.add_argument("run_dir")

    k = sub.add_parser("compare", help="compare a fit's posterior with a reference fit's (say SVI with NUTS)")
    k.add_argument("run_a", help="the run to judge")
    k.add_argument("run_b", help="the reference run")
    k.add_argument("--out", metavar="DIR", help="where compare.csv and compare.png go (default: RUN_A)")

    m = sub.add_parser("simulate", help="write synthetic data drawn from the spec")
    m.add_argument("spec")
    m.add_argument("--rows", type=int)
    m.add_argument("--seed", type=int)
    m.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"fit": cmd_fit, "check": cmd_check, "show": cmd_show, "compare": cmd_compare, "simulate": cmd_simulate}[args.command](args)
    except HbmError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug in hbm, not bad input: say so briefly
        if os.environ.get("HBM_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e}\n  = this is a bug in hbm; rerun with HBM_DEBUG=1 "
              "for the traceback and report it", file=sys.stderr)
        return 1


def _spec(args):
    from .spec import load_spec
    spec = load_spec(args.spec)
    overrides = list(getattr(args, "set", []) or [])
    for key in ("engine", "steps"):
        if getattr(args, key, None) is not None:
            overrides.append(f"inference.{key}={getattr(args, key)}")
    if getattr(args, "devices", None) is not None:
        overrides.append(f"devices={args.devices}")
    return spec.with_overrides(overrides) if overrides else spec


def _data_arg(args):
    if args.data is None:
        return None
    if not Path(args.data).exists():
        raise HbmError(f"data file not found: {args.data}", where="DATA argument")
    return args.data


def cmd_check(args) -> int:
    from .compiler import compile_table, load_data
    spec = _spec(args)
    df, source = load_data(spec, _data_arg(args))
    model = compile_table(spec, df)
    print(f"spec      {spec.source_path or '(inline)'}   data: {source}")
    print(model.describe())
    print(f"inference {spec.inference.engine}")
    return 0


def cmd_fit(args) -> int:
    from .compiler import compile_table, load_data
    from .fit import fit
    from .results import format_summary
    from .rundir import new_run_dir
    spec = _spec(args)
    run_dir = new_run_dir(args.out, spec.name, overwrite=args.overwrite)
    t0 = time.perf_counter()
    df, source = load_data(spec, _data_arg(args))
    model = compile_table(spec, df)
    compile_s = time.perf_counter() - t0
    print(f"compiled {spec.name}: {model.n_rows:,} rows from {source}, "
          + ", ".join(f"{p.name} {p.size:,}" for p in model.ir.plates) + f" ({compile_s:.1f} s)",
          file=sys.stderr)
    bar = None if args.quiet else ProgressBar(spec.inference.engine)
    result = fit(model, progress=bar)
    if bar:
        bar.close()
    result.timings["compile_model_s"] = compile_s
    print(format_summary(result.summary()))
    info = result.engine.info
    if "converged" in info:
        print(f"\n{spec.inference.engine}: {info.get('steps_run', '?')} steps, "
              + ("converged" if info["converged"] else f"stopped: {info.get('stop_reason', '?')}"))
    from .diagnostics import report_lines
    for line in report_lines(getattr(result, "diagnostics", None)):
        print(line)
    path = result.save(run_dir, overwrite=args.overwrite)
    print(f"results written to {path}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_runs, format_comparison, output_paths, write_comparison
    csv, png = output_paths(args.run_a, args.out)   # checked before the work: never over a file
    cmp = compare_runs(args.run_a, args.run_b)
    print(format_comparison(cmp))
    write_comparison(cmp, csv, png)
    print(f"table written to {csv}, plot to {png}")
    return 0


def cmd_show(args) -> int:
    from .rundir import show_run
    print(show_run(args.run_dir))
    return 0


def cmd_simulate(args) -> int:
    from .simulate import simulate_table
    spec = _spec(args)
    out = Path(args.out)
    if out.exists():
        raise HbmError(f"{out} exists; simulate never overwrites a file", where="--out")
    df = simulate_table(spec, rows=args.rows, seed=args.seed)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    suffix = out.suffix.lower()
    if suffix == ".csv":
        df.to_csv(tmp, index=False)
    elif suffix in (".arrow", ".feather", ".ipc"):
        df.to_feather(tmp)
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    print(f"wrote {len(df):,} rows to {out}")
    return 0


class ProgressBar:
    """One line on stderr, redrawn per block of steps: bar, step, running loss, elapsed time."""

    def __init__(self, label: str, width: int = 28):
        self.label, self.width, self.t0 = label, width, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, step: int, total: int, loss: float | None) -> None:
        now = time.perf_counter()
        if not self.tty and now - self.last < 2.0 and step < total:
            return
        self.last = now
        filled = int(self.width * step / max(total, 1))
        text = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {step}/{total}"
                + (f"  loss {loss:.5g}" if loss is not None else "") + f"  {now - self.t0:.1f}s")
        print(("\r" + text) if self.tty else text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
