#!/usr/bin/env python3
"""The convoy in both load models, real runtimes beside emulation variants (sessions 11-13; see
../README.md, "Session 13"): per repetition, `/hello` alone and under 4 closed `/cpu?ms=10` at 1 in
flight (calibrate's `hello_alone` and `hello_under_cpu`), and `/hello` at a constant RATE alone and
under the same `/cpu` (open model: `hello_open_alone`, `hello_under_cpu_open`). Prints each
variant's added latency in 10 ms jobs per repetition and the medians: calibrate's
`hello_delay_under_cpu` and `hello_delay_under_cpu_open`, without the rest of a 20-minute run.
Variants are JSON {label: [implementation, {env}]} or [implementation, {env}, binary] (another
build of loopscale-workload, to compare models in one invocation); an emulation starts from the
latest calibration's knobs (`calibration.experiment_knobs()`) with its env on top. Repetitions interleave
the variants.

    REPS=4 RATE=50 workload/reference/experiments/convoy_both_models.py \
      '{"express": ["express", {}], "emulation": ["emulated-event-loop", {}]}'

Needs a release build and `workload/reference/install`.
"""
import json, os, sys, statistics
from pathlib import Path
REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as c
import reference_servers as rs
reps = int(os.environ.get("REPS", "4"))
rate = float(os.environ.get("RATE", "100"))
configs = json.loads(sys.argv[1])  # {"label": ["impl", {env}]}
work = Path(os.environ.get("WORK_DIR", "/tmp/convoy-both-models")); work.mkdir(parents=True, exist_ok=True)
binp = REFERENCE.parents[1] / "target" / "release" / "loopscale-workload"
settings = c.Settings(warmup=1.0, duration=float(os.environ.get("DUR", "5")), repetitions=reps, work_dir=work, load_bin=binp, prime=3.0)
servers = {}
knobs = c.experiment_knobs()
for label, (impl, env, *binary) in configs.items():
    if impl.startswith("emulated"):
        env = {**c.overhead_env(knobs[impl.removeprefix("emulated-")]), **env}
    s = rs.start(impl, 1, work, Path(binary[0]) if binary else binp, env)
    servers[label] = s
    c.ServerPool(settings).prime(s)
scen = {
    "alone": c.Scenario("hello_alone", 1, "/hello", 1),
    "under": c.Scenario("hello_under_cpu", 1, "/hello", 1, "/cpu?ms=10", 4),
    "open_alone": c.Scenario("hello_open_alone", 1, "/hello", 16, rate=rate),
    "open_under": c.Scenario("hello_open_under_cpu", 1, "/hello", 16, "/cpu?ms=10", 4, rate=rate),
}
res = {l: {k: [] for k in scen} for l in configs}
try:
    for rep in range(reps):
        for k, sc in scen.items():
            for label, s in servers.items():
                m = c.run_scenario(settings, s, sc, rep)
                mean = m.mean_ms
                res[label][k].append((m.p50_ms, mean, m.background_throughput_rps))
                print(f"{label:10} {k:12} rep{rep} p50 {m.p50_ms:7.3f} mean {mean:7.3f} bg {m.background_throughput_rps or 0:5.1f}", flush=True)
finally:
    for s in servers.values(): s.stop()
print(f"\ndelay in 10 ms jobs, rate {rate}")
for label, r in res.items():
    closed = [(u[1] - a[1]) / 10 for u, a in zip(r["under"], r["alone"])]
    opn = [(u[1] - a[1]) / 10 for u, a in zip(r["open_under"], r["open_alone"])]
    p50o = [u[0] for u in r["open_under"]]
    print(f"{label:10} closed median {statistics.median(closed):.2f} {[round(x,2) for x in closed]} | open median {statistics.median(opn):.2f} {[round(x,2) for x in opn]} open p50 {[round(x,2) for x in p50o]}")
