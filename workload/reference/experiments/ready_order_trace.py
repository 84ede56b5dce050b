#!/usr/bin/env python3
"""In which order a loop serves its ready sockets while CPU work blocks it (session 11; see
../README.md, "Session 11", and workload/src/serve/ready_order.rs).

Starts one implementation (1 process) with the `gil_hold_trace.c` tracer, primes it, and runs
`/hello` at a constant 100 req/s (open model, up to 16 connections) while 4 closed loops of
`/cpu?ms=10` keep the loop busy, for 5 s. From the trace of the loop thread it splits the reads
into loop iterations (one per `epoll_wait`), tells the `/cpu` sockets from the `/hello` ones (a
read of `/cpu` is followed by 10 ms of work before the loop's next event), and prints how many
`/cpu` reads came before each `/hello` read in its iteration, and the first iterations as letters
(C: a `/cpu` read, h: a `/hello` read).

    workload/reference/experiments/ready_order_trace.py express
    workload/reference/experiments/ready_order_trace.py emulated-event-loop [ENV=VALUE ...]
    CLOSED=1 workload/reference/experiments/ready_order_trace.py express

CLOSED=1 runs calibrate's closed-model `hello_under_cpu` instead (`/hello` at 1 in flight).

Session 11, 12:48-12:52 UTC, this project's 2-core machine: Express read all 4 `/cpu` before
397 of 405 `/hello` (`CCCChhhh` each iteration; /hello p50 63.5 ms); the emulation without the
order of ready sockets (arrival order) 0, 1, 2 or 3 `/cpu` before about a quarter each
(`hChChChC`; p50 37.0 ms), with it 4 before 400 of 405 (p50 62.9 ms). With the request overhead
at 0 the emulation parks before the last `/cpu`'s next request is in, and that one starts an
iteration of its own (`CCChhh`, p50 47 ms): the work after the answer keeps the loop busy until
it is in, on Express as in the emulation at the calibrated overhead. Again at 13:46 UTC: Express
453 of 458 after all 4 (p50 62.6 ms), the emulation 448 of 453 (p50 62.0 ms). With CLOSED=1
(13:21 UTC, a scratch copy of this script): Express read the `/hello` last in 60 of the 69
iterations that read it (`CCCCh CCCC CCCCh`: a third of its iterations read none; p50 42 ms,
p90 84, mean 58), the emulation first in 114 of 114 (`hCCC`; p50 41 ms, p90 41, mean 36). With this script at
14:05 UTC: Express after 3 or 4 `/cpu` in 74 of 75 (p50 44 ms, p90 85, mean 59), the emulation
first in 133 of 133 (p50 31 ms, p90 42, mean 34). Session 12 (16:00 UTC), with its two
changes (a connection counts as served only when it reads; the work after the answer runs in the
answer's callback): Express after 3 or 4 `/cpu` in 80 of 80 (p50 42.8 ms, p90 83.7, mean 56.2),
the `/hello` answered last missing the next iteration in 32 of 78 (58 µs from the answer to the
next `epoll_wait`); the emulation after 3 or 4 in 61 of 61 (p50 72.2, mean 73.7), missing in 57
of 61 (38 µs). Session 13 (17:36-18:20 UTC), with each connection's own memory
(`EVENT_LOOP_CONNECTION_MEMORY_KIB`): Express missing in 28 of 49 (57 µs) and 54 of 60 (48 µs)
in two traces; the emulation in 30 of 63 (68 µs; p50 43.2, mean 55.7). At 19:25 UTC, at run L's
overheads, with p10 / p50 / p90 of that gap: Express 47 / 54 / 79 µs (missed 34 of 62) and
44 / 49 / 75 (39 of 53), the emulation 45 / 47 / 50 (58 of 59) and 49 / 53 / 63 (58 of 61).

The emulation starts with `calibration.experiment_knobs()` plus the given variables. Needs gcc,
the reference servers installed (workload/reference/install) and a release build.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import calibration as cal  # noqa: E402
from gil_hold_trace import EPOLL_ENTER, READ, WRITE, traced_run  # noqa: E402

CPU_GAP_NS = 5_000_000


def analyse(events: list) -> None:
    reads = Counter(e[0] for e in events if e[1] == READ)
    if not reads:
        print("no reads traced")
        return
    loop_tid = reads.most_common(1)[0][0]
    loop = [e for e in events if e[0] == loop_tid and e[1] in (READ, EPOLL_ENTER, WRITE)]
    gaps: dict[int, list[bool]] = {}
    for a, b in zip(loop, loop[1:]):
        if a[1] == READ:
            gaps.setdefault(a[2], []).append(b[3] - a[3] > CPU_GAP_NS)
    cpu_fds = {fd for fd, long in gaps.items() if sum(long) > len(long) / 2}
    # The loop's events split at each epoll_wait: each span after the first starts with one.
    spans: list[list] = [[]]
    for e in loop:
        if e[1] == EPOLL_ENTER:
            spans.append([])
        spans[-1].append(e)
    iterations = [fds for fds in ([e[2] for e in span if e[1] == READ] for span in spans) if fds]
    ahead = []
    for fds in iterations:
        seen = 0
        for fd in fds:
            if fd in cpu_fds:
                seen += 1
            else:
                ahead.append(seen)
    per_iteration = statistics.mean(sum(fd in cpu_fds for fd in fds) for fds in iterations)
    print(f"/cpu sockets {sorted(cpu_fds)}; {len(iterations)} iterations, {per_iteration:.2f} /cpu reads each")
    if ahead:
        print(
            f"/cpu reads before each /hello read in its iteration: mean {statistics.mean(ahead):.2f},"
            f" count by number {dict(sorted(Counter(ahead).items()))}"
        )
    print("first iterations:", " ".join("".join("C" if fd in cpu_fds else "h" for fd in fds) for fds in iterations[:20]))
    after_last_answer(spans[1:], cpu_fds)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def after_last_answer(spans: list[list], cpu_fds: set[int]) -> None:
    """How long the loop works after an iteration's last answer before it polls again, and
    whether that socket's next request made it into the next iteration (session 12). `spans`:
    the loop's events from one epoll_wait to the next."""
    sockets = {e[2] for span in spans for e in span if e[1] == READ}
    for label, is_cpu in (("/hello", False), ("/cpu", True)):
        gaps, missed = [], 0
        for span, following in zip(spans, spans[1:]):
            answers = [e for e in span if e[1] == WRITE and e[2] in sockets]
            if not answers or (answers[-1][2] in cpu_fds) != is_cpu:
                continue
            last = answers[-1]
            gaps.append((following[0][3] - last[3]) / 1000)
            missed += not any(e[1] == READ and e[2] == last[2] for e in following)
        if gaps:
            print(
                f"iterations answering a {label} last: {len(gaps)}; from that answer to the next epoll_wait"
                f" p10 {quantile(gaps, 0.1):.0f} p50 {statistics.median(gaps):.0f} p90 {quantile(gaps, 0.9):.0f} µs;"
                f" its next request missed the next iteration in {missed}"
            )


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("express", "fastapi", "emulated-event-loop", "emulated-thread-pool"):
        print(__doc__, file=sys.stderr)
        return 2
    impl, extra = argv[0], dict(a.split("=", 1) for a in argv[1:])
    if os.environ.get("CLOSED"):
        scenario = cal.Scenario("hello_under_cpu", 1, "/hello", 1, f"/cpu?ms={cal.CPU_MS}", 4)
        load = "/hello at 1 in flight"
    else:
        scenario = cal.Scenario("hello_open_under_cpu", 1, "/hello", 16, f"/cpu?ms={cal.CPU_MS}", 4, rate=100.0)
        load = "/hello at 100 req/s"
    _, summary, _, events = traced_run(impl, extra, scenario, 5.0, "ready-order-trace-")
    latency = summary["latency_ms"]
    print(
        f"{impl} {extra or ''}: {load} under 4 /cpu: p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms,"
        f" mean {latency['mean']:.1f} ms"
    )
    analyse(events)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
