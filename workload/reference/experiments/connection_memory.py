#!/usr/bin/env python3
"""Resident memory per open keep-alive connection (session 13; see ../README.md, "Session 13",
and `EVENT_LOOP_CONNECTION_MEMORY_KIB` in workload/src/serve/routes.rs).

For each implementation (1 process): warm it up with 50 requests on each of 20 connections,
close them, read the resident memory of the server's processes (VmRSS from /proc), then open N
connections, send 3 GET /hello on each (all connections in turn, so each one's state is built and
used again), and read it again. The difference over N is what a connection keeps: its socket,
parser and buffers, plus, in Node, the young generation grown by the requests' garbage (which is
why the figure falls as N grows). The emulation runs with the overheads and working set
calibration-latest.json used (`calibration.experiment_knobs`).

    workload/reference/experiments/connection_memory.py [IMPLEMENTATION[:VAR=VALUE,...] ...]
    N=1000 workload/reference/experiments/connection_memory.py express

Session 13 (17:47-17:55 UTC, this project's 2-core machine), KiB per connection at N = 200 /
400 / 1000: Express 59.6 / 51.9 / 42.8, FastAPI 9.0 / 10.1 / 10.6, the emulation (either mode)
20.0 / 20.2 / 18.3. Express keeps 23-40 KiB more per connection than the emulation; FastAPI less.

Needs a release build and `workload/reference/install`.
"""
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REFERENCE))
import calibration as cal  # noqa: E402
from keep_alive import get  # noqa: E402
import reference_servers as rs  # noqa: E402
from server_cpu import server_pids  # noqa: E402

N = int(os.environ.get("N", "400"))


def resident_kib(pids: list[int]) -> int:
    """VmRSS of `pids`, summed."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def connections(port: int, count: int) -> list[socket.socket]:
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for conn in conns:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conns


# Servers inherit the limit: Node and uvicorn need an fd per connection too.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * N + 256)), hard))

specs = sys.argv[1:] or ["express", "emulated-event-loop", "fastapi", "emulated-thread-pool"]
latest = cal.experiment_knobs()
with tempfile.TemporaryDirectory() as tmp:
    for spec in specs:
        impl, _, extra = spec.partition(":")
        env = dict(kv.split("=", 1) for kv in extra.split(",") if kv)
        if impl in cal.MODE_OF:
            env = {**cal.overhead_env(latest[cal.MODE_OF[impl]]), **env}
        with rs.start(impl, 1, Path(tmp), cal.find_workload_bin(None), env) as server:
            pids = server_pids(server.proc.pid)
            warm = connections(server.port, 20)
            for _ in range(50):
                for conn in warm:
                    get(conn)
            for conn in warm:
                conn.close()
            time.sleep(1.0)
            before = resident_kib(pids)
            conns = connections(server.port, N)
            for _ in range(3):
                for conn in conns:
                    get(conn)
            time.sleep(1.0)
            after = resident_kib(pids)
            for conn in conns:
                conn.close()
        print(f"{spec:32} resident {before} -> {after} KiB: {(after - before) / N:5.1f} KiB per connection"
              f" ({N} connections)", flush=True)
