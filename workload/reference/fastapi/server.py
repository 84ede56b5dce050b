"""Starts the reference FastAPI app under uvicorn, configured like loopscale's emulation:
LOOPSCALE_PROCESSES (or PROCESSES) worker processes (`uvicorn --workers N`, default 1), PORT
(default 8080), HOST (default 0.0.0.0).

With N > 1 uvicorn binds the socket once in its supervisor and the workers inherit it (the kernel
picks which worker accepts): the emulation's `shared-socket` balancing. Access logs are off, as in
a tuned production setup and as in the Express reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn


def int_from_env(names: list[str], fallback: int, low: int, high: int) -> int:
    for name in names:
        raw = os.environ.get(name, "")
        if raw == "":
            continue
        if not raw.isdigit() or not low <= int(raw) <= high:
            sys.exit(f"{name} must be an integer in {low}..={high}, got {raw!r}")
        return int(raw)
    return fallback


def main() -> None:
    processes = int_from_env(["LOOPSCALE_PROCESSES", "PROCESSES"], 1, 1, 1024)
    port = int_from_env(["PORT"], 8080, 0, 65535)
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
