#!/usr/bin/env python3
"""How much of a server's per-request loop work comes after the answer is written.

Starts one implementation with 1 process, primes it, finds its loop thread (the busiest one),
and runs `perf trace` on that thread while a closed-loop client sends `/hello` at 1 in flight
for 2 s. For every request it takes the time from the end of the `read` that brought the
request to the start of the first `write`/`writev` of the answer ("before"), and from the end of
the answer's last write to the loop's next `epoll_pwait` ("after"), and prints their medians.
perf's own cost per traced syscall is in both figures; the share is what counts.

Session 6 (release build, quiet machine): Express before 160-163 us, after 80-81 us (a busier
run: 100 / 50); the emulated event-loop mode at zero overhead 18 / 11 us, with 150 us of
request overhead all before the answer 175 / 13 us; FastAPI 231 / 38 us. Hence
EVENT_LOOP_AFTER_ANSWER_SHARE = 1/3 in workload/src/serve/routes.rs.

    workload/reference/experiments/after_answer_share.py express
    workload/reference/experiments/after_answer_share.py emulated-event-loop LOOPSCALE_REQUEST_OVERHEAD_US=150

Needs root (or perf_event_paranoid <= 1) for `perf trace`, the reference servers installed
(workload/reference/install) and a release build of loopscale-workload.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import calibration as cal  # noqa: E402

LINE = re.compile(r"\s*([\d.]+) \(\s*([\d.]+) ms\): (\w+)\((.*)\)\s*=\s*(-?\d+)")
WRITES = ("write", "writev", "sendto", "sendmsg")
READS = ("read", "recvfrom")


def before_and_after(trace: Path) -> tuple[list[float], list[float]]:
    """Per request: µs from the request's read to the answer's first write, and from the
    answer's last write to the next epoll_pwait."""
    rows = []
    for line in trace.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            rows.append((float(m[1]), float(m[2]), m[3], int(m[5])))
    before, after = [], []
    for k, (start, took, name, ret) in enumerate(rows):
        if name not in READS or ret <= 0:
            continue
        first = next((j for j in range(k + 1, min(k + 12, len(rows))) if rows[j][2] in WRITES), None)
        if first is None:
            continue
        last = first
        for j in range(first + 1, min(first + 6, len(rows))):
            if rows[j][2] in WRITES:
                last = j
            elif rows[j][2].startswith("epoll"):
                break
        poll = next((j for j in range(last + 1, min(last + 6, len(rows))) if rows[j][2].startswith("epoll")), None)
        if poll is None:
            continue
        before.append((rows[first][0] - (start + took)) * 1000)
        after.append((rows[poll][0] - (rows[last][0] + rows[last][1])) * 1000)
    return before, after


def main(argv: list[str]) -> int:
    impl, extra = argv[0], dict(a.split("=", 1) for a in argv[1:])
    work = Path(tempfile.mkdtemp(prefix="after-answer-"))
    load_bin = cal.find_workload_bin(None)
    settings = cal.Settings(warmup=0.5, duration=2.0, repetitions=1, work_dir=work, load_bin=load_bin, prime=5.0)
    server = cal.rs.start(impl, 1, work, load_bin, extra)
    try:
        cal.ServerPool(settings).prime(server)
        cpu = cal.process_group_thread_cpu(server.proc.pid)
        (_, tid), _ = max(cpu.items(), key=lambda kv: kv[1])
        trace = work / "trace.txt"
        events = "read,write,writev,epoll_wait,epoll_pwait,recvfrom,sendto,sendmsg,recvmsg"
        perf = subprocess.Popen(
            ["perf", "trace", "-t", str(tid), "-o", str(trace), "-e", events], stderr=subprocess.DEVNULL
        )
        time.sleep(1)
        argv = cal.load_argv(load_bin, server.port, "/hello", 1, 0.2, 2.0, work / "report.json")
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        time.sleep(0.5)
        perf.send_signal(2)
        perf.wait()
    finally:
        server.stop()
    before, after = before_and_after(trace)
    if not before:
        print(f"no request cycles found in {trace}", file=sys.stderr)
        return 1
    b, a = statistics.median(before), statistics.median(after)
    print(
        f"{impl} {extra or ''}: {len(before)} requests; read -> answer {b:.0f} us, answer -> next poll {a:.0f} us"
        f" (after-answer share {a / (a + b):.0%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
