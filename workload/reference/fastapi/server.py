"""Starts the reference FastAPI app under uvicorn, configured like loopscale's emulation:
LOOPSCALE_PROCESSES (or PROCESSES) worker processes (`uvicorn --workers N`, default 1), PORT
(default 8080), HOST (default 0.0.0.0).

With N > 1 uvicorn binds the socket once in its supervisor and the workers inherit it (the kernel
picks which worker accepts): the emulation's `shared-socket` balancing, the only one uvicorn has.
Access logs are off, as in a tuned production setup and as in the Express reference.

The emulation's thread-pool knobs that real CPython has are honoured (app.py applies them in each
worker): LOOPSCALE_THREADPOOL_SIZE (anyio's limiter, default 40) and
LOOPSCALE_GIL_SWITCH_INTERVAL_MS (sys.setswitchinterval, default 5). LOOPSCALE_GIL=false would need
a free-threaded CPython (3.13t+), and LOOPSCALE_BALANCING=round-robin a balancer uvicorn does not
have: both exit 2 with a message rather than run something else than asked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn


def refuse(message: str) -> None:
    """A setting this server cannot run with: one line on stderr, exit code 2 (as the emulation)."""
    print(message, file=sys.stderr)
    sys.exit(2)


def int_from_env(names: list[str], fallback: int, low: int, high: int) -> int:
    for name in names:
        raw = os.environ.get(name, "")
        if raw == "":
            continue
        if not raw.isdigit() or not low <= int(raw) <= high:
            refuse(f"{name} must be an integer in {low}..={high}, got {raw!r}")
        return int(raw)
    return fallback


def check_thread_pool_knobs() -> None:
    """Exits 2 (before anything starts) on knobs this runtime cannot honour or bad values."""
    int_from_env(["LOOPSCALE_THREADPOOL_SIZE"], 40, 1, 10000)
    raw = os.environ.get("LOOPSCALE_GIL_SWITCH_INTERVAL_MS", "")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 < value <= 1000:
            refuse(f"LOOPSCALE_GIL_SWITCH_INTERVAL_MS must be a number in (0, 1000], got {raw!r}")
    gil = os.environ.get("LOOPSCALE_GIL", "true").lower()
    if gil in ("false", "0"):
        refuse("LOOPSCALE_GIL=false needs a free-threaded CPython (3.13t or later); this is a 3.11 with the GIL")
    if gil not in ("true", "1"):
        refuse(f"LOOPSCALE_GIL={gil!r} is not allowed; allowed values: true, false")
    balancing = os.environ.get("LOOPSCALE_BALANCING", "shared-socket")
    if balancing != "shared-socket":
        refuse(f"LOOPSCALE_BALANCING={balancing!r}: uvicorn --workers only shares the listening socket (shared-socket)")


def main() -> None:
    processes = int_from_env(["LOOPSCALE_PROCESSES", "PROCESSES"], 1, 1, 1024)
    port = int_from_env(["PORT"], 8080, 0, 65535)
    check_thread_pool_knobs()
    uvicorn.run(
        "app:app",
        app_dir=str(Path(__file__).resolve().parent),
        host=os.environ.get("HOST", "0.0.0.0"),
        port=port,
        workers=processes,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=os.environ.get("LOG_LEVEL", "warning"),
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
