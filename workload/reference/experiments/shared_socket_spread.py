#!/usr/bin/env python3
"""Does a shared socket spread 8 new connections over 2 workers? /cpu?ms=10 at 8 in flight on 2
processes (calibrate's cpu_p2 scenario), each repetition on a freshly started and primed server,
for real FastAPI (uvicorn --workers 2) and the emulated thread-pool mode with and without
LOOPSCALE_CONNECTION_OVERHEAD_US. One worker taking all 8 connections gives the 1-process
throughput (about 95 req/s); a spread gives about twice that.

    workload/reference/experiments/shared_socket_spread.py [REPETITIONS] [CONNECTION_US ...]

Needs a release build and `workload/reference/install`. The emulation's request and resume
overheads are those calibration-latest.json used, its working set `calibration.experiment_knobs`'s.
"""
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as cal  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 6
connection_us = [int(a) for a in sys.argv[2:]] or [0, 90]
latest = cal.experiment_knobs()["thread-pool"]
variants = [("fastapi", None)] + [
    ("emulated-thread-pool", {**latest, "connection_us": c}) for c in connection_us
]
# Kept-alive connections, as calibrate's cpu_p2 had them up to version 9.
scenario = replace(next(s for s in cal.SCENARIOS if s.name == "cpu_p2"), keep_alive=True)
with tempfile.TemporaryDirectory() as tmp:
    settings = cal.Settings(warmup=1.0, duration=3.0, repetitions=1, work_dir=Path(tmp),
                            load_bin=cal.find_workload_bin(None), prime=3.0, verbose=False)
    results = {i: [] for i in range(len(variants))}
    for rep in range(reps):
        for i, (impl, overhead) in enumerate(variants):
            with cal.ServerPool(settings) as pool:
                server = pool.start(impl, 2, {"thread-pool": overhead} if overhead else None)
                m = cal.run_scenario(settings, server, scenario, rep)
            results[i].append(m.throughput_rps)
            print(f"rep {rep + 1} {impl} {overhead or ''}: {m.throughput_rps:.1f} req/s", flush=True)
    print()
    for i, (impl, overhead) in enumerate(variants):
        rps = results[i]
        spread = sum(1 for r in rps if r > 1.5 * 95)
        label = impl if overhead is None else f"{impl}, connection {overhead['connection_us']} us"
        print(f"{label}: median {statistics.median(rps):.1f} req/s, spread in {spread} of {len(rps)}: "
              + ", ".join(f"{r:.0f}" for r in rps))
