#!/usr/bin/env python
"""hbm's compiled seed model against the hand-written NumPyro reference, side by side.

    .venv/bin/python benchmarks/elasticity.py                       # 1k and 10k products, 1/2/4 devices
    .venv/bin/python benchmarks/elasticity.py --sizes 1000 --devices 1 --min-time 5
    .venv/bin/python benchmarks/elasticity.py --answer              # also the 10k "time to answer"

Data: ../shared/bench/gen_elasticity.py (products x 156 periods, 10 categories),
written to --data-dir once. The model, in hbm's formula language, with the
reference's priors (../shared/bench/README.md):

    log(units) ~ 0 + log(price) | product/category + 1 | product + (1 | cat_by_time)

Both sides: AutoNormal, Trace_ELBO with 1 particle, adamw with
exponential_decay(0.01, 1000, 0.9), blocks of --block steps compiled once.
The reference runs as ``handwritten_elasticity.py --mode bench`` in a
subprocess (its JSON line is parsed); hbm runs in a subprocess of this script
(``--worker speed``) through its own SVI engine (``hbm.engines.svi.run_svi``),
so each side has its own peak RSS and its own fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``). Steady-state steps/s
exclude compilation and the first block. The two run alternately, so a busy
machine slows both.

Time to answer (--answer, the 10k data): steps and seconds until the
posterior means of the product elasticities are within 1% (relative RMS) of
those at the end of a run 10x longer, for hbm's default optimizer and for the
seed's (adamw + exponential_decay(0.01, 1000, 0.9)).

Results are appended to --out (benchmarks/RESULTS.md) with the command and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH = Path(os.environ.get("HBM_BENCH_DIR", ROOT / ".." / "shared" / "bench")).resolve()
FORMULA = "log(units) ~ 0 + log(price) | product/category + 1 | product + (1 | cat_by_time)"
PRIORS = {"log(price)": "normal(-2, 1)", "sd(log(price) | category)": 1, "sd(log(price) | product)": 2,
          "sd(1 | product)": 3, "sd(1 | cat_by_time)": 3}
SEED_OPTIMIZER = "adamw(lr=exponential_decay(0.01, 1000, 0.9))"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000", help="numbers of products (x 156 periods)")
    ap.add_argument("--devices", default="1,2,4")
    ap.add_argument("--min-time", type=float, default=15.0, help="timed seconds per run (after compiling)")
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--layout", default="auto", help="hbm fit layout: auto | panel | flat")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--answer", action="store_true", help="also measure time to answer on the 10k data")
    ap.add_argument("--answer-steps", type=int, default=20000, help="length of the long (10x) run")
    ap.add_argument("--data-dir", default="/tmp/hbm-bench-data")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    # internal: one measurement in this process
    ap.add_argument("--worker", choices=["speed", "answer"])
    ap.add_argument("--products", type=int)
    ap.add_argument("--optimizer", default=SEED_OPTIMIZER)
    ap.add_argument("--guide", default="normal")
    ap.add_argument("--particles", type=int, default=1)
    ap.add_argument("--default-config", action="store_true",
                    help="also time hbm's default variational guide (structured, 1 particle; lr does not change a step's cost)")
    return ap.parse_args(argv)


def data_path(data_dir: str, products: int) -> Path:
    return Path(data_dir) / f"elasticity_p{products}_c10_t156_s0.parquet"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mb(key: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MB (Linux), else None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Start the RSS high-water mark (VmHWM) afresh from the current RSS (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ============================================================================ workers (hbm side)
def _spec(args, devices: int) -> dict:
    return {"name": "price_elasticity_bench", "formula": FORMULA, "family": "poisson", "priors": PRIORS,
            "devices": devices,
            "inference": {"engine": "svi", "guide": args.guide, "loss": "elbo", "particles": args.particles,
                          "optimizer": args.optimizer, "steps": 10**7, "tolerance": 0, "seed": 1}}


class _Enough(Exception):
    pass


def worker_speed(args) -> dict:
    import dataclasses

    import jax
    import numpy as np
    import pandas as pd

    import hbm
    from hbm.engines.base import FitProblem
    from hbm.engines.svi import guide_factory, make_elbo, run_svi

    res = {"side": "hbm", "guide": args.guide, "particles": args.particles, "products": args.products,
           "devices": args.devices, "layout_arg": args.layout,
           "jax_devices": jax.device_count(), "rss_base_mb": rss_mb()}
    t0 = time.perf_counter()
    df = pd.read_parquet(data_path(args.data_dir, args.products))
    res["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = hbm.pipeline.compiled.compile_table(hbm.spec.load_spec(_spec(args, int(args.devices))), df,
                                       layout=args.layout)
    jax.block_until_ready(model.data["rows"])
    res["hbm_compile_s"] = time.perf_counter() - t0
    res["layout"] = model.layout.describe() if model.layout is not None else "flat"
    res["n_obs"] = model.n_rows
    rows = model.data["rows"]
    res["obs_bytes_per_eval"] = int(sum(np.asarray(a).nbytes if not hasattr(a, "nbytes") else a.nbytes
                                        for a in jax.tree.leaves(rows)))
    res["encoded_bytes"] = int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(model.rows)))
    del df
    import gc
    gc.collect()
    res["rss_before_fit_mb"] = _status_mb("VmRSS")
    res["fit_peak_reset"] = reset_peak_rss()
    config = dataclasses.replace(model.spec.inference, options=(("block", args.block),))
    marks = {}

    def on_init(state):
        jax.block_until_ready(state)
        marks["init"] = time.perf_counter()

    times, losses = [], []

    def progress(step, total, loss):
        now = time.perf_counter()
        times.append(now)
        losses.append(loss)
        timed = now - times[1] if len(times) > 1 else 0.0
        if len(times) > 1 and timed >= args.min_time and len(times) >= 4:
            raise _Enough

    t0 = time.perf_counter()
    try:
        run_svi(FitProblem(model.numpyro_model, model.data), config, guide_factory(args.guide),
                make_elbo(config), progress=progress, on_init=on_init)
    except _Enough:
        pass
    blocks = np.diff(np.asarray(times))            # blocks after the first
    res["init_s"] = marks["init"] - t0
    res["first_block_s"] = times[0] - marks["init"]
    res["compile_s"] = res["first_block_s"] - float(np.median(blocks)) + res["init_s"]
    res["blocks_timed"] = len(blocks)
    res["steps_timed"] = len(blocks) * args.block
    res["it_per_s"] = len(blocks) * args.block / float(blocks.sum())
    res["it_per_s_best_block"] = args.block / float(blocks.min())
    res["final_loss"] = float(losses[-1])
    res["peak_rss_mb"] = rss_mb()
    if res["fit_peak_reset"]:
        res["fit_peak_rss_mb"] = _status_mb("VmHWM")
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        res["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    res["obs_GBps_1read"] = res["obs_bytes_per_eval"] * res["it_per_s"] / 1e9
    res["loadavg"] = os.getloadavg()[0]
    return res


def worker_answer(args) -> dict:
    """A long run with the given optimizer; the product elasticities' posterior means after each block."""
    import jax
    import numpy as np
    import pandas as pd
    from numpyro import handlers
    from numpyro.infer import SVI
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.infer.initialization import init_to_feasible, init_to_median

    import hbm
    from hbm.engines.base import split_kwargs
    from hbm.engines.optim import build_optimizer
    from hbm.engines.svi import make_elbo

    df = pd.read_parquet(data_path(args.data_dir, args.products))
    model = hbm.pipeline.compiled.compile_table(hbm.spec.load_spec(_spec(args, 1)), df, layout=args.layout)
    del df
    dyn, rebuild = split_kwargs(model.data)
    optim, elbo = build_optimizer(args.optimizer), make_elbo(model.spec.inference)
    site = "log(price)[product]"

    def traced_svi(kw, init=init_to_feasible):
        # a guide set up inside each trace (as hbm.engines.svi does): no tracer outlives its trace
        svi = SVI(model.numpyro_model, AutoNormal(model.numpyro_model, init_loc_fn=init), optim, elbo)
        svi.init(jax.random.PRNGKey(0), **kw)
        return svi

    def means(svi, params, rows, consts):
        med = svi.guide.median(params)
        tr = handlers.trace(handlers.substitute(model.numpyro_model, data=med)).get_trace(
            rows, consts, mode="latent")
        return tr[site]["value"]

    state = jax.jit(lambda k, d: traced_svi(rebuild(d), init_to_median(num_samples=15)).init(
        k, **rebuild(d)))(jax.random.PRNGKey(1), dyn)

    def block(state, d, rows, consts):
        kw = rebuild(d)
        svi = traced_svi(kw)

        def body(s, _):
            return svi.update(s, **kw)
        state, losses = jax.lax.scan(body, state, None, length=args.block)
        return state, losses, means(svi, svi.get_params(state), rows, consts)

    run = jax.jit(block)
    jax.block_until_ready(run(state, dyn, model.rows, model.consts))   # compile (untimed; result dropped)
    traj, wall, t = [], [], 0.0
    for _ in range(args.answer_steps // args.block):
        t0 = time.perf_counter()
        state, losses, m = run(state, dyn, model.rows, model.consts)
        m = np.asarray(m)
        t += time.perf_counter() - t0
        traj.append(m)
        wall.append(t)
    traj = np.asarray(traj)
    final = traj[-1]
    err = np.sqrt(((traj - final) ** 2).mean(1)) / np.sqrt((final ** 2).mean())
    steps = (np.arange(len(traj)) + 1) * args.block
    within = err <= 0.01
    first = int(np.argmax(within)) if within.any() else None
    # stays within from here on
    stay = None
    for i in range(len(within)):
        if within[i:].all():
            stay = i
            break
    return {"side": "hbm", "worker": "answer", "optimizer": args.optimizer, "products": args.products,
            "long_run_steps": int(steps[-1]), "long_run_s": float(wall[-1]),
            "first_within_1pct_steps": int(steps[first]) if first is not None else None,
            "first_within_1pct_s": float(wall[first]) if first is not None else None,
            "stays_within_1pct_steps": int(steps[stay]) if stay is not None else None,
            "stays_within_1pct_s": float(wall[stay]) if stay is not None else None,
            "rel_err_at": {int(s): float(e) for s, e in zip(steps, err) if s in (500, 1000, 2000, 5000, 10000)},
            "peak_rss_mb": rss_mb()}


# ============================================================================ driver
def run_json(cmd: list[str], env: dict, timeout: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            out = json.loads(line)
            out["wall_s"] = time.perf_counter() - t0
            return out
    raise RuntimeError(f"no JSON from {' '.join(cmd)}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


ORIGINAL_ENV = dict(os.environ)   # before the driver limits its own GPU memory (main)


def env_for(devices: int) -> dict:
    env = dict(ORIGINAL_ENV)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env.setdefault("PYTHONPATH", str(ROOT))
    return env


def ensure_data(data_dir: str, products: int) -> None:
    if not data_path(data_dir, products).exists():
        subprocess.run([sys.executable, str(BENCH / "gen_elasticity.py"), "--products", str(products),
                        "--periods", "156", "--out", data_dir], check=True)


def reference(args, products: int, devices: int) -> dict:
    cmd = [sys.executable, str(BENCH / "handwritten_elasticity.py"), "--products", str(products),
           "--data-dir", args.data_dir, "--mode", "bench", "--loss", "trace", "--block", str(args.block),
           "--min-time", str(args.min_time), "--devices", str(devices),
           "--likelihood", "plate" if devices == 1 else "shard_map"]
    out = run_json(cmd, env_for(1), args.timeout)   # the reference sets its own device count
    out["side"] = "reference"
    return out


def hbm_side(args, products: int, devices: int, worker: str = "speed", optimizer: str | None = None,
             guide: str = "normal", particles: int = 1) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--products", str(products),
           "--devices", str(devices), "--min-time", str(args.min_time), "--block", str(args.block),
           "--layout", args.layout, "--data-dir", args.data_dir, "--answer-steps", str(args.answer_steps),
           "--optimizer", optimizer or SEED_OPTIMIZER, "--guide", guide, "--particles", str(particles)]
    return run_json(cmd, env_for(devices), args.timeout)


def membw() -> dict:
    """Host memory bandwidth (membw.py); on a GPU, the device's read bandwidth measured with jax."""
    import jax
    if jax.default_backend() != "cpu":
        return gpu_membw()
    return run_json([sys.executable, str(BENCH / "membw.py"), "--mb", "512", "--reps", "5"], env_for(1), 300)


def gpu_membw(mb: int = 2048, reps: int = 20) -> dict:
    """Read (a sum) and copy bandwidth of the default device, best of ``reps``; copy counts read + write."""
    import jax
    import jax.numpy as jnp
    x = jnp.ones(mb * 1024 * 1024 // 4, jnp.float32)
    read = jax.jit(jnp.sum)
    copy = jax.jit(lambda a: a * 1.0001)
    out = {"device": jax.devices()[0].device_kind, "array_mb": mb}
    for name, fn, factor in (("read", read, 1), ("copy", copy, 2)):
        jax.block_until_ready(fn(x))
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x))
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_dev_GBps_best"] = factor * x.nbytes / best / 1e9
    out["read_2t_GBps_best"] = out["read_dev_GBps_best"]      # the denominator render() uses
    out["copy_2t_GBps_best"] = out["copy_dev_GBps_best"]
    return out


def machine() -> dict:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GB"
    except OSError:
        pass
    import jax
    import numpyro
    accel = None if jax.default_backend() == "cpu" else f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    return {"nproc": os.cpu_count(), "cpu": model, "memory": mem, "python": platform.python_version(),
            "jax": jax.__version__, "numpyro": numpyro.__version__, "accelerator": accel}


def main() -> None:
    args = parse()
    if args.worker:
        args.devices = int(args.devices)
        out = worker_speed(args) if args.worker == "speed" else worker_answer(args)
        print(json.dumps(out))
        return
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # leave the GPU to the workers
    sizes = [int(s) for s in args.sizes.split(",") if s]
    devs = [int(d) for d in args.devices.split(",") if d]
    command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    bw = membw()
    rows = []
    for p in sizes:
        ensure_data(args.data_dir, p)
        for d in devs:
            for rep in range(args.repeats):
                order = ["hbm", "reference"] if rep % 2 == 0 else ["reference", "hbm"]
                got = {}
                for side in order:
                    if side == "reference" and args.no_reference:
                        continue
                    try:
                        got[side] = hbm_side(args, p, d) if side == "hbm" else reference(args, p, d)
                    except Exception as e:  # noqa: BLE001 - report the failure, go on with the rest
                        got[side] = {"error": str(e)[-500:]}
                    print(json.dumps({"products": p, "devices": d, "rep": rep, side: got[side]}), flush=True)
                rows.append((p, d, rep, got.get("hbm", {}), got.get("reference", {})))
    defaults = []
    if args.default_config:
        for p in sizes:
            try:
                defaults.append(hbm_side(args, p, 1, guide="structured", particles=1))
            except Exception as e:  # noqa: BLE001
                defaults.append({"products": p, "error": str(e)[-500:]})
            print(json.dumps({"default_config": defaults[-1]}), flush=True)
    answers = []
    if args.answer:
        ensure_data(args.data_dir, 10000)
        for opt in ("adam(lr=0.01)", SEED_OPTIMIZER):
            try:
                answers.append(hbm_side(args, 10000, 1, worker="answer", optimizer=opt))
            except Exception as e:  # noqa: BLE001
                answers.append({"optimizer": opt, "error": str(e)[-500:]})
            print(json.dumps(answers[-1]), flush=True)
    report = render(command, machine(), bw, rows, answers, args, defaults)
    print(report)
    with open(args.out, "a") as f:
        f.write(report + "\n")


def render(command, mach, bw, rows, answers, args, defaults=()) -> str:
    read_bw = bw.get("read_2t_GBps_best") or bw.get("read_1t_GBps_best")
    out = [f"## Run of {time.strftime('%Y-%m-%d %H:%M')}", "",
           f"`{command}`", "",
           f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['memory']}"
           + (f", {mach['accelerator']} (the runs below are on it)" if mach.get("accelerator") else "")
           + f"; python {mach['python']}, jax {mach['jax']}, numpyro {mach['numpyro']}. Memory bandwidth "
           + ("(jax on the device" if mach.get("accelerator") else "(membw.py, 2 threads")
           + f"): read {bw.get('read_2t_GBps_best', 0):.1f} GB/s, copy {bw.get('copy_2t_GBps_best', 0):.1f} GB/s"
           f". Load average at start {os.getloadavg()[0]:.1f}.", "",
           "| products x 156 | rows | devices | hbm steps/s | reference steps/s | hbm / reference "
           "| hbm compile s (model + jit) | reference compile s (svi.init + jit) | peak RSS MB hbm / ref "
           "| hbm data MB; peak over start / data | bandwidth used hbm / ref | hbm layout |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p, d, rep, h, r in rows:
        def f(x, fmt="{:.1f}"):
            return fmt.format(x) if isinstance(x, (int, float)) else "-"
        hs, rs = h.get("it_per_s"), r.get("it_per_s")
        ratio = f(hs / rs, "{:.2f}") if hs and rs else "-"
        bwh = f(100 * h["obs_GBps_1read"] / read_bw, "{:.1f}%") if h.get("obs_GBps_1read") and read_bw else "-"
        bwr = f(100 * r["obs_GBps_1read"] / read_bw, "{:.1f}%") if r.get("obs_GBps_1read") and read_bw else "-"
        hc = f"{f(h.get('hbm_compile_s'))} + {f(h.get('compile_s'))}" if h else "-"
        rc = f"{f(r.get('svi_init_s'))} + {f(r.get('compile_s'))}" if r else "-"
        err = " (error: " + (h.get("error") or r.get("error"))[:120] + ")" if h.get("error") or r.get("error") else ""
        data_mb = h.get("obs_bytes_per_eval", 0) / 2**20
        enc_mb = h.get("encoded_bytes", 0) / 2**20
        if h.get("device_peak_mb"):      # on an accelerator: its own peak memory against the data on it
            mem = f"{data_mb:.0f}; device peak {h['device_peak_mb']:.0f} MB = {h['device_peak_mb'] / data_mb:.1f}x"
        elif enc_mb and h.get("fit_peak_rss_mb"):   # on the host: the fit's peak over the bare runtime
            mem = (f"{data_mb:.0f} ({enc_mb:.0f} encoded); fit peak {h['fit_peak_rss_mb']:.0f} MB: "
                   f"{(h['fit_peak_rss_mb'] - h.get('rss_base_mb', 0)) / enc_mb:.1f}x encoded")
        elif data_mb and h.get("peak_rss_mb"):
            mem = f"{data_mb:.0f}; {(h['peak_rss_mb'] - h.get('rss_base_mb', 0)) / data_mb:.1f}x"
        else:
            mem = "-"
        out.append(f"| {p:,} | {p * 156:,} | {d} | {f(hs)} | {f(rs)} | {ratio} | {hc} | {rc} "
                   f"| {f(h.get('peak_rss_mb'), '{:.0f}')} / {f(r.get('peak_rss_mb'), '{:.0f}')} | {mem} "
                   f"| {bwh} / {bwr} | {h.get('layout', '-')}{err} |")
    if defaults:
        mf = {p: h.get("it_per_s") for p, d, rep, h, r in rows if d == 1 and h.get("it_per_s")}
        out += ["", "hbm's default variational guide (structured, 1 particle; 1 device) "
                "against the mean-field, 1-particle runs above:", "",
                "| products x 156 | steps/s | mean-field steps/s | cost per step vs mean field | peak RSS MB |",
                "| --- | --- | --- | --- | --- |"]
        for h in defaults:
            if "error" in h:
                out.append(f"| {h.get('products', '?'):,} | error: {h['error'][:150]} | | | |")
                continue
            m = mf.get(h["products"])
            out.append(f"| {h['products']:,} | {h['it_per_s']:.1f} | {m or 0:.1f} | "
                       f"{(m / h['it_per_s']) if m else float('nan'):.2f}x | {h['peak_rss_mb']:.0f} |")
    if answers:
        out += ["", f"Time to answer (10k products; means of the product elasticities within 1% relative RMS "
                f"of a {args.answer_steps}-step run's; AutoNormal, 1 particle):", "",
                "| optimizer | first within 1%: steps (s) | stays within: steps (s) | rel. error at 1k / 2k / 5k steps "
                "| steps/s |", "| --- | --- | --- | --- | --- |"]
        for a in answers:
            if "error" in a:
                out.append(f"| {a['optimizer']} | error: {a['error'][:200]} | | | |")
                continue
            e = {int(k): v for k, v in a.get("rel_err_at", {}).items()}   # JSON keys are text
            errs = " / ".join(f"{100 * e[k]:.2f}%" if k in e else "-" for k in (1000, 2000, 5000))

            def at(k):
                s = a.get(f"{k}_steps")
                return f"{s} ({a[f'{k}_s']:.1f} s)" if s is not None else "not reached"
            out.append(f"| {a['optimizer']} | {at('first_within_1pct')} | {at('stays_within_1pct')} | {errs} "
                       f"| {a['long_run_steps'] / a['long_run_s']:.0f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
