#!/usr/bin/env python3
"""How much each runtime's convoy figure moves from one full calibrate run to the next (session 16).

Reads calibrate JSON files (`calibrate --json F`, any version from 9) and prints, per run, each
implementation's `hello_delay_under_cpu` (closed model: /hello at 1 in flight) and
`hello_delay_under_cpu_open` (/hello at a constant rate), in /cpu jobs, then each figure's range
over the runs and its largest / smallest. A runtime figure that moves by more than the
tolerance between runs of the same code on the same machine cannot be a per-run target.

    workload/reference/experiments/convoy_reproducibility.py /tmp/s1*/cal-*.json

Session 16, the 13 full runs of sessions 11-15 (F-R): closed model, Express 4.83-6.48 (1.34x),
FastAPI 0.31-0.70 (2.25x); open model, Express 6.14-6.29 (1.02x), FastAPI 1.34-1.47 (1.10x).
So calibrate version 11 takes the open-model figure as the target.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IMPLEMENTATIONS = ("express", "fastapi", "emulated-event-loop", "emulated-thread-pool")
FIGURES = ("hello_delay_under_cpu", "hello_delay_under_cpu_open")


def figures(path: Path) -> dict[str, dict[str, float | None]]:
    """{implementation: {figure: value}} of one calibrate JSON."""
    metrics = json.loads(path.read_text())["shape_metrics"]
    return {impl: {f: metrics.get(impl, {}).get(f) for f in FIGURES} for impl in IMPLEMENTATIONS}


def spread(values: list[float]) -> tuple[float, float, float] | None:
    """(least, largest, largest / least) of the positive values, None if there are none."""
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return min(values), max(values), max(values) / min(values)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    runs = {Path(a).name: figures(Path(a)) for a in argv}
    short = {"express": "Express", "fastapi": "FastAPI", "emulated-event-loop": "EL", "emulated-thread-pool": "TP"}
    print("run".ljust(24) + "".join(f"{short[i] + ' closed / open':>23}" for i in IMPLEMENTATIONS))
    for name, by in runs.items():
        cells = "".join(
            f"{by[i][FIGURES[0]] or 0:>16.2f} / {by[i][FIGURES[1]] or 0:4.2f}" for i in IMPLEMENTATIONS
        )
        print(name.ljust(24) + cells)
    print()
    for impl in IMPLEMENTATIONS:
        for figure in FIGURES:
            s = spread([by[impl][figure] for by in runs.values()])
            if s:
                print(f"{impl:22} {figure:28} {s[0]:.2f}-{s[1]:.2f} ({s[2]:.2f}x over {len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
