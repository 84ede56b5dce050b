"""Real CPython's GIL alone, in the same experiment as the emulation's
`workload/examples/gil_micro.rs`: N threads burn 10 ms jobs back to back (pool threads running
`def` routes) while the main thread plays the event loop: it blocks with the GIL released for
`gap` (time.sleep, as uvloop's epoll_wait), then runs a request's Python part (250 us of bytecode
in three pieces separated by a GIL release, as uvloop's callbacks). Prints the percentiles of how
much later than `gap` that request finished, and the pool's jobs/s. The CPU is burnt by the
reference FastAPI server's own `burn_cpu`.

With --event-loop the same experiment runs inside uvloop, as FastAPI's structure has it: the pool
jobs go through `run_in_executor` (each one's result comes back to the loop, which submits the
next), and the request is a task awaiting a timer of `gap` (libuv's timers have 1 ms resolution).

    fastapi/.venv/bin/python gil_micro.py [--event-loop] <threads> <gap-ms> [seconds]
"""

from __future__ import annotations

import asyncio
import select
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fastapi"))
from app import burn_cpu as burn  # noqa: E402  the reference server's own burn loop

CALLBACKS_PER_REQUEST = 3
REQUEST_CPU_MS = 0.25


def run_request() -> None:
    """A request's Python part on the loop thread, in uvloop's three callbacks."""
    for i in range(CALLBACKS_PER_REQUEST):
        if i:
            select.select([], [], [], 0)  # releases and re-takes the GIL
        burn(REQUEST_CPU_MS / CALLBACKS_PER_REQUEST)


def on_threads(threads: int, gap: float, secs: float) -> tuple[list[float], float, float]:
    stop = threading.Event()
    jobs = [0]

    def pool() -> None:
        while not stop.is_set():
            burn(10)
            jobs[0] += 1

    workers = [threading.Thread(target=pool) for _ in range(threads)]
    for w in workers:
        w.start()
    late_ms = []
    started = time.perf_counter()
    end = started + secs
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        time.sleep(gap)
        run_request()
        late_ms.append(max(0.0, time.perf_counter() - t0 - gap) * 1000)
    stop.set()
    for w in workers:
        w.join()
    return late_ms, jobs[0], time.perf_counter() - started


async def on_event_loop(threads: int, gap: float, secs: float) -> tuple[list[float], float, float]:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=max(1, threads))
    started = time.perf_counter()
    end = started + secs
    jobs = [0]

    async def submitter() -> None:
        while time.perf_counter() < end:
            await loop.run_in_executor(executor, burn, 10)
            jobs[0] += 1

    submitters = [asyncio.create_task(submitter()) for _ in range(threads)]
    late_ms = []
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await asyncio.sleep(gap)
        run_request()
        late_ms.append(max(0.0, time.perf_counter() - t0 - gap) * 1000)
    await asyncio.gather(*submitters)
    executor.shutdown()
    return late_ms, jobs[0], time.perf_counter() - started


def main(argv: list[str]) -> int:
    event_loop = bool(argv) and argv[0] == "--event-loop"
    if event_loop:
        argv = argv[1:]
    try:
        threads, gap_ms = int(argv[0]), float(argv[1])
        secs = float(argv[2]) if len(argv) > 2 else 3.0
        if not (0 <= threads <= 64 and 0 <= gap_ms <= 1000 and 0.1 <= secs <= 60) or len(argv) > 3:
            raise ValueError
    except (IndexError, ValueError):
        print("usage: gil_micro.py [--event-loop] <threads 0..=64> <gap-ms 0..=1000> [seconds 0.1..=60]", file=sys.stderr)
        return 2
    gap = gap_ms / 1000.0
    if event_loop:
        import uvloop

        late_ms, jobs, elapsed = uvloop.run(on_event_loop(threads, gap, secs))
    else:
        late_ms, jobs, elapsed = on_threads(threads, gap, secs)
    late_ms.sort()

    def q(p: float) -> float:
        return late_ms[min(len(late_ms) - 1, int(p * len(late_ms)))]

    print(
        f"CPython {sys.version_info.major}.{sys.version_info.minor}{' uvloop' if event_loop else ''} threads {threads}"
        f" gap {gap_ms:g} ms: {len(late_ms)} requests,"
        f" p50 {q(0.5):.2f} p90 {q(0.9):.2f} p99 {q(0.99):.2f} ms; pool {jobs / elapsed:.1f} jobs/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
