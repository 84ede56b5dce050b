"""Starting and stopping the servers that the reference tests and the calibration compare:
the real Express and FastAPI servers beside this file, and the emulation
(`loopscale-workload serve`). Python 3.11 standard library only.

Every server listens on a free loopback port, runs in its own process group (so its workers stop
with it), and is stopped with SIGTERM (then SIGKILL after a grace period).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXPRESS_DIR = HERE / "express"
FASTAPI_DIR = HERE / "fastapi"
FASTAPI_PYTHON = FASTAPI_DIR / ".venv" / "bin" / "python"

IMPLEMENTATIONS = ("express", "fastapi", "emulated-event-loop", "emulated-thread-pool")
"""The four implementations the calibration compares, in table order."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Response:
    status: int
    body: str
    seconds: float


def get(port: int, path: str, timeout: float = 30.0, method: str = "GET") -> Response:
    """One request (GET unless told) on a fresh connection to 127.0.0.1:port."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return Response(resp.status, body, time.monotonic() - start)
    finally:
        conn.close()


@dataclass
class Server:
    """A running server: its implementation name, process count, port and process."""

    name: str
    processes: int
    port: int
    proc: subprocess.Popen
    log_path: Path
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM (drain and exit), then SIGKILL to the whole group after `grace` seconds.
        Returns the exit code, or None if it had to be killed."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        code = self.proc.poll()
        # Leftover workers of the group (if the supervisor exited without them) go too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if code is None:
            self.proc.wait(timeout=5)
        return code

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def set_autogroup_nice(pid: int, nice: int) -> None:
    """Sets the nice value of the scheduler autogroup of `pid` (its session). With autogroups on,
    the kernel splits CPU between sessions first, so a process's own nice value does not shield
    it from other sessions' builds; the group's does. Raises OSError if not allowed."""
    with open(f"/proc/{pid}/autogroup", "w") as f:
        f.write(str(nice))


def command_for(name: str, workload_bin: Path | None = None) -> tuple[list[str], dict]:
    """The command line and extra environment that start implementation `name`."""
    if name == "express":
        return ["node", str(EXPRESS_DIR / "server.js")], {}
    if name == "fastapi":
        return [str(FASTAPI_PYTHON), str(FASTAPI_DIR / "server.py")], {"PYTHONDONTWRITEBYTECODE": "1"}
    if name in ("emulated-event-loop", "emulated-thread-pool"):
        if workload_bin is None:
            raise ValueError("the emulation needs the loopscale-workload binary")
        mode = name.removeprefix("emulated-")
        return [str(workload_bin), "serve"], {"LOOPSCALE_MODE": mode}
    raise ValueError(f"unknown implementation {name!r}; expected one of {', '.join(IMPLEMENTATIONS)}")


def start(
    name: str,
    processes: int,
    log_dir: Path,
    workload_bin: Path | None = None,
    extra_env: dict | None = None,
    ready_timeout: float = 60.0,
    autogroup_nice: int | None = None,
) -> Server:
    """Starts implementation `name` with `processes` worker processes on a free loopback port and
    waits until /readyz answers 200. Raises RuntimeError (with the log's tail) if it does not.

    The server runs in its own session, so (with the kernel's autogroup scheduling) in its own
    scheduler autogroup; `autogroup_nice` sets that group's nice value (negative needs root)."""
    argv, env_add = command_for(name, workload_bin)
    port = free_port()
    env = dict(os.environ)
    env.update(env_add)
    env.update(
        {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "LOOPSCALE_HOST": "127.0.0.1",
            "LOOPSCALE_PROCESSES": str(processes),
        }
    )
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-p{processes}-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    log.close()
    if autogroup_nice is not None:
        set_autogroup_nice(proc.pid, autogroup_nice)
    server = Server(name, processes, port, proc, log_path, env={k: env[k] for k in env_add | (extra_env or {})})
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready:\n{server.log_tail()}")
        try:
            if get(port, "/readyz", timeout=2).status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} was not ready within {ready_timeout:.0f}s:\n{server.log_tail()}")
