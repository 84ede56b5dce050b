#!/usr/bin/env python3
"""CPU per connection when connections arrive one at a time at an idle server, as the load
generator's 8 connections do at the start of calibrate's cpu_p2 (there ~400 us apart): on a
primed 1-process server, BURSTS times: 8 connections opened 20 ms apart (no request sent, kept
open, then closed), the server's CPU (all threads, from /proc/<pid>/task/*/schedstat) over each
20 ms, minus the median over 20 ms windows in which nothing connects (the emulation's lag probe
and metrics wake it when idle; the real runtimes hardly wake). The emulation runs with the
overheads calibration-latest.json used.

    workload/reference/experiments/connection_burst_cost.py [BURSTS] [IMPLEMENTATION ...]

Needs a release build and `workload/reference/install`. Express counts its cluster primary too:
it accepts every connection and hands it to the worker over IPC.

Session 7 (2026-11-27 01:08 UTC, 6 bursts, the emulation at calibration-latest.json's overheads:
thread-pool 90 us per connection, event-loop 295), median CPU per connection:

| implementation | per connection (p10-p90) | idle, per 20 ms |
|---|---|---|
| real FastAPI (uvicorn) | 347 us (266-547) | 0 |
| emulated thread-pool | 193 us (112-246) | 124 us |
| real Express (primary + worker) | 1,233 us (1,021-1,449) | 0 |
| emulated event-loop | 462 us (400-511) | 106 us |

uvicorn spends 84-101 us more per request on a new connection than on a kept-alive one when
connections come and go at 32 in flight (calibrate's connection_cost), but about 350 us per
connection that arrives at an idle loop: each one is a loop turn of its own (uvloop's wake, one
accept4, the protocol and its timeout handle built in Python). The emulation pays its 90 us and
its own accept and wake, about 190 us. That difference is why uvicorn's worker is still busy
when the next of cpu_p2's connections arrives and the emulation's is not
(shared_socket_trace.py). Idle, the emulation's processes use 106-124 us of CPU per 20 ms (its
loop-lag probe fires every 10 ms; not broken down further); the real runtimes' use none.
"""
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as cal  # noqa: E402
from server_cpu import cpu_us, server_pids  # noqa: E402

WINDOW = 0.02


def window(pids: list[int], port: int | None) -> tuple[float, socket.socket | None]:
    before = cpu_us(pids)
    conn = socket.create_connection(("127.0.0.1", port)) if port else None
    time.sleep(WINDOW)
    return cpu_us(pids) - before, conn


bursts = int(sys.argv[1]) if len(sys.argv) > 1 else 6
impls = sys.argv[2:] or ["fastapi", "emulated-thread-pool", "express", "emulated-event-loop"]
latest = json.loads(cal.LATEST.read_text())["used_overhead_us"]
with tempfile.TemporaryDirectory() as tmp:
    settings = cal.Settings(warmup=1.0, duration=2.0, repetitions=1, work_dir=Path(tmp),
                            load_bin=cal.find_workload_bin(None), prime=5.0, verbose=False)
    with cal.ServerPool(settings) as pool:
        for impl in impls:
            server = pool.start(impl, 1, latest)
            pids = server_pids(server.proc.pid)
            idle, connected = [], []
            for _ in range(bursts):
                time.sleep(0.5)
                idle += [window(pids, None)[0] for _ in range(8)]
                socks = []
                for _ in range(8):
                    used, conn = window(pids, server.port)
                    connected.append(used)
                    socks.append(conn)
                for conn in socks:
                    conn.close()
            background = statistics.median(idle)
            net = [c - background for c in connected]
            q = statistics.quantiles(net, n=10)
            print(f"{impl:22} {statistics.median(net):6.0f} us per connection (p10 {q[0]:.0f}, p90 {q[-1]:.0f});"
                  f" idle {background:.0f} us per {WINDOW * 1000:.0f} ms", flush=True)
