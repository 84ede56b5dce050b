#!/usr/bin/env python3
"""How the loop thread hands the GIL over under the convoy, on real FastAPI and on the emulation
(session 10; see ../README.md, "Session 10").

Builds `gil_hold_trace.c` (an LD_PRELOAD tracer), starts one implementation with 1 process and
the tracer, primes it, and runs `/hello` at 1 in flight while 4 `/cpu?ms=10` run (the
`hello_delay_under_cpu` scenario, DUR seconds, default 8). From the trace of the measured window
it prints, for the `/hello` connection:

- the bursts: the share of answers that came less than 1 ms after the previous one, and how many
  such fast answers follow each slow one (a loop that keeps the GIL answers `/hello` after
  `/hello` while the pool threads wait; one that loses it waits whole switch intervals);
- from the answer's last write to the loop thread's next GIL release, and to its next poll for
  I/O (`epoll_wait`), p25/p50/p75 in µs (the release that follows the answer: while the loop
  holds the GIL, the client's next request can arrive and be read before a pool thread wins it);
- FastAPI only: the loop's `with gil` sections per answer in those fast runs (uvloop's callbacks),
  and the loop thread's CPU time between its release and its next poll.

    workload/reference/experiments/gil_hold_trace.py fastapi
    workload/reference/experiments/gil_hold_trace.py emulated-thread-pool [ENV=VALUE ...]

The emulation starts with `calibration.experiment_knobs()` (the latest calibration's overheads and
working set) plus the given variables. Needs gcc, the reference servers installed
(workload/reference/install) and a release build of loopscale-workload.

Session 10, 10:00-10:45 UTC, this project's 2-core machine, 8 s windows (FastAPI / the emulation
/ the emulation with `thread-pool-work-after-answer.patch`, not adopted): fast answers 52-93% in
the runs traced / 46-51% in three runs, 82-93% in three / 51%; last write to GIL release p50 13.8 and 19.0 µs / 1.5 / 21.0; uvloop's
`with gil` sections per fast answer 4 in 79% (two of them hold it under a microsecond); GIL
release to next poll p50 6.4 µs of wall time, 6.0 of loop-thread CPU.
"""

from __future__ import annotations

import bisect
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import calibration as cal  # noqa: E402
import reference_servers as rs  # noqa: E402

WAIT_SIGNALLED, WAIT_TIMED_OUT, WRITE, FUTEX_WOKE, EPOLL_ENTER, READ = 0, 110, 1000, 3000, 4000, 5000
GIL_ENSURE, GIL_RELEASE = 2001, 2003
FAST_MS = 1.0


def read_trace(path: Path, lo: int, hi: int) -> tuple[int, list[tuple[int, int, int, int, int]]]:
    data = path.read_bytes()
    pid = struct.unpack_from("i", data)[0]
    events = [struct.unpack_from("iiQQQ", data, 4 + i * 32) for i in range((len(data) - 4) // 32)]
    return pid, sorted((e for e in events if lo <= e[3] <= hi), key=lambda e: e[3])


def quartiles(values: list[float]) -> str:
    v = sorted(values)
    if not v:
        return "none"
    return "/".join(f"{v[int(p * (len(v) - 1))]:.1f}" for p in (0.25, 0.5, 0.75))


def analyse(pid: int, events: list) -> None:
    loop = [e for e in events if e[0] == pid]
    writes = Counter(e[2] for e in loop if e[1] == WRITE and e[4] > 8)
    if not writes:
        print("no answers traced")
        return
    hello_fd = writes.most_common(1)[0][0]
    w = [e[3] for e in loop if e[1] == WRITE and e[2] == hello_fd]
    # An answer may take several writes (uvicorn: head, then body); its end is its last one.
    answers = [t for t, nxt in zip(w, w[1:] + [1 << 62]) if nxt - t > 50_000]
    gaps = [(b - a) / 1e6 for a, b in zip(answers, answers[1:])]
    fast = [g < FAST_MS for g in gaps]
    runs, k = [], 0
    for f in fast:
        if f:
            k += 1
        else:
            runs.append(k)
            k = 0
    print(
        f"answers {len(answers)}: fast (< {FAST_MS:g} ms after the previous) {sum(fast) / max(1, len(fast)):.0%},"
        f" fast answers per slow one {statistics.mean(runs) if runs else float('nan'):.2f}"
    )
    gil_cond = Counter(e[2] for e in events if e[1] == WAIT_TIMED_OUT).most_common(1)
    real = any(e[1] == GIL_RELEASE for e in loop)
    if real:
        releases = [e for e in loop if e[1] == GIL_RELEASE]
    elif gil_cond:
        releases = [e for e in loop if e[1] == FUTEX_WOKE and e[2] == gil_cond[0][0]]
    else:
        releases = []
    polls = [e for e in loop if e[1] == EPOLL_ENTER]
    rt, pt = [e[3] for e in releases], [e[3] for e in polls]
    to_release, to_poll, gap_wall, gap_cpu = [], [], [], []
    for a in answers:
        i, j = bisect.bisect(rt, a), bisect.bisect(pt, a)
        if i < len(rt) and rt[i] - a < 200_000:
            to_release.append((rt[i] - a) / 1e3)
        if j < len(pt) and pt[j] - a < 200_000:
            to_poll.append((pt[j] - a) / 1e3)
            if real and i < len(rt) and rt[i] < pt[j]:
                gap_wall.append((pt[j] - rt[i]) / 1e3)
                gap_cpu.append((polls[j][4] - releases[i][4]) / 1e3)
    print(f"last write -> GIL release p25/p50/p75 {quartiles(to_release)} us; -> next poll {quartiles(to_poll)} us")
    if real:
        print(f"GIL release -> next poll: wall {quartiles(gap_wall)} us, loop-thread CPU {quartiles(gap_cpu)} us")
        ensures = [e[3] for e in loop if e[1] == GIL_ENSURE]
        per = [
            bisect.bisect(ensures, b) - bisect.bisect(ensures, a)
            for a, b in zip(answers, answers[1:])
            if (b - a) / 1e6 < FAST_MS
        ]
        c = Counter(per)
        print(f"`with gil` sections per fast answer: {dict(sorted(c.most_common(4)))}")


def traced_processes(
    impl: str, extra: dict[str, str], scenario: cal.Scenario, duration: float, prefix: str, trace_load: bool = False
) -> tuple[cal.Measurement, dict, dict[int, list]]:
    """Runs `scenario` once on `impl` (1 process) with the tracer preloaded, after priming it; the
    emulation starts with the latest calibration's knobs plus `extra`. With `trace_load` the load
    generators carry the tracer too (they share the server's clock). Returns the measurement,
    the load report's summary, and each traced process's events of the measured window (from the
    main load's warm-up end to its end, less half a second each side), by pid, the largest trace
    first."""
    cal.check_installed()
    load_bin = cal.find_workload_bin(None)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    tracer = work / "gil_hold_trace.so"
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-o", str(tracer), str(HERE / "gil_hold_trace.c"), "-ldl", "-lpthread"],
        check=True,
    )
    preload = {"LD_PRELOAD": str(tracer), "GIL_TRACE_DIR": str(work)}
    env = dict(preload)
    if impl in cal.MODE_OF:
        env.update(cal.overhead_env(cal.experiment_knobs()[cal.MODE_OF[impl]]))
    env.update(extra)
    settings = cal.Settings(warmup=1.0, duration=duration, repetitions=1, work_dir=work, load_bin=load_bin, prime=3.0)
    server = rs.start(impl, 1, work, load_bin, env)
    try:
        cal.ServerPool(settings).prime(server)
        started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        m = cal.run_scenario(settings, server, scenario, 0, load_env=preload if trace_load else None)
        ended = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        time.sleep(1.5)  # the tracer writes its log once a second
    finally:
        server.stop()
    summary = cal.read_report(work / f"{server.name}-{scenario.name}-r0.json")["summary"]
    lo, hi = started + int((settings.warmup + 1.0) * 1e9), ended - 500_000_000
    traces = sorted((p for p in work.glob("trace.*.bin") if p.stat().st_size > 4), key=lambda p: -p.stat().st_size)
    return m, summary, dict(read_trace(path, lo, hi) for path in traces)


def traced_run(
    impl: str, extra: dict[str, str], scenario: cal.Scenario, duration: float, prefix: str
) -> tuple[cal.Measurement, dict, int, list]:
    """`traced_processes` with only the server traced: the measurement, the load report's
    summary, and the traced server's pid and events of the measured window."""
    m, summary, traces = traced_processes(impl, extra, scenario, duration, prefix)
    pid = next(iter(traces))
    return m, summary, pid, traces[pid]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("fastapi", "emulated-thread-pool"):
        print(__doc__, file=sys.stderr)
        return 2
    impl, extra = argv[0], dict(a.split("=", 1) for a in argv[1:])
    scenario = cal.Scenario("hello_under_cpu", 1, "/hello", 1, "/cpu?ms=10", 4)
    m, summary, pid, events = traced_run(impl, extra, scenario, float(os.environ.get("DUR", "8")), "gil-hold-trace-")
    print(
        f"{impl} {extra or ''}: /hello under 4 /cpu: mean {summary['latency_ms']['mean']:.2f} ms,"
        f" p50 {m.p50_ms:.2f} ms; /cpu {m.background_throughput_rps:.0f} req/s"
    )
    analyse(pid, events)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
