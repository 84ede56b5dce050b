"""Checks that the real Express and FastAPI reference servers answer every route as the emulation
does, with 1 and 2 worker processes, and that they show the behaviour the calibration relies on
(Express's loop blocks on CPU work; FastAPI's `def` route does not block the loop, its
`async def` + sync call does). Prints PASS/FAIL lines and a count; exits 1 on any
failure. Run by ./test after the installs (which prints the closing count); Python 3.11
standard library only.

    python3 route_test.py [express] [fastapi]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import reference_servers as rs

PARAM_ROUTES = {
    "/io": ["ms"],
    "/cpu": ["ms"],
    "/cpu-inline": ["ms"],
    "/offload": ["ms"],
    "/mixed": ["io_ms", "cpu_ms"],
}
BAD_VALUES = ["abc", "-1", "60001", "60000.5", "", "99999999999999999999999", "0x10", "inf", "NaN", "1_000", "1%2C5"]
"""Each one gets 400, as in the emulation (decimal milliseconds, 0..=60000)."""


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"PASS {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}")
        sys.stdout.flush()
        return ok


def json_body(resp: rs.Response):
    try:
        return json.loads(resp.body)
    except ValueError:
        return None


def check_routes(res: Results, server: rs.Server) -> None:
    tag = f"{server.name} p{server.processes}"
    port = server.port

    def expect_json(path: str, body: dict, min_seconds: float = 0.0) -> None:
        try:
            resp = rs.get(port, path)
        except OSError as err:
            res.check(f"{tag} GET {path}", False, f"request failed: {err}")
            return
        res.check(
            f"{tag} GET {path} -> 200 {json.dumps(body)}",
            resp.status == 200 and json_body(resp) == body and resp.seconds >= min_seconds,
            f"status {resp.status}, body {resp.body!r}, {resp.seconds * 1000:.1f} ms (want >= {min_seconds * 1000:.0f} ms)",
        )

    def expect_text(path: str, status: int, body: str | None = None) -> None:
        try:
            resp = rs.get(port, path)
        except OSError as err:
            res.check(f"{tag} GET {path}", False, f"request failed: {err}")
            return
        text = resp.body.rstrip("\n")
        one_line = text != "" and "\n" not in text
        res.check(
            f"{tag} GET {path} -> {status}",
            resp.status == status and one_line and (body is None or text == body),
            f"status {resp.status}, body {resp.body!r}",
        )

    expect_json("/hello", {"message": "hello"})
    expect_json("/io?ms=30", {"route": "io", "io_ms": 30}, min_seconds=0.029)
    expect_json("/io?ms=0", {"route": "io", "io_ms": 0})
    expect_json("/io?ms=1.5", {"route": "io", "io_ms": 1.5})  # decimal milliseconds, as the emulation
    expect_json("/io?ms=%202", {"route": "io", "io_ms": 2})  # surrounding whitespace is trimmed
    expect_json("/io?ms=1e1", {"route": "io", "io_ms": 10}, min_seconds=0.009)
    # CPU time never exceeds wall time on one thread, so a 20 ms burn takes at least 20 ms. Node 20
    # has no per-thread CPU clock: Express burns by process CPU time, which V8's compiler and GC
    # threads advance too, so its burn can end a little early in wall time (18.5 ms for 20 seen).
    cpu_share = 0.75 if server.name == "express" else 0.95
    expect_json("/cpu?ms=20", {"route": "cpu", "cpu_ms": 20}, min_seconds=0.020 * cpu_share)
    expect_json("/cpu?ms=0", {"route": "cpu", "cpu_ms": 0})
    expect_json("/cpu-inline?ms=20", {"route": "cpu-inline", "cpu_ms": 20}, min_seconds=0.020 * cpu_share)
    expect_json(
        "/mixed?io_ms=20&cpu_ms=10",
        {"route": "mixed", "io_ms": 20, "cpu_ms": 10},
        min_seconds=0.019 + 0.010 * cpu_share,
    )
    # /offload's work is sized by a start-up measurement: only roughly N ms.
    expect_json("/offload?ms=20", {"route": "offload", "ms": 20}, min_seconds=0.005)
    expect_text("/healthz", 200, "ok")
    expect_text("/readyz", 200, "ready")
    for route, params in PARAM_ROUTES.items():
        good = {p: "1" for p in params}
        for param in params:
            others = "&".join(f"{p}={v}" for p, v in good.items() if p != param)
            expect_text(f"{route}?{others}" if others else route, 400)  # the parameter is missing
            prefix = f"{route}?{others}&" if others else f"{route}?"
            for value in BAD_VALUES:
                expect_text(f"{prefix}{param}={value}", 400)
    expect_text("/mixed?io_ms=30000&cpu_ms=30001", 400)  # the sum is limited too
    if server.name == "express":
        expect_text("/io?ms=1&ms=2", 400)  # a repeated parameter, as the emulation
    else:
        expect_json("/io?ms=1&ms=2", {"route": "io", "io_ms": 2})  # FastAPI takes the last one
    try:
        resp = rs.get(port, "/hello", method="POST")
        res.check(f"{tag} POST /hello -> 405", resp.status == 405, f"status {resp.status}, body {resp.body!r}")
    except OSError as err:
        res.check(f"{tag} POST /hello -> 405", False, f"request failed: {err}")
    expect_text("/nope", 404)
    expect_text("/hello/extra", 404)
    expect_text("/", 404)


def hello_during(port: int, slow_path: str, head_start: float = 0.15) -> tuple[float, float, int, int]:
    """Sends `slow_path`, then after `head_start` s a /hello on another connection. Returns
    (slow_end, hello_end, slow_status, hello_status), times relative to the first send."""
    t0 = time.monotonic()
    slow: dict = {}

    def run_slow() -> None:
        try:
            resp = rs.get(port, slow_path, timeout=60)
            slow["status"] = resp.status
        except OSError:
            slow["status"] = -1
        slow["end"] = time.monotonic() - t0

    thread = threading.Thread(target=run_slow)
    thread.start()
    time.sleep(head_start)
    try:
        hello_status = rs.get(port, "/hello", timeout=60).status
    except OSError:
        hello_status = -1
    hello_end = time.monotonic() - t0
    thread.join(timeout=90)
    return slow.get("end", float("inf")), hello_end, slow.get("status", -1), hello_status


def check_blocking(res: Results, server: rs.Server) -> None:
    """The concurrency behaviour each runtime is chosen for, seen from outside."""
    tag = f"{server.name} p{server.processes}"

    def expect(slow_path: str, hello_waits: bool, why: str) -> None:
        slow_end, hello_end, slow_status, hello_status = hello_during(server.port, slow_path)
        # A blocked /hello can finish at most a few ms before the blocking request does.
        waited = hello_end >= slow_end - 0.02
        res.check(
            f"{tag} /hello during {slow_path} {'waits' if hello_waits else 'does not wait'} ({why})",
            slow_status == 200 and hello_status == 200 and waited == hello_waits,
            f"statuses {slow_status}/{hello_status}, slow request done at {slow_end * 1000:.0f} ms, "
            f"/hello done at {hello_end * 1000:.0f} ms",
        )

    if server.name == "express" and server.processes == 1:
        expect("/cpu?ms=600", True, "CPU work blocks the only event loop")
        expect("/io?ms=600", False, "a timer does not block the loop")
    elif server.name == "express":
        expect("/cpu?ms=600", False, "round-robin hands the next connection to the other worker")
    elif server.name == "fastapi" and server.processes == 1:
        expect("/cpu?ms=600", False, "a def route runs in the thread pool; the GIL switches every 5 ms")
        expect("/cpu-inline?ms=600", True, "a sync call inside async def runs on the event loop")
        expect("/mixed?io_ms=50&cpu_ms=600", False, "the CPU part of /mixed runs in the thread pool")


def check_drain(res: Results, server: rs.Server) -> None:
    """SIGTERM while a request is in flight: the request completes, then the server exits by
    itself (exit 0; uvicorn's single-process mode re-raises the signal after draining, so it
    ends by SIGTERM, which Kubernetes treats the same)."""
    tag = f"{server.name} p{server.processes}"
    outcome: dict = {}

    def run_slow() -> None:
        try:
            outcome["status"] = rs.get(server.port, "/io?ms=700", timeout=30).status
        except OSError as err:
            outcome["status"] = f"failed: {err}"

    thread = threading.Thread(target=run_slow)
    thread.start()
    time.sleep(0.25)
    os.killpg(server.proc.pid, signal.SIGTERM)
    thread.join(timeout=30)
    try:
        code = server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        code = None
    res.check(
        f"{tag} SIGTERM drains the in-flight request and exits",
        outcome.get("status") == 200 and code in (0, -signal.SIGTERM),
        f"in-flight request: {outcome.get('status')}, exit code {code}\n{server.log_tail()}",
    )


def two_at_once(port: int, path: str) -> tuple[float, float]:
    """Two `path` requests sent at the same time: the first one's latency, and the makespan (the
    first send to the last answer). Measured from when each was sent, so that one client thread
    starting late on a busy machine does not pass for a wait on the server: a pool of one runs the
    two jobs back to back, so the makespan is about twice the first latency, however late the
    second request came (as long as it came while the first ran); a pool of two ends both at about
    the same time after their sends."""
    spans: list[tuple[float, float]] = []
    ready = threading.Barrier(2)

    def one() -> None:
        try:
            ready.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        sent = time.monotonic()
        try:
            resp = rs.get(port, path, timeout=60)
            ok = resp.status == 200
        except OSError:
            ok = False
        spans.append((sent, time.monotonic() if ok else float("nan")))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    if len(spans) != 2:
        return float("nan"), float("nan")
    first = min(spans, key=lambda span: span[1])
    makespan = max(end for _, end in spans) - min(sent for sent, _ in spans)
    return first[1] - first[0], makespan


def check_knobs(res: Results, name: str, tmp: Path) -> None:
    """The emulation's settings the real runtime has are honoured; the ones it cannot honour stop
    it with exit code 2 and a message, rather than run something else than asked."""
    refused = {
        "express": [{"LOOPSCALE_BALANCING": "random"}, {"LOOPSCALE_LIBUV_THREADPOOL_SIZE": "2000"}, {"PORT": "70000"}],
        "fastapi": [
            {"LOOPSCALE_GIL": "false"},
            {"LOOPSCALE_BALANCING": "round-robin"},
            {"LOOPSCALE_THREADPOOL_SIZE": "0"},
            {"LOOPSCALE_GIL_SWITCH_INTERVAL_MS": "abc"},
        ],
    }[name]
    for env in refused:
        try:
            server = rs.start(name, 1, tmp, extra_env=env, ready_timeout=30)
            server.stop()
            res.check(f"{name} refuses {env}", False, "it started")
        except RuntimeError as err:
            res.check(f"{name} refuses {env} (exit 2)", "exited with 2" in str(err), str(err)[:300])
    # One pool thread: two pool jobs at once run one after the other.
    env = {"express": {"LOOPSCALE_LIBUV_THREADPOOL_SIZE": "1"}, "fastapi": {"LOOPSCALE_THREADPOOL_SIZE": "1"}}[name]
    try:
        server = rs.start(name, 1, tmp, extra_env=env)
    except RuntimeError as err:
        res.check(f"{name} starts with {env}", False, str(err))
        return
    try:
        first, makespan = two_at_once(server.port, "/offload?ms=300")
        res.check(
            f"{name} with {env}: two /offload at once run one after the other",
            makespan >= 1.6 * first,
            f"first answer after {first * 1000:.0f} ms, both after {makespan * 1000:.0f} ms",
        )
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    names = argv or ["express", "fastapi"]
    res = Results()
    with tempfile.TemporaryDirectory(prefix="loopscale-reference-") as tmp:
        for name in names:
            for processes in (1, 2):
                tag = f"{name} p{processes}"
                try:
                    server = rs.start(name, processes, Path(tmp))
                except (RuntimeError, OSError) as err:
                    res.check(f"{tag} starts and becomes ready", False, str(err))
                    continue
                res.check(f"{tag} starts and becomes ready", True)
                try:
                    check_routes(res, server)
                    check_blocking(res, server)
                    check_drain(res, server)
                finally:
                    server.stop()
            check_knobs(res, name, Path(tmp))
    print(f"route tests: {res.passed} PASS, {res.failed} FAIL")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
