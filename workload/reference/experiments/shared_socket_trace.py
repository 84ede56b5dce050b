#!/usr/bin/env python3
"""Which worker accepts each of cpu_p2's 8 connections, and when? As calibrate runs it: one
2-process server started and primed once, cpu_p1 on a 1-process server between repetitions, then
cpu_p2 (/cpu?ms=10, 8 in flight, 3 s) with `perf trace` recording accept4, epoll_wait,
epoll_pwait and futex on the 2-process server's workers. Writes one trace per repetition
(`shared-socket-trace-N.txt` in the current directory) and prints each repetition's throughput:
about 95 req/s means one worker took all 8 connections.

    workload/reference/experiments/shared_socket_trace.py [REPETITIONS] [IMPLEMENTATION]
    grep accept4 shared-socket-trace-N.txt

Needs root (perf trace), a release build and `workload/reference/install`. The emulation runs
with the overheads calibration-latest.json used. perf trace slows every traced syscall, so
throughputs are lower than calibrate's.

Session 7 (2026-11-27 00:05-00:12 UTC), the emulated thread-pool mode (93 us per connection):
the 8 connections reach the server 370-440 us apart (the load generator's one thread connects
them in turn, and on 2 cores the woken server threads delay it); every connection wakes both
workers, and the same worker won the accept4 race 8 times of 8 in the repetition that gave
86 req/s, 7 of 8 in another (the other worker's accept4 returned EAGAIN within 7 us); after each
accept the winner was back in epoll_wait about 200 us later, before the next connection came.
Real uvicorn (uvloop: one accept4 per loop turn, no EAGAIN) was busy 330-400 us after each accept
before its next epoll_pwait, so the next connection found it busy and the other worker took it:
the two workers alternated. connection_burst_cost.py measures that cost.
"""
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as cal  # noqa: E402

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 8
impl = sys.argv[2] if len(sys.argv) > 2 else "emulated-thread-pool"
latest = json.loads(cal.LATEST.read_text())["used_overhead_us"]
# Kept-alive connections, as calibrate's CPU scenarios had them up to version 9.
cpu_p1 = replace(next(s for s in cal.SCENARIOS if s.name == "cpu_p1"), keep_alive=True)
cpu_p2 = replace(next(s for s in cal.SCENARIOS if s.name == "cpu_p2"), keep_alive=True)
with tempfile.TemporaryDirectory() as tmp:
    settings = cal.Settings(warmup=1.0, duration=3.0, repetitions=1, work_dir=Path(tmp),
                            load_bin=cal.find_workload_bin(None), prime=5.0, verbose=False)
    with cal.ServerPool(settings) as pool:
        pool.start(impl, 1, latest)
        two = pool.start(impl, 2, latest)
        workers = subprocess.run(["pgrep", "-P", str(two.proc.pid)], capture_output=True, text=True).stdout.split()
        print("workers", workers, flush=True)
        for rep in range(reps):
            cal.run_scenario(settings, pool.servers[(impl, 1)], cpu_p1, rep)
            out = Path(f"shared-socket-trace-{rep}.txt").resolve()
            trace = subprocess.Popen(
                ["perf", "trace", "-o", str(out), "-e", "accept4,epoll_wait,epoll_pwait,futex", "-p", ",".join(workers)],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            m = cal.run_scenario(settings, two, cpu_p2, rep)
            trace.send_signal(signal.SIGINT)
            trace.wait()
            print(f"rep {rep + 1}: {m.throughput_rps:.1f} req/s, trace {out}", flush=True)
