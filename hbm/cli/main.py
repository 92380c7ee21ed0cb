"""The ``hbm`` command line: fit (and fit --resume), check, show, predict, compare, effects, contrast, simulate;
loo and ppc (``hbm/cli/post.py``).

Every bad input ends in a message and exit status 2, never a traceback. A command imports what
it needs when it runs: ``hbm --help``, ``--version`` and ``show`` start without loading JAX.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

from hbm.cli import post
from hbm.errors import HbmError, os_error
from hbm.cli import effects as effects_cli

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same shape and status as ours
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hbm", description="Compile and fit hierarchical Bayesian models.")
    p.add_argument("--version", action="version", version=f"hbm {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    f = sub.add_parser("fit", help="fit a spec (or a formula) to data and write a run directory")
    f.add_argument("spec", nargs="?", help=SPEC_HELP)
    f.add_argument("data", nargs="?")
    f.add_argument("--family", help="the response family (sets the spec's family:), e.g. poisson")
    f.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted fit from its last checkpoint (RUN_DIR or RUN_DIR.partial)")
    f.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    f.add_argument("--engine")
    f.add_argument("--steps", type=int)
    f.add_argument("--devices")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set inference.draws=500")
    f.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    f.add_argument("--check-subset", action="store_true",
                   help="a variational fit is also checked against NUTS on a subset of whole groups "
                        "(hbm.pipeline.subset_check); its verdict is printed and kept in fit.json")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument("--distributed", action="store_true",
                   help="one of several processes fitting together (hbm.pipeline.distributed); with --coordinator, "
                        "--num-processes, --process-id or HBM_COORDINATOR, HBM_NUM_PROCESSES, HBM_PROCESS_ID")
    f.add_argument("--coordinator", metavar="HOST:PORT")
    f.add_argument("--num-processes", type=int)
    f.add_argument("--process-id", type=int)

    c = sub.add_parser("check", help="parse, validate and describe the model; no fitting")
    c.add_argument("spec", help=SPEC_HELP)
    c.add_argument("data", nargs="?")
    c.add_argument("--family", help="the response family (sets the spec's family:), e.g. poisson")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    s = sub.add_parser("show", help="print the summary of a finished fit")
    s.add_argument("run_dir")

    k = sub.add_parser("compare", help="compare a fit's posterior with a reference fit's (say SVI with NUTS)")
    k.add_argument("run_a", help="the run to judge")
    k.add_argument("run_b", help="the reference run")
    k.add_argument("--out", metavar="DIR", help="a new directory for compare.csv and compare.png (default: compare-A-vs-B beside RUN_A)")

    q = sub.add_parser("predict", help="posterior predictions for new rows from a finished fit")
    q.add_argument("run_dir")
    q.add_argument("data")
    q.add_argument("--out", help="output file (.parquet or .csv); default: CSV on stdout")
    q.add_argument("--draws", action="store_true",
                   help="write the draws themselves (one column per draw) instead of summaries")
    q.add_argument("--what", default="response", choices=("response", "mean", "eta"),
                   help="response: posterior predictive draws of y (default); mean: E[y]; "
                        "eta: the linear predictor")
    q.add_argument("--seed", type=int, default=0)

    effects_cli.add_parsers(sub)     # effects, contrast

    m = sub.add_parser("simulate", help="write synthetic data drawn from the spec")
    m.add_argument("spec")
    m.add_argument("--rows", type=int)
    m.add_argument("--seed", type=int)
    m.add_argument("--out", required=True)
    post.add_parsers(sub)   # loo, ppc
    return p


SPEC_HELP = ("a YAML spec file, or a formula in quotes (\"y ~ x + (1 | g)\": every other key "
             "its default); a formula that names an existing file is that file")


def version() -> str:
    """hbm's version as installed ("dev" in a source tree without metadata)."""
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("hbm")
    except PackageNotFoundError:
        return "dev"


def main(argv: list[str] | None = None) -> int:
    """Run one command; the one place every failure becomes an exit status (docs/reference.md):
    0 done, 2 bad input or a refusing environment (a message naming the problem, the file and what
    to do), 130 interrupted, 1 a bug in hbm (the traceback saved to a file whose path is printed).
    A reader that goes away (``hbm check SPEC | head``) is no failure: see :class:`_Pipe`."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Pipe(sys.stdout), _Pipe(sys.stderr)
    try:
        code = _boundary(argv)
        sys.stdout.flush()
        sys.stderr.flush()
        return code
    finally:
        sys.stdout, sys.stderr = streams


def _boundary(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "fit" and args.resume:
            return cmd_resume(args)
        if getattr(args, "command_fn", None) is not None:   # commands of other modules (cli/post.py)
            return args.command_fn(args)
        return {"fit": cmd_fit, "check": cmd_check, "show": cmd_show, "predict": cmd_predict,
                "compare": cmd_compare, "simulate": cmd_simulate,
                "effects": effects_cli.cmd_effects, "contrast": effects_cli.cmd_contrast}[args.command](args)
    except HbmError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:       # a pipe other than stdout and stderr: the reader went away
        return EXIT_BROKEN_PIPE
    except OSError as e:          # the user's file system refused (a path no hbm module said more about)
        print(os_error(e).render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except RecursionError:
        print(HbmError("the input is nested too deeply to follow (Python's recursion limit)",
                       hint="write the formula or the spec with fewer nested parentheses or keys").render(),
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print(HbmError("out of memory", hint="fit fewer rows, draw fewer samples (--set inference.draws=...), "
                       "use minibatches (batch_size), or a machine with more memory").render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - a bug in hbm, not bad input: say so, keep the traceback
        if os.environ.get("HBM_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e}\n  = this is a bug in hbm; "
              + _save_traceback(e), file=sys.stderr)
        return 1


EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE: what a shell reports for a command its reader left


def _save_traceback(e: BaseException) -> str:
    """Write ``e``'s traceback to a file in the temporary directory; the words that say where."""
    import tempfile
    import traceback
    text = "".join(traceback.format_exception(e))
    try:
        fd, path = tempfile.mkstemp(prefix="hbm-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"hbm {' '.join(sys.argv[1:])}\n\n{text}")
    except OSError:               # nowhere to keep it: show it here rather than lose it
        return "please report it with this traceback:\n" + text
    return f"its traceback is in {path}: please report it with that file (HBM_DEBUG=1 prints it here)"


class _Pipe:
    """``sys.stdout`` / ``sys.stderr`` for one command: once its reader has gone (``hbm check SPEC | head``
    closes the pipe), what is written goes to ``os.devnull``, quietly, and the command carries on and
    exits with its own status (a fit still writes its run directory)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._divert()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._divert()

    def _divert(self):
        null = os.open(os.devnull, os.O_WRONLY)
        try:                       # the descriptor too: the interpreter's last flush finds devnull there
            os.dup2(null, self._stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        finally:
            os.close(null)
        self._stream = open(os.devnull, "w")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _spec(args):
    from hbm.spec import load_spec
    spec = load_spec(args.spec)
    overrides = _overrides(args)
    return spec.with_overrides(overrides) if overrides else spec


def _overrides(args) -> list[str]:
    overrides = list(getattr(args, "set", []) or [])
    for key in ("engine", "steps"):
        if getattr(args, key, None) is not None:
            overrides.append(f"inference.{key}={getattr(args, key)}")
    if getattr(args, "family", None) is not None:
        overrides.append(f"family={args.family}")
    if getattr(args, "devices", None) is not None:
        overrides.append(f"devices={args.devices}")
    return overrides


def _data_arg(args):
    from hbm.data.table import not_a_url
    if args.data is None:
        return None
    not_a_url(args.data, where="DATA argument")
    if not Path(args.data).exists():
        raise HbmError(f"data file not found: {args.data}", where="DATA argument")
    return args.data


def _with_data(spec, data):
    """``spec`` naming the DATA argument (absolute) as its ``data:``, so the run's spec.yaml records it."""
    return spec if data is None else replace(spec, data=str(Path(data).resolve()))


def cmd_check(args) -> int:
    from hbm.pipeline.compiled import compile_table
    from hbm.pipeline.compile import load_data
    spec = _spec(args)
    _check_inference(spec)
    data = _data_arg(args)
    df, source = load_data(_with_data(spec, data), data)
    model = compile_table(spec, df)
    from hbm.spec import is_formula
    shown = spec.source_path or ("formula" if is_formula(args.spec) else "(inline)")
    print(f"spec      {shown}   data: {source}")
    print(model.describe())
    engine = spec.inference.engine
    if engine == "auto":
        from hbm.pipeline.fit import choose_engine
        name, why = choose_engine(model)
        engine = f"auto: {name} ({why})"
    print(f"inference {engine}")
    return 0


def _check_inference(spec) -> None:
    """The engine, its options and the optimizer named in the spec exist (found now, not after compiling)."""
    from hbm.engines.optim import build_optimizer
    from hbm.engines.registry import get_engine
    from hbm.pipeline.fit import with_checked_options
    if spec.inference.engine != "auto":
        get_engine(spec.inference.engine)
    with_checked_options(spec.inference)
    build_optimizer(spec.inference.optimizer_fn)


def cmd_fit(args) -> int:
    from hbm.io.checkpoint import is_locked, partial_dir, partial_holds_state, remove_partial
    from hbm.pipeline.compiled import compile_table
    from hbm.pipeline.compile import load_data
    from hbm.io.rundir import new_run_dir
    if args.spec is None:
        raise HbmError("hbm fit needs a SPEC file", where="command line",
                       hint="hbm fit SPEC [DATA], or hbm fit --resume RUN_DIR to continue an interrupted fit")
    spec = _spec(args)
    _check_inference(spec)
    if getattr(args, "distributed", False):
        return _fit_distributed(args, spec)
    run_dir = new_run_dir(args.out, spec.name, overwrite=args.overwrite)
    if partial_dir(run_dir).exists():
        if is_locked(partial_dir(run_dir)):
            raise HbmError(f"another hbm process is fitting {run_dir} right now (in {partial_dir(run_dir)})",
                           hint="wait for it to finish, or choose another --out")
        if not partial_holds_state(partial_dir(run_dir)):
            remove_partial(partial_dir(run_dir))   # stopped before its first checkpoint: nothing to keep
        elif not args.overwrite:
            raise HbmError(f"an interrupted fit of {run_dir} is in {partial_dir(run_dir)}",
                           hint=f"continue it with `hbm fit --resume {run_dir}`, or pass --overwrite to "
                                "start again")
    t0 = time.perf_counter()
    data = _data_arg(args)
    spec = _with_data(spec, data)
    df, source = load_data(spec, data)
    model = compile_table(spec, df)
    model.source = str(source)
    compile_s = time.perf_counter() - t0
    data_path = spec.data
    resume = {"data": data_path, "source": str(source), "fingerprint": model.fingerprint,
              "run_dir": str(run_dir), "overwrite": bool(args.overwrite)}
    return _fit_and_save(args, spec, model, source, run_dir, compile_s, resume, table=df)


def _fit_distributed(args, spec) -> int:
    """``hbm fit ... --distributed``: each process compiles its share of the rows
    (:mod:`hbm.pipeline.distributed`), then fits as one process does (:func:`_fit_and_save`)."""
    import jax

    from hbm.io.rundir import new_run_dir
    from hbm.pipeline.distributed import compile_file, initialize
    _check_distributed(args, spec)
    initialize(args.coordinator, args.num_processes, args.process_id)
    writer = jax.process_index() == 0
    run_dir = new_run_dir(args.out, spec.name, overwrite=args.overwrite) if writer else Path(args.out)
    data = _data_arg(args) or spec.data
    t0 = time.perf_counter()
    model = compile_file(spec, data)
    compile_s = time.perf_counter() - t0
    source = f"{data} over {jax.process_count()} processes, {model.n_devices} devices"
    return _fit_and_save(args, spec, model, source, run_dir, compile_s, None)


def _check_distributed(args, spec) -> None:
    """What ``--distributed`` refuses, said before any process connects."""
    from hbm.spec import InferenceSpec
    if args.out is None:
        raise HbmError("--distributed needs --out: every process must name the same run directory",
                       where="--out")
    if (_data_arg(args) or spec.data) is None:
        raise HbmError("--distributed needs a Parquet data file", where="data")
    inf, default = spec.inference, InferenceSpec()
    if inf.checkpoint_every is not None or inf.checkpoint_seconds != default.checkpoint_seconds:
        raise HbmError("a distributed fit writes no checkpoints: every process would have to resume from the "
                       "same saved state", where="inference.checkpoint_every",
                       hint="remove inference.checkpoint_every and inference.checkpoint_seconds, or fit in "
                            "one process (without --distributed)")
    if getattr(args, "check_subset", False):
        raise HbmError("--check-subset needs the whole table in one process; a distributed fit has only "
                       "its share", where="--check-subset",
                       hint="check a one-process fit of a subset, or leave out --check-subset")


def cmd_resume(args) -> int:
    from hbm.io.checkpoint import read_partial
    from hbm.pipeline.compiled import compile_table
    from hbm.pipeline.compile import load_data
    from hbm.spec import load_spec
    if getattr(args, "distributed", False):
        raise HbmError("--resume continues a one-process fit; a distributed fit writes no checkpoints",
                       where="--distributed", hint="start the distributed fit again, or resume without --distributed")
    if args.spec is not None:
        raise HbmError("--resume continues a fit with the spec it was started with; give no SPEC",
                       where="command line", hint="change settings with --set key=value")
    part, run_dir, spec_dict, info = read_partial(args.resume)
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
        raise HbmError(f"--out {args.out} differs from the run directory {run_dir} of the interrupted fit",
                       where="--out")
    spec = load_spec(spec_dict)
    overrides = _overrides(args)
    if overrides:
        spec = _resume_overrides(spec, overrides)
    overwrite = bool(args.overwrite or info.get("overwrite"))
    from hbm.io.rundir import _check_target, check_writable
    if not overwrite and (run_dir / "fit.json").is_file():
        raise HbmError(f"the fit of {run_dir} has finished (its run directory is written); {part} is what a "
                       "process stopped at the very end left behind",
                       hint=f"delete {part}, or write the run again from it: hbm fit --resume {run_dir} --overwrite")
    _check_target(run_dir, overwrite)
    check_writable(run_dir)
    t0 = time.perf_counter()
    data = args.data if args.data is not None else info.get("data")
    if data is not None and not Path(data).exists():
        raise HbmError(f"the data of the interrupted fit is gone: {data}", where="data",
                       hint="give the same data again: hbm fit --resume RUN_DIR DATA")
    df, source = load_data(spec, data)
    model = compile_table(spec, df)
    model.source = str(source)
    if info.get("fingerprint") and model.fingerprint != info["fingerprint"]:
        raise HbmError(f"the data differs from the data the interrupted fit started with ({source})",
                       where="data", hint="resume with the same data, or start a new fit")
    compile_s = time.perf_counter() - t0
    args.overwrite = overwrite
    return _fit_and_save(args, spec, model, source, run_dir, compile_s, dict(info), part=part, table=df)


RESUMABLE = ("inference.steps", "inference.optimizer", "inference.tolerance", "inference.draws",
             "inference.checkpoint_every", "inference.checkpoint_seconds", "devices", "outputs.log_likelihood")


def _resume_overrides(spec, overrides: list[str]):
    """``spec`` with ``overrides``, which may change how the fit goes on, never what is fitted."""
    new = spec.with_overrides(overrides)
    before, after = spec.to_dict(), new.to_dict()
    for key in RESUMABLE:
        head, _, rest = key.partition(".")
        for d in (before, after):
            if rest:
                d[head].pop(rest, None)
            else:
                d.pop(head, None)
    if before != after:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if changed[0] == "inference":
            a, b = before["inference"], after["inference"]
            changed = sorted(f"inference.{k}" for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise HbmError(f"--resume cannot change '{changed[0]}': the saved state belongs to the model "
                       "and settings the fit started with", where="--set",
                       hint="a resumed fit may change only " + ", ".join(RESUMABLE))
    return new


def _fit_and_save(args, spec, model, source, run_dir, compile_s, resume: dict | None, part=None,
                  table=None) -> int:
    """Fit, print the summary, the convergence and the verdict, and write the run directory.

    One process: checkpoints in ``<run_dir>.partial`` (``resume`` is what ``--resume`` reads there),
    removed once the run directory is written. ``--distributed`` (``resume`` None): every process
    fits, without checkpoints; process 0 alone prints and writes.
    """
    import jax

    writer = jax.process_index() == 0

    def say(*a, **k):
        if writer:
            print(*a, **k)
    plates = ", ".join(f"{p.name} {p.size:,}" for p in model.ir.plates)
    say(f"compiled {spec.name}: {model.n_rows:,} rows from {source}" + (f", {plates}" if plates else "")
        + f" ({compile_s:.1f} s)", file=sys.stderr)
    ckpt = lock = None
    try:
        if resume is not None:
            ckpt, lock, part = _start_checkpoints(args, spec, run_dir, resume, part, say)
        return _fit_report_save(args, spec, model, run_dir, compile_s, table, ckpt, part, writer)
    finally:
        if lock is not None:
            lock.close()


def _start_checkpoints(args, spec, run_dir, resume: dict, part, say):
    """The partial directory of a one-process fit, held by this process, and its Checkpointer.

    A new one is removed again if it cannot be written whole (a partial directory holding only its
    spec cannot be resumed). What killed processes left (temporary files in it, half-written run
    directories beside the run) goes, now that no other process can be writing them."""
    from hbm.io.checkpoint import (SPEC_FILE, Checkpointer, atomic_write, clean_for_resume, lock_partial,
                                   remove_partial, start_partial, write_resume_info)
    from hbm.io.rundir import _plain
    import yaml
    new = part is None
    if new:
        part = start_partial(run_dir, spec.to_dict(), overwrite=args.overwrite)
    lock = None
    try:
        lock = lock_partial(part)
        gone = clean_for_resume(part)
        if gone:
            say("removed what an interrupted hbm left: " + ", ".join(str(q) for q in gone), file=sys.stderr)
        if not new:
            atomic_write(part / SPEC_FILE, yaml.safe_dump(_plain(spec.to_dict()), sort_keys=False))
        write_resume_info(part, resume)
    except BaseException:
        if lock is not None:
            lock.close()
        if new:
            remove_partial(part)
        raise
    say(f"checkpoints in {part} (after a crash: hbm fit --resume {run_dir})", file=sys.stderr)
    return Checkpointer.from_config(part, spec.inference), lock, part


def _fit_report_save(args, spec, model, run_dir, compile_s, table, ckpt, part, writer) -> int:
    """Fit, print the summary and verdicts, write the run directory, remove the partial directory."""
    from hbm.errors import Problem
    from hbm.io.checkpoint import partial_holds_state, remove_partial
    from hbm.pipeline.fit import fit
    from hbm.results.diagnostics import report_lines
    from hbm.results.summary import format_summary
    label = spec.inference.engine
    if label == "auto" and not args.quiet and writer:
        from hbm.pipeline.fit import choose_engine
        label = choose_engine(model)[0]
    bar = None if args.quiet or not writer else ProgressBar(label)
    try:
        result = fit(model, progress=bar, checkpoint=ckpt)
    except BaseException as e:
        if bar:
            bar.close()
        if ckpt is not None:
            if ckpt.saves == 0 and ckpt.resumed_from is None and not partial_holds_state(part):
                remove_partial(part)   # nothing worth keeping: leave no litter
            elif isinstance(e, KeyboardInterrupt):
                print(f"the fit's last checkpoint is in {part}; continue with `hbm fit --resume {run_dir}`",
                      file=sys.stderr)
        raise
    if bar:
        bar.close()
    if not writer:
        return 0
    result.timings["compile_model_s"] = compile_s
    print(format_summary(result.summary()))
    info = result.engine.info
    if result.kind == "sampler" and "chains" in info:
        fit_s = result.engine.timings.get("fit_s")
        print(f"\n{result.config.engine}: {info['chains']} chain{'s' * (info['chains'] != 1)} of "
              f"{info['warmup']:,} warmup + {info['samples']:,} draws: "
              f"{info['chains'] * info['samples']:,} draws kept"
              + (f" ({fit_s:.1f} s)" if isinstance(fit_s, (int, float)) else ""))
    elif "converged" in info:
        print(f"\n{result.config.engine}: {info.get('steps_run', '?')} steps, "
              + ("converged" if info["converged"] else f"stopped: {info.get('stop_reason', '?')}"))
    if "retried" in info:
        r = info["retried"]
        print(f"\n{result.config.engine}: ran {len(r['earlier_runs'])} more time(s), last with target_accept "
              f"{result.config.target_accept:g}, {result.config.warmup} warmup and {result.config.samples} draws "
              f"per chain (" + "; then ".join(e["reason"] for e in r["earlier_runs"]) + ")")
    for line in report_lines(getattr(result, "diagnostics", None)):
        print(wrap(line))
    if getattr(args, "check_subset", False) and result.kind != "sampler" and table is not None:
        from hbm.pipeline.subset_check import check_on_subset
        check = check_on_subset(result, table)
        result.diagnostics = {**(result.diagnostics or {}), "subset_check": check}
        print(wrap(check["verdict"]))
        print(wrap(check["overall"]))
    try:
        path = result.save(run_dir, overwrite=args.overwrite)
    except HbmError as e:
        if part is not None and partial_holds_state(part):   # the fit itself is not lost
            raise HbmError(problems=[*e.problems, Problem(
                f"the finished fit is kept in {part}",
                hint=f"once that is fixed, `hbm fit --resume {run_dir}` writes the run directory "
                     "without fitting again")]) from None
        raise
    if part is not None:
        remove_partial(part)
    print(f"results written to {path}")
    for line in post.fit_notes(result):
        print(line)
    return 0


def cmd_predict(args) -> int:
    from hbm.pipeline.predict import Predictor, draws_frame
    from hbm.io.rundir import check_writable, write_new_file
    from hbm.data.table import read_table
    out = Path(args.out) if args.out else None
    if args.draws and out is None:
        raise HbmError("--draws writes a table with one column per draw: give --out FILE.parquet",
                       where="--out")
    if out is not None:
        if out.exists():
            raise HbmError(f"{out} exists; predict never writes over a file", where="--out",
                           hint="choose another name, or remove the file first")
        if out.suffix.lower() not in (".parquet", ".pq", ".csv"):
            raise HbmError(f"cannot tell which format to write from '{out.name}'", where="--out",
                           hint="name the output .parquet or .csv")
        check_writable(out, parent_exists=True)
    pred = Predictor.from_run(args.run_dir)
    df = read_table(_data_arg(args))
    res = pred.predict(df, what=args.what, seed=args.seed, draws=args.draws)
    if args.draws:
        res = draws_frame(res)
    res = res.reset_index(drop=True)
    res.insert(0, "row", range(len(res)))
    if out is None:
        res.to_csv(sys.stdout, index=False, float_format="%.6g")
        return 0
    if out.suffix.lower() == ".csv":
        write_new_file(out, lambda p: res.to_csv(p, index=False, float_format="%.8g"))
    else:
        write_new_file(out, lambda p: res.to_parquet(p, index=False))
    n_new = int((res["new_levels"] != "").sum()) if "new_levels" in res else 0
    print(f"wrote {'draws' if args.draws else 'predictions'} for {len(res):,} rows to {out}"
          + (f" ({n_new:,} with levels the fit never saw)" if n_new else ""), file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from hbm.pipeline.compare import compare_runs, format_comparison, output_dir, write_comparison
    out = output_dir(args.run_a, args.run_b, args.out)   # checked before the work: a new directory
    cmp = compare_runs(args.run_a, args.run_b)
    print(format_comparison(cmp))
    write_comparison(cmp, out)
    print(f"table and plot written to {out} (compare.csv, compare.png)")
    return 0


def cmd_show(args) -> int:
    from hbm.io.rundir import show_run
    print(show_run(args.run_dir))
    return 0


def cmd_simulate(args) -> int:
    from hbm.io.rundir import check_writable, write_new_file
    from hbm.pipeline.simulate import simulate_table
    spec = _spec(args)
    out = Path(args.out)
    if out.exists():
        raise HbmError(f"{out} exists; simulate never overwrites a file", where="--out")
    check_writable(out, parent_exists=True)
    df = simulate_table(spec, rows=args.rows, seed=args.seed)
    suffix = out.suffix.lower()
    if suffix == ".csv":
        write_new_file(out, lambda p: df.to_csv(p, index=False))
    elif suffix in (".arrow", ".feather", ".ipc"):
        write_new_file(out, lambda p: df.to_feather(p))
    else:
        write_new_file(out, lambda p: df.to_parquet(p, index=False))
    print(f"wrote {len(df):,} rows to {out}")
    return 0


SHORT_PARENTHESIS = 30   # characters: a parameter's name, not a clause


def wrap(line: str) -> str:
    """``line`` wrapped to the terminal's width (``COLUMNS``, else the terminal's, else 100), its
    continuation lines indented, never inside a short parenthesis (a name such as ``sd(1 | g)`` stays
    whole)."""
    width = shutil.get_terminal_size((100, 24)).columns
    kept, opened = list(line), []
    for i, ch in enumerate(line):
        if ch == "(":
            opened.append(i)
        elif ch == ")" and opened:
            start = opened.pop()
            if i - start <= SHORT_PARENTHESIS:
                kept[start:i] = ["\0" if c == " " else c for c in kept[start:i]]
    text = textwrap.fill("".join(kept), width=max(40, width - 1), subsequent_indent="    ",
                         break_long_words=False, break_on_hyphens=False)
    return text.replace("\0", " ")


class ProgressBar:
    """One line on stderr, redrawn per block of steps (a new line every 2 s when stderr is not a
    terminal): bar, step, running loss, or a sampler's chain, phase and divergences; the rate and
    the time left (measured from the first block on, so compiling is not counted); elapsed time."""

    extra = True    # engines may tell more than (step, total, loss): hbm.engines.base.report

    def __init__(self, label: str, width: int = 28):
        self.label, self.width, self.t0 = label, width, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.base: tuple[float, int] | None = None    # (time, step) the rate is measured from
        self.prev = -1

    def __call__(self, step: int, total: int, loss: float | None, *, chain: int | None = None,
                 chains: int | None = None, phase: str | None = None, divergences: int | None = None,
                 **_) -> None:
        now = time.perf_counter()
        if step < self.prev:         # a new run (a sampler's retry)
            self.base = None
        self.prev = step
        if self.base is None and step > 0:
            self.base = (now, step)
        if not self.tty and now - self.last < 2.0 and step < total:
            return
        self.last = now
        filled = int(self.width * step / max(total, 1))
        text = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {step:,}/{total:,}"
        if loss is not None:
            text += f"  loss {loss:.5g}"
        if phase is not None:
            text += f"  chain {chain}/{chains} {phase}" if chain is not None else f"  {phase}"
        t, s = self.base or (now, step)
        if step > s and now > t:
            rate = (step - s) / (now - t)
            unit = "draws/s" if phase is not None else "steps/s"
            left = _clock((total - step) / rate)
            text += f"  {rate:,.0f} {unit}  " + (f"{left} left" if phase is not None else f"up to {left} left")
        if divergences:
            text += f"  {divergences:,} divergent"
        text += f"  {now - self.t0:.1f}s"
        if self.tty:
            print("\r" + text + "\x1b[K", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _clock(seconds: float) -> str:
    """m:ss (h:mm:ss past an hour)."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


if __name__ == "__main__":
    sys.exit(main())
