#!/usr/bin/env python3
"""What does a request that waits cost the loop more than one that answers at once, and does it
depend on how many wait and for how long? Loop CPU per request of /hello and /io at 32 and 256 in
flight, 1 ms and 50 ms timers, on the four implementations (the emulation at the overheads
calibration-latest.json used), each scenario on the four in turn, REPETITIONS times (2 s each).

    workload/reference/experiments/io_premium_by_concurrency.py [REPETITIONS]

Needs a release build and `workload/reference/install`.

Session 7 (2026-11-27 00:31-00:40 UTC, 5 repetitions, overheads of session 6's latest run:
event-loop 148/0/189, thread-pool 138/68/93 us), median loop CPU per request in us:

| scenario | Express | emulated event-loop | FastAPI | emulated thread-pool |
|---|---:|---:|---:|---:|
| /hello, 32 in flight | 245 | 192 | 251 | 187 |
| /io?ms=1, 32 in flight | 269 | 180 | 361 | 272 |
| /io?ms=1, 256 in flight | 297 | 191 | 434 | 295 |
| /io?ms=50, 256 in flight | 311 | 200 | 508 | 289 |
| /hello, 256 in flight | 264 | 196 | 262 | 192 |

What /io costs more than /hello at 32 in flight: FastAPI +110 us at /io?ms=1 and 32 in flight,
+183 at 256, +257 with 50 ms timers at 256; Express +24, +52, +65. The emulation's own premium
(its figures minus the resume overhead it ran with) moved by 20 us (event-loop) and 23 us
(thread-pool). So a resume overhead fitted at /io?ms=1 and 32 in flight, as calibrate did up to
version 4, is too small for the /io metric's scenario (/io?ms=50 at 256 in flight). The machine
was slow during this run (real /hello 245-251 us against 170-190 in session 6's best runs), which
moves the real columns against the emulated ones but not the differences within a column.
"""
import json
import statistics
import sys
import tempfile
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as cal  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
impls = ["express", "emulated-event-loop", "fastapi", "emulated-thread-pool"]
latest = json.loads(cal.LATEST.read_text())["used_overhead_us"]
scenarios = [
    cal.Scenario(name, 1, path, concurrency, measure_cpu=True)
    for name, path, concurrency in (
        ("/hello, 32 in flight", "/hello", 32),
        ("/io?ms=1, 32 in flight", "/io?ms=1", 32),
        ("/io?ms=1, 256 in flight", "/io?ms=1", 256),
        ("/io?ms=50, 256 in flight", "/io?ms=50", 256),
        ("/hello, 256 in flight", "/hello", 256),
    )
]
costs: dict[tuple[str, str], list[float]] = {}
with tempfile.TemporaryDirectory() as tmp:
    settings = cal.Settings(warmup=1.0, duration=2.0, repetitions=1, work_dir=Path(tmp),
                            load_bin=cal.find_workload_bin(None), prime=5.0, verbose=False)
    with cal.ServerPool(settings) as pool:
        for impl in impls:
            pool.start(impl, 1, latest)
        for rep in range(reps):
            for scenario in scenarios:
                for impl in impls:
                    m = cal.run_scenario(settings, pool.servers[(impl, 1)], scenario, rep)
                    costs.setdefault((impl, scenario.name), []).append(m.loop_cpu_us_per_request)
                    print(f"rep {rep + 1} {impl:22} {scenario.name:26} {m.throughput_rps:8.0f} req/s"
                          f"  loop CPU {m.loop_cpu_us_per_request:6.1f} us/req", flush=True)
print()
print("| scenario | " + " | ".join(impls) + " |")
print("|---|" + "---:|" * len(impls))
for scenario in scenarios:
    cells = [f"{statistics.median(costs[(impl, scenario.name)]):.0f}" for impl in impls]
    print(f"| {scenario.name} | " + " | ".join(cells) + " |")
