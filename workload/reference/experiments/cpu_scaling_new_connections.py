#!/usr/bin/env python3
"""Is `cpu_scaling_2p_over_1p` stable with kept-alive connections, and with a new connection per
request? /cpu?ms=10 at 8 in flight (calibrate's CPU scenarios) on 1 and 2 processes, both ways,
for the four implementations; the servers are started once and reused for every repetition, as in
calibrate, the emulation at the latest calibration's knobs. Prints each repetition's throughput
and, per implementation and connection mode, the 2-process / 1-process ratios.

    REPS=6 workload/reference/experiments/cpu_scaling_new_connections.py

Needs a release build and `workload/reference/install`. Session 14 (20:24-20:33 UTC, quiet
machine, REPS=6): 2p/1p ratios per repetition

    fastapi               kept alive 1.98 1.93 2.01 1.99 1.98 1.97   new connection 2.05 1.98 1.99 2.01 2.03 2.01
    emulated-thread-pool  kept alive 1.96 1.91 1.00 1.95 1.98 1.89   new connection 1.89 1.95 1.93 1.88 1.92 1.94
    express               kept alive 1.90 1.88 1.94 1.94 1.96 1.92   new connection 1.83 1.85 1.90 1.87 1.89 1.92
    emulated-event-loop   kept alive 1.95 1.93 1.97 2.00 1.93 1.94   new connection 1.89 1.94 1.91 1.93 1.94 1.94

One kept-alive repetition of 24 collapsed (all 8 connections on one worker: 1.00), none of 24 with
a new connection per request; the 1-process throughput is 1-5% lower with new connections
(FastAPI 92.4 -> 88.2 req/s). Calibrate's CPU scenarios open a new connection per request since
version 10 (`calibration.CPU_SCENARIOS_KEEP_ALIVE`).
"""
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as cal  # noqa: E402

reps = int(os.environ.get("REPS", "6"))
implementations = ["fastapi", "emulated-thread-pool", "express", "emulated-event-loop"]
knobs = cal.experiment_knobs()
by_name = {s.name: s for s in cal.SCENARIOS}
scenarios = {
    (processes, keep_alive): replace(
        by_name[f"cpu_p{processes}"], name=f"cpu_p{processes}_{'kept' if keep_alive else 'new'}", keep_alive=keep_alive
    )
    for keep_alive in (True, False)
    for processes in (1, 2)
}
with tempfile.TemporaryDirectory() as tmp:
    settings = cal.Settings(warmup=1.0, duration=4.0, repetitions=reps, work_dir=Path(tmp),
                            load_bin=cal.find_workload_bin(None), prime=3.0, verbose=False)
    rps = {impl: {key: [] for key in scenarios} for impl in implementations}
    with cal.ServerPool(settings) as pool:
        for impl in implementations:
            for processes in (1, 2):
                pool.start(impl, processes, knobs)
        for rep in range(reps):
            for impl in implementations:
                for key, scenario in scenarios.items():
                    m = cal.run_scenario(settings, pool.servers[(impl, key[0])], scenario, rep)
                    rps[impl][key].append(m.throughput_rps)
                    print(f"rep {rep} {impl:22} {scenario.name:12} {m.throughput_rps:7.1f} req/s, {m.errors} errors", flush=True)
    print()
    for impl in implementations:
        for keep_alive in (True, False):
            ratios = [two / one for two, one in zip(rps[impl][(2, keep_alive)], rps[impl][(1, keep_alive)])]
            mode = "kept alive" if keep_alive else "new connection"
            print(f"{impl:22} {mode:14} 2p/1p median {statistics.median(ratios):.2f}: "
                  + " ".join(f"{r:.2f}" for r in ratios)
                  + f"; 1 process {statistics.median(rps[impl][(1, keep_alive)]):.1f} req/s")
