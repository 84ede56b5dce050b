#!/usr/bin/env python3
"""How much a loop's work after an answer varies from one request to the next (session 15).

Starts one implementation (1 process) with the `gil_hold_trace.c` tracer, primes it, and runs
closed-loop `/hello` at 1 in flight alone for 5 s. On the loop thread it takes, for every
request, the time from the `read` that brought it to the answer's write ("before"), from
that write to the loop's next `epoll_wait` ("after"), and from that write to the read of the
connection's next request (the client's turnaround and the loop's wake-up), and prints their
p10 / p50 / p90 / p99 and the p90 / p50 ratio.

    workload/reference/experiments/after_answer_spread.py express
    workload/reference/experiments/after_answer_spread.py emulated-event-loop [ENV=VALUE ...]

Session 15 (23:17-23:25 UTC, quiet machine, run M's knobs), answer to next epoll_wait:
Express p10 / p50 / p90 / p99 22 / 26 / 42 / 80 µs (mean 37) and 27 / 41 / 62 / 98 (mean 52);
the emulation with a fixed third of the request overhead after the answer 22 / 27 / 34 / 48
(mean 28) and 21 / 25 / 29 / 39 (25); with that third drawn from an exponential distribution
(`drawn_after_answer_work` in workload/src/serve/routes.rs) 13 / 21 / 41 / 69 (25) and
14 / 23 / 42 / 70 (26). Read to answer: Express 67 / 79 / 117 / 168 and 78 / 114 / 153 / 214,
the emulation 55-58 / 61-72 / 74-95 / 95-118.

The emulation starts with `calibration.experiment_knobs()` plus the given variables. Needs gcc,
the reference servers installed (workload/reference/install) and a release build.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import calibration as cal  # noqa: E402
from gil_hold_trace import EPOLL_ENTER, READ, WRITE, traced_run  # noqa: E402
from ready_order_trace import quantile  # noqa: E402


def spans(events: list) -> tuple[list[float], list[float], list[float]]:
    """Per request on the loop thread: µs from its read to its answer's write, from that write
    to the next epoll_wait, and from that write to the read of the connection's next request (the
    client's turnaround plus the loop's wake-up, when the loop was idle by then). A request whose
    answer comes after another request's read is left out (its span would hold that one's work
    too)."""
    reads = Counter(e[0] for e in events if e[1] == READ)
    loop_tid = reads.most_common(1)[0][0]
    loop = [e for e in events if e[0] == loop_tid and e[1] in (READ, EPOLL_ENTER, WRITE)]
    before, after, turnaround = [], [], []
    for i, read in enumerate(loop):
        if read[1] != READ:
            continue
        following = loop[i + 1 : i + 64]
        at = next((j for j, w in enumerate(following) if w[1] == WRITE and w[2] == read[2]), None)
        if at is None or any(x[1] == READ for x in following[:at]):
            continue
        poll = next((p for p in following[at + 1 :] if p[1] == EPOLL_ENTER), None)
        if poll is None:
            continue
        before.append((following[at][3] - read[3]) / 1000)
        after.append((poll[3] - following[at][3]) / 1000)
        again = next((r for r in following[at + 1 :] if r[1] == READ and r[2] == read[2]), None)
        if again is not None:
            turnaround.append((again[3] - following[at][3]) / 1000)
    return before, after, turnaround


def describe(label: str, values: list[float]) -> str:
    p10, p50, p90, p99 = (quantile(values, q) for q in (0.1, 0.5, 0.9, 0.99))
    return (
        f"{label}: p10 {p10:.0f} p50 {p50:.0f} p90 {p90:.0f} p99 {p99:.0f} µs, mean {statistics.mean(values):.0f},"
        f" p90/p50 {p90 / p50:.2f}"
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("express", "fastapi", "emulated-event-loop", "emulated-thread-pool"):
        print(__doc__, file=sys.stderr)
        return 2
    impl, extra = argv[0], dict(a.split("=", 1) for a in argv[1:])
    scenario = cal.Scenario("hello_alone", 1, "/hello", 1)
    _, summary, _, events = traced_run(impl, extra, scenario, 5.0, "after-answer-spread-")
    before, after, turnaround = spans(events)
    print(f"{impl} {extra or ''}: /hello alone, 1 in flight: {len(before)} requests, mean {summary['latency_ms']['mean'] * 1000:.0f} µs")
    print("  " + describe("read to answer", before))
    print("  " + describe("answer to next epoll_wait", after))
    print("  " + describe("answer to the next request's read", turnaround))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
