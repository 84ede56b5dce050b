"""loopscale's reference FastAPI server: the real runtime that the emulated thread-pool mode
(`loopscale-workload serve` with LOOPSCALE_MODE=thread-pool) claims to behave like.

Routes mean the same as the emulation's (see ../README.md):

  /hello                    async def: tiny JSON answer (the framework's own per-request cost)
  /io?ms=N                  async def: await asyncio.sleep (I/O stays on the event loop)
  /cpu?ms=N                 def: FastAPI runs it in anyio's thread pool (40 tokens), under the GIL
  /cpu-inline?ms=N          async def calling the same sync function: the article's code, which
                            runs on the event loop and blocks it
  /mixed?io_ms=N&cpu_ms=M   async def: await asyncio.sleep, then the CPU part in the thread pool
                            (run_in_threadpool), as the emulation's thread-pool mode does
  /offload?ms=N             def: hashlib.pbkdf2_hmac sized to about N ms of CPU; OpenSSL runs it
                            with the GIL released, like C-extension work in a pool thread
  /healthz, /readyz         200 while the worker runs / once its lifespan start-up has finished

Bad parameters get 400 with a one-line reason (FastAPI's default is 422); unknown paths 404.

The routes have no return annotation (like the article's code): FastAPI validates the response of
a `def` route that has one (or a response_model) in the thread pool too, a second trip through
anyio's limiter that waits behind every queued `def` request. Without it each `def` request is one
pool job, as in the emulation.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import time
from contextlib import asynccontextmanager
from typing import Annotated

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_MS = 60_000
"""The emulation's limit: at most 60 s of work per request (each parameter and, for /mixed, their
sum)."""



_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _decimal_only(value: object) -> object:
    """Reads a duration as the emulation does (Rust's f64 syntax, surrounding whitespace
    trimmed); float() alone would also take "inf", "nan" or "1_000"."""
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not _DECIMAL.fullmatch(text):
            raise ValueError("must be a number of milliseconds")
        return text
    return value


Millis = Annotated[float, BeforeValidator(_decimal_only), Query(ge=0, le=MAX_MS)]


def burn_cpu(ms: float) -> int:
    """Busy-loops until this thread's CPU time advanced by `ms` milliseconds.

    `time.thread_time()` counts only while this thread runs, exactly how the emulation counts
    CPU work; a pool thread that waits for the GIL is not running, so it burns on after it wins
    the GIL back. The loop is plain Python bytecode, so it holds the GIL and is preempted only by
    the interpreter's switch interval (5 ms), like any CPU-bound Python code.
    """
    if ms <= 0:
        return 0
    deadline = time.thread_time() + ms / 1000.0
    x = 1
    while True:
        # About 20-40 µs of bytecode between clock reads.
        for _ in range(500):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        if time.thread_time() >= deadline:
            return x


def _measure_pbkdf2_iterations_per_ms() -> float:
    """PBKDF2 iterations per millisecond of CPU here, so /offload?ms=N is about N ms of work."""
    hashlib.pbkdf2_hmac("sha256", b"warm-up", b"salt", 1000)
    iterations = 20_000
    start = time.thread_time()
    hashlib.pbkdf2_hmac("sha256", b"loopscale", b"salt", iterations)
    used = max(time.thread_time() - start, 1e-6)
    return max(1.0, iterations / (used * 1000.0))


_state = {"ready": False, "pbkdf2_iterations_per_ms": 1.0}


def _apply_thread_pool_knobs() -> None:
    """The emulation's thread-pool knobs that real CPython has (server.py validated them):
    anyio's default limiter (FastAPI's `def` routes and run_in_threadpool) and the GIL's switch
    interval."""
    tokens = os.environ.get("LOOPSCALE_THREADPOOL_SIZE", "")
    if tokens:
        anyio.to_thread.current_default_thread_limiter().total_tokens = int(tokens)
    interval_ms = os.environ.get("LOOPSCALE_GIL_SWITCH_INTERVAL_MS", "")
    if interval_ms:
        sys.setswitchinterval(float(interval_ms) / 1000.0)


@asynccontextmanager
async def lifespan(_app: FastAPI):
    _apply_thread_pool_knobs()
    _state["pbkdf2_iterations_per_ms"] = _measure_pbkdf2_iterations_per_ms()
    _state["ready"] = True
    yield
    _state["ready"] = False


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


def _one_line(error: dict) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "query")
    given = error.get("input")
    message = error.get("msg", "invalid value")
    if given is None:
        return f"missing query parameter {location} (milliseconds, 0..={MAX_MS})"
    return f"{location}: {message}, got {given!r}"


@app.exception_handler(RequestValidationError)
async def bad_request(_request: Request, exc: RequestValidationError) -> PlainTextResponse:
    """FastAPI answers 422 with a JSON list by default; loopscale's routes answer 400 with one
    line naming the first bad parameter."""
    errors = exc.errors()
    reason = _one_line(errors[0]) if errors else "bad request"
    return PlainTextResponse(reason + "\n", status_code=400)


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> PlainTextResponse:
    if exc.status_code == 404:
        return PlainTextResponse(f"no route {request.method} {request.url.path}\n", status_code=404)
    return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code)


@app.get("/hello")
async def hello():
    return {"message": "hello"}


@app.get("/io")
async def io(ms: Millis):
    await asyncio.sleep(ms / 1000.0)
    return {"route": "io", "io_ms": ms}


@app.get("/cpu")
def cpu(ms: Millis):
    burn_cpu(ms)
    return {"route": "cpu", "cpu_ms": ms}


@app.get("/cpu-inline")
async def cpu_inline(ms: Millis):
    # The article's mistake on purpose: a sync call inside `async def` runs on the event loop.
    burn_cpu(ms)
    return {"route": "cpu-inline", "cpu_ms": ms}


@app.get("/mixed")
async def mixed(io_ms: Millis, cpu_ms: Millis):
    if io_ms + cpu_ms > MAX_MS:
        raise HTTPException(status_code=400, detail=f"io_ms + cpu_ms must be at most {MAX_MS}, got {io_ms + cpu_ms}")
    await asyncio.sleep(io_ms / 1000.0)
    await run_in_threadpool(burn_cpu, cpu_ms)
    return {"route": "mixed", "io_ms": io_ms, "cpu_ms": cpu_ms}


@app.get("/offload")
def offload(ms: Millis):
    iterations = max(1, round(ms * _state["pbkdf2_iterations_per_ms"]))
    hashlib.pbkdf2_hmac("sha256", b"loopscale", b"salt", iterations)
    return {"route": "offload", "ms": ms}


@app.get("/healthz", response_class=PlainTextResponse)
async def healthz() -> str:
    return "ok\n"


@app.get("/readyz", response_class=PlainTextResponse)
async def readyz() -> PlainTextResponse:
    if _state["ready"]:
        return PlainTextResponse("ready\n")
    return PlainTextResponse("not ready: start-up has not finished\n", status_code=503)
