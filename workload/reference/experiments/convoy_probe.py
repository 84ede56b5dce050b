"""The convoy probe behind session 4's model change (see ../README.md, "Two loop callbacks per
request") and session 10's ("Session 10"): /hello alone and under 4 x /cpu?ms=10 (mean and p50),
and loop CPU per /hello and /io?ms=1, on real FastAPI and on emulation variants given as JSON
{label: {env}}; the label "fastapi" is the real server, and each emulation variant starts from the
latest calibration's knobs (`calibration.experiment_knobs()`) with its env on top. Repetitions
interleave the variants. The summary gives each variant's `hello_delay_under_cpu` (the mean
latency /hello gains under /cpu, in 10 ms jobs) per repetition and its median, and for the
emulation variants the ratio to FastAPI's: of the medians (as `calibrate` compares) and the median
of the per-repetition ratios. CONVOY_ONLY=1 skips the two CPU-cost scenarios. Needs a release
build and the reference venv; autogroup nice -10 needs root.

    REPS=5 workload/reference/fastapi/.venv/bin/python workload/reference/experiments/convoy_probe.py \
      '{"fastapi": {}, "two-callbacks": {"LOOPSCALE_REQUEST_OVERHEAD_US": "205", "LOOPSCALE_RESUME_OVERHEAD_US": "72"}}'
    # session 10's sweep of the share after the answer (needs experiments/after-answer-share-env.patch):
    CONVOY_ONLY=1 REPS=6 DUR=4 workload/reference/fastapi/.venv/bin/python workload/reference/experiments/convoy_probe.py \
      '{"fastapi": {}, "0.27": {"XP_TP_AFTER_ANSWER_SHARE": "0.27"}, "0.35": {"XP_TP_AFTER_ANSWER_SHARE": "0.35"}}'
"""
import json, os, sys, statistics
from pathlib import Path
REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as c
import reference_servers as rs

reps = int(os.environ.get("REPS", "5"))
configs = json.loads(sys.argv[1])  # {"label": {"ENV": "v", ...}, ...}; label "fastapi" = real
work = Path(os.environ.get("WORK_DIR", "/tmp/convoy-probe")); work.mkdir(parents=True, exist_ok=True)
binp = REFERENCE.parents[1] / "target" / "release" / "loopscale-workload"
settings = c.Settings(warmup=1.0, duration=float(os.environ.get("DUR", "3")), repetitions=reps, work_dir=work, load_bin=binp, prime=3.0, nice=-10)
rs.set_autogroup_nice(os.getpid(), -10)
servers = {}
for label, env in configs.items():
    name = "fastapi" if label == "fastapi" else "emulated-thread-pool"
    if name != "fastapi":
        env = {**c.overhead_env(c.experiment_knobs()["thread-pool"]), **env}
    s = rs.start(name, 1, work, binp, env, autogroup_nice=-10)
    servers[label] = s
    c.ServerPool(settings).prime(s)
scen = {
    "hello_cost": c.Scenario("hello_cost", 1, "/hello", 32, measure_cpu=True),
    "io_cost": c.Scenario("io_cost", 1, "/io?ms=1", 32, measure_cpu=True),
    "hello_alone": c.Scenario("hello_alone", 1, "/hello", 1),
    "hello_under_cpu": c.Scenario("hello_under_cpu", 1, "/hello", 1, "/cpu?ms=10", 4),
}
if os.environ.get("CONVOY_ONLY"):
    del scen["hello_cost"], scen["io_cost"]
res = {l: {k: [] for k in scen} for l in configs}
try:
    for rep in range(reps):
        for k, sc in scen.items():
            for label, s in servers.items():
                m = c.run_scenario(settings, s, sc, rep)
                mean = m.mean_ms
                res[label][k].append((m.p50_ms, mean, m.loop_cpu_us_per_request, m.background_throughput_rps))
                print(f"{label:10} {k:16} rep{rep} p50 {m.p50_ms:7.3f} mean {mean:7.3f} loop/req {m.loop_cpu_us_per_request or 0:6.1f} bg {m.background_throughput_rps or 0:5.1f}", flush=True)
finally:
    for s in servers.values(): s.stop()
print("\nSUMMARY (medians over reps)")
for label, r in res.items():
    med = lambda k, i: statistics.median([x[i] for x in r.get(k, []) if x[i] is not None] or [0])
    slow_mean = [u[1] / a[1] for u, a in zip(r["hello_under_cpu"], r["hello_alone"])]
    slow_p50 = [u[0] / a[0] for u, a in zip(r["hello_under_cpu"], r["hello_alone"])]
    print(f"{label:10} hello loop {med('hello_cost',2):6.1f} io loop {med('io_cost',2):6.1f} | alone mean {med('hello_alone',1):.3f} p50 {med('hello_alone',0):.3f} | under mean {med('hello_under_cpu',1):.2f} p50 {med('hello_under_cpu',0):.2f} bg {med('hello_under_cpu',3):.1f} | slowdown mean {statistics.median(slow_mean):.1f} {[round(x,1) for x in slow_mean]} p50 {statistics.median(slow_p50):.1f} {[round(x,1) for x in slow_p50]}")

print("\nhello_delay_under_cpu (jobs of 10 ms)")
delay = {label: [(u[1] - a[1]) / 10 for u, a in zip(r["hello_under_cpu"], r["hello_alone"])] for label, r in res.items()}
for label, d in delay.items():
    line = f"{label:10} median {statistics.median(d):.2f} {[round(x, 2) for x in d]}"
    if label != "fastapi" and "fastapi" in delay:
        real = delay["fastapi"]
        paired = statistics.median(x / y for x, y in zip(d, real))
        line += f" | emulation/real: of the medians {statistics.median(d) / statistics.median(real):.2f}, per repetition {paired:.2f}"
    print(line)
