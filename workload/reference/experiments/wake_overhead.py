"""Whether a loop wake has a cost of its own (session 8): loop CPU per /hello at 32 and at 1 in
flight (a cost per wake shows as the gap, paid by nearly every request at 1 in flight and shared
at 32), and the GIL convoy's slowdown (/hello's mean latency under 4 x /cpu?ms=10 over alone), on
real FastAPI or Express and on emulation variants given as JSON {label: {env}}; the label
"fastapi" or "express" is the real server, any other label an emulated server of MODE
(thread-pool unless MODE=event-loop). The variants take turns scenario by scenario within each
repetition, and every figure compared is taken within a repetition, then the median. Needs a
release build and workload/reference/install; autogroup nice -10 needs root.
LOOPSCALE_WAKE_OVERHEAD_US exists only with `git apply
workload/reference/experiments/wake-overhead.patch` (the prototype, not adopted: see ../README.md,
"Session 8").

    REPS=4 workload/reference/fastapi/.venv/bin/python workload/reference/experiments/wake_overhead.py \\
      '{"fastapi": {}, "wake0": {"LOOPSCALE_REQUEST_OVERHEAD_US": "126"}, "wake40": {"LOOPSCALE_REQUEST_OVERHEAD_US": "126", "LOOPSCALE_WAKE_OVERHEAD_US": "40"}}'
"""
import json, os, sys, statistics
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as c
import reference_servers as rs

reps = int(os.environ.get("REPS", "4"))
mode = os.environ.get("MODE", "thread-pool")
configs = json.loads(sys.argv[1])
work = Path(os.environ.get("WORK_DIR", "/tmp/wake-overhead")); work.mkdir(parents=True, exist_ok=True)
binp = REFERENCE.parents[1] / "target" / "release" / "loopscale-workload"
settings = c.Settings(warmup=1.0, duration=float(os.environ.get("DUR", "3")), repetitions=reps,
                      work_dir=work, load_bin=binp, prime=3.0, nice=-10)
rs.set_autogroup_nice(os.getpid(), -10)
servers = {}
for label, env in configs.items():
    name = label if label in ("fastapi", "express") else f"emulated-{mode}"
    servers[label] = rs.start(name, 1, work, binp, env, autogroup_nice=-10)
    c.ServerPool(settings).prime(servers[label])
scenarios = {
    "hello_32": c.Scenario("hello_cost", 1, "/hello", 32, measure_cpu=True),
    "hello_1": c.Scenario("hello_alone", 1, "/hello", 1, measure_cpu=True),
    "under_cpu": c.Scenario("hello_under_cpu", 1, "/hello", 1, "/cpu?ms=10", 4),
}
res = {label: {k: [] for k in scenarios} for label in configs}
try:
    for rep in range(reps):
        for key, sc in scenarios.items():
            for label, s in servers.items():
                m = c.run_scenario(settings, s, sc, rep)
                res[label][key].append(m)
                print(f"{label:10} {key:10} rep{rep} mean {m.mean_ms:7.3f} ms p50 {m.p50_ms:7.3f} "
                      f"loop/req {m.loop_cpu_us_per_request or 0:6.1f} us rps {m.throughput_rps:8.1f}", flush=True)
finally:
    for s in servers.values():
        s.stop()


def per_rep(label, f):
    return [f(*ms) for ms in zip(*(res[label][k] for k in scenarios))]


print("\nSUMMARY (medians of per-repetition figures)")
real = next((l for l in configs if l in ("fastapi", "express")), None)
for label in configs:
    loop32 = per_rep(label, lambda h32, h1, u: h32.loop_cpu_us_per_request)
    loop1 = per_rep(label, lambda h32, h1, u: h1.loop_cpu_us_per_request)
    gap = [a - b for a, b in zip(loop1, loop32)]
    slow = per_rep(label, lambda h32, h1, u: u.mean_ms / h1.mean_ms)
    line = (f"{label:10} loop/req @32 {statistics.median(loop32):6.1f} @1 {statistics.median(loop1):6.1f} "
            f"gap {statistics.median(gap):+6.1f} {[round(g) for g in gap]} | alone {statistics.median([m.mean_ms for m in res[label]['hello_1']]):.3f} ms "
            f"under {statistics.median([m.mean_ms for m in res[label]['under_cpu']]):.2f} ms slowdown {statistics.median(slow):5.1f}")
    if real and label != real:
        rslow = per_rep(real, lambda h32, h1, u: u.mean_ms / h1.mean_ms)
        ratio = [e / r for e, r in zip(slow, rslow)]
        line += f" | / {real}: {statistics.median(ratio):.2f} {[round(x, 2) for x in ratio]}"
    print(line)
