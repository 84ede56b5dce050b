"""Parity of the reference servers with the emulation they calibrate: the same requests get the
same status codes from real Express and `loopscale-workload serve` in event-loop mode, and from
real FastAPI and thread-pool mode (bodies differ: the reference servers answer JSON, as typical
apps do; the emulation plain text). Prints PASS/FAIL lines; exits 1 on any failure.

    python3 parity_test.py [--workload-bin PATH]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import calibration as cal
import reference_servers as rs

REQUESTS = [
    ("GET", "/hello"),
    ("GET", "/io?ms=5"),
    ("GET", "/io?ms=0"),
    ("GET", "/io?ms=1.5"),
    ("GET", "/io?ms=1e1"),
    ("GET", "/io?ms=%202"),
    ("GET", "/cpu?ms=3"),
    ("GET", "/cpu-inline?ms=3"),
    ("GET", "/mixed?io_ms=2&cpu_ms=2"),
    ("GET", "/offload?ms=3"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/io"),
    ("GET", "/io?ms="),
    ("GET", "/io?ms=abc"),
    ("GET", "/io?ms=-1"),
    ("GET", "/io?ms=60001"),
    ("GET", "/io?ms=inf"),
    ("GET", "/io?ms=NaN"),
    ("GET", "/io?ms=0x10"),
    ("GET", "/cpu?ms=60000.5"),
    ("GET", "/cpu-inline"),
    ("GET", "/offload?ms=x"),
    ("GET", "/mixed?io_ms=1"),
    ("GET", "/mixed?cpu_ms=1"),
    ("GET", "/mixed?io_ms=30000&cpu_ms=30001"),
    ("GET", "/nope"),
    ("GET", "/"),
    ("GET", "/hello/extra"),
    ("POST", "/hello"),
    ("GET", "/io?ms=1&ms=2"),
]

KNOWN_DIFFERENCES = {
    ("fastapi", "GET", "/io?ms=1&ms=2"): "FastAPI takes the last of repeated parameters (200); the emulation answers 400",
}
"""Requests where a real framework's own behaviour differs from the emulation on purpose; each is
checked to still differ (so the list stays true), not skipped."""


def main(argv: list[str]) -> int:
    workload_bin = cal.find_workload_bin(argv[1] if len(argv) == 2 and argv[0] == "--workload-bin" else None)
    passed = failed = 0

    def check(name: str, ok: bool, detail: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"PASS parity {name}", flush=True)
        else:
            failed += 1
            print(f"FAIL parity {name}: {detail}", flush=True)

    with tempfile.TemporaryDirectory(prefix="loopscale-parity-") as tmp:
        for real, emulated in cal.PAIRS:
            servers = []
            try:
                for name in (real, emulated):
                    servers.append(rs.start(name, 1, Path(tmp), workload_bin))
            except (RuntimeError, OSError) as err:
                check(f"{real} and {emulated} start", False, str(err))
                for server in servers:
                    server.stop()
                continue
            real_server, emulated_server = servers
            try:
                for method, path in REQUESTS:
                    try:
                        want = rs.get(emulated_server.port, path, method=method).status
                        got = rs.get(real_server.port, path, method=method).status
                    except OSError as err:
                        check(f"{real} {method} {path}", False, f"request failed: {err}")
                        continue
                    known = KNOWN_DIFFERENCES.get((real, method, path))
                    if known:
                        check(f"{real} {method} {path} differs as documented ({known})", got != want, f"both {got}")
                    else:
                        check(
                            f"{real} {method} {path} -> {want} as {emulated}",
                            got == want,
                            f"{real} answered {got}, {emulated} {want}",
                        )
            finally:
                for server in servers:
                    server.stop()
    print(f"parity: {passed} PASS, {failed} FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
