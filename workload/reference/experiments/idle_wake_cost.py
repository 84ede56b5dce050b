#!/usr/bin/env python3
"""CPU per /hello on a kept-alive connection when the loop was idle before it (session 8): one
client sends GET /hello, reads the answer, then waits GAP before the next, for GAP = 0 (back to
back, the loop idle only for the round trip) and GAP = 1 ms and 20 ms; the server's CPU (all
threads, from /proc/<pid>/task/*/schedstat) over the requests, minus its idle CPU over the same
time, per request. A runtime whose cost per request grows with the idle time before it pays a
cost for waking up cold that a burn of fixed CPU time does not model. The emulation runs with
the overheads calibration-latest.json used and its working set (`calibration.experiment_knobs`).

    workload/reference/experiments/idle_wake_cost.py [IMPLEMENTATION ...]

Needs a release build and `workload/reference/install`.
"""
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as cal  # noqa: E402
from keep_alive import get  # noqa: E402
from server_cpu import cpu_us, server_pids  # noqa: E402

GAPS = ((0.0, 3000), (0.001, 1000), (0.02, 150))
"""(seconds between an answer and the next request, requests)."""
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def idle_rate(pids: list[int]) -> float:
    """The server's CPU in us per second when nothing arrives."""
    before, start = cpu_us(pids), time.monotonic()
    time.sleep(1.0)
    return (cpu_us(pids) - before) / (time.monotonic() - start)


impls = sys.argv[1:] or ["fastapi", "emulated-thread-pool", "express", "emulated-event-loop"]
latest = cal.experiment_knobs()
results = {impl: {gap: [] for gap, _ in GAPS} for impl in impls}
latency = {impl: {gap: [] for gap, _ in GAPS} for impl in impls}
with tempfile.TemporaryDirectory() as tmp:
    settings = cal.Settings(warmup=1.0, duration=2.0, repetitions=1, work_dir=Path(tmp),
                            load_bin=cal.find_workload_bin(None), prime=5.0, verbose=False)
    with cal.ServerPool(settings) as pool:
        servers = {impl: pool.start(impl, 1, latest) for impl in impls}
        for round_ in range(ROUNDS):
            for gap, n in GAPS:
                for impl, server in servers.items():
                    pids = server_pids(server.proc.pid)
                    background = idle_rate(pids)
                    conn = socket.create_connection(("127.0.0.1", server.port))
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for _ in range(20):
                        get(conn)
                    time.sleep(0.05)
                    before, start = cpu_us(pids), time.monotonic()
                    times = []
                    for _ in range(n):
                        if gap:
                            time.sleep(gap)
                        sent = time.perf_counter()
                        get(conn)
                        times.append(time.perf_counter() - sent)
                    used = cpu_us(pids) - before - background * (time.monotonic() - start)
                    conn.close()
                    results[impl][gap].append(used / n)
                    latency[impl][gap].append(statistics.median(times) * 1e6)
                    print(f"round {round_} {impl:22} gap {gap * 1000:4.0f} ms: {used / n:6.0f} us per request,"
                          f" median latency {latency[impl][gap][-1]:6.0f} us (idle {background:.0f} us/s)", flush=True)
print("\nmedian over rounds, us of server CPU per /hello / the client's median latency in us:")
for impl in impls:
    cells = [
        f"gap {gap * 1000:.0f} ms {statistics.median(results[impl][gap]):6.0f} / {statistics.median(latency[impl][gap]):6.0f}"
        for gap, _ in GAPS
    ]
    print(f"{impl:22} " + ", ".join(cells))
