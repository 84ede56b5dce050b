#!/usr/bin/env python3
"""Both sides of the race that decides the closed-model convoy (session 15): how long after a
`/hello` answer the client's next request reaches the server, against how long the server's
loop works before it polls again.

Like `after_answer_spread.py`, but the `gil_hold_trace.c` tracer is preloaded into the load
generator too, so the server's and the client's reads and writes share one clock. Runs `/hello`
at 1 in flight for 8 s, alone or (UNDER=1) under 4 closed `/cpu?ms=10` (calibrate's
`hello_under_cpu`), and prints for each `/hello` answer: server write -> its next `epoll_wait`,
server write -> the client's read of it, the client's read -> its next request's write, and
that write -> the server's read of it. The tracer costs both sides a little per call.

    workload/reference/experiments/client_turnaround_trace.py express
    UNDER=1 workload/reference/experiments/client_turnaround_trace.py emulated-event-loop

Session 15 (00:50-01:04 UTC, run Q's knobs), p50 in µs, one figure per trace (the first alone
traces, by a scratch copy, did not take the gap to `epoll_wait`):

| | server write -> epoll_wait | -> client read | client read -> write | client write -> server read |
|---|---|---|---|---|
| Express alone | 22, 26 | 14, 14, 18 | 8, 9, 13 | 3, 3, 9 |
| emulation alone | 24 | 16, 16 | 10, 9 | 14, 13 |
| Express under `/cpu` | 39, 44 | 30, 33 | 31, 31 | (an iteration) |
| emulation under `/cpu` | 45, 54, 56 | 41, 33, 36 | 30, 28, 30 | (an iteration) |

Under the convoy the client's next `/hello` reaches the server about 60 µs after the answer
(delivery 30-41 plus the client's own 28-31; alone 14-18 plus 8-13), later than either loop's
median gap, so whether it makes the next iteration is decided by the gap's tail. Alone,
Express's loop read a request 3-9 µs after the client wrote it at the median, the emulation's
13-14 (not traced further).

The emulation starts with `calibration.experiment_knobs()`. Needs gcc, the reference servers
installed (workload/reference/install) and a release build.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import calibration as cal  # noqa: E402
from gil_hold_trace import EPOLL_ENTER, READ, WRITE, traced_processes  # noqa: E402
from ready_order_trace import quantile  # noqa: E402

REQUEST_BYTES = 46
"""The load generator's `GET /hello` request."""


def traced(impl: str, scenario: cal.Scenario) -> list[tuple]:
    """Runs `scenario` with the tracer in the server and in the load generators; returns every
    traced event of the measured window as (pid, tid, kind, fd, time, bytes), in time order."""
    _, _, traces = traced_processes(impl, {}, scenario, 8.0, "client-turnaround-", trace_load=True)
    return sorted(((pid, *e) for pid, events in traces.items() for e in events), key=lambda e: e[4])


def hello_answer_size(events: list[tuple], server: int) -> int:
    """The size of the server's answer to `/hello`: its most common write after a read of a
    `/hello` request (`/cpu?ms=10`'s request is longer)."""
    sizes: Counter = Counter()
    after_hello = False
    for pid, _tid, kind, _fd, _at, size in events:
        if pid != server:
            continue
        if kind == READ:
            after_hello = size == REQUEST_BYTES
        elif kind == WRITE and after_hello:
            sizes[size] += 1
            after_hello = False
    return sizes.most_common(1)[0][0]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("express", "fastapi", "emulated-event-loop", "emulated-thread-pool"):
        print(__doc__, file=sys.stderr)
        return 2
    impl = argv[0]
    under = bool(os.environ.get("UNDER"))
    if under:
        scenario = cal.Scenario("hello_under_cpu", 1, "/hello", 1, f"/cpu?ms={cal.CPU_MS}", 4)
    else:
        scenario = cal.Scenario("hello_alone", 1, "/hello", 1)
    events = traced(impl, scenario)
    reads = Counter((e[0], e[5]) for e in events if e[2] == READ)
    server = next(pid for (pid, size), _ in reads.most_common() if size == REQUEST_BYTES)
    answer = hello_answer_size(events, server)
    gap, deliver, client, send = [], [], [], []
    written = polled_from = read_at = sent = None
    for pid, _tid, kind, _fd, at, size in events:
        ours = pid == server
        if ours and kind == WRITE and size == answer:
            written = polled_from = at
        elif ours and kind == EPOLL_ENTER and polled_from:
            gap.append((at - polled_from) / 1000)
            polled_from = None
        elif not ours and kind == READ and size == answer and written:
            deliver.append((at - written) / 1000)
            read_at, written = at, None
        elif not ours and kind == WRITE and size == REQUEST_BYTES and read_at:
            client.append((at - read_at) / 1000)
            sent, read_at = at, None
        elif ours and kind == READ and size == REQUEST_BYTES and sent:
            send.append((at - sent) / 1000)
            sent = None
    label = "under 4 /cpu" if under else "alone"
    for name, values in (
        ("server write -> its next epoll_wait", gap),
        ("server write -> client read", deliver),
        ("client read -> client write", client),
        ("client write -> server read", send),
    ):
        if values:
            print(
                f"{impl} {label}: {name}: n {len(values)} p10 {quantile(values, 0.1):.0f}"
                f" p50 {quantile(values, 0.5):.0f} p90 {quantile(values, 0.9):.0f} µs"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
