"""Runs `calibrate --quick` for real (reference servers, emulation, load generator) and checks that
its JSON holds every shape metric for all four implementations, the proposed overhead for both
modes and a comparison for every metric of both pairs. Whether the emulation lands within +-25%
is reported by the table, not asserted here: quick runs on a shared 2-core machine are too short
for that to be a fair pass/fail. Prints PASS/FAIL lines; exits 1 on any failure.

    python3 calibration_quick_test.py [--workload-bin PATH]
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import calibration as cal
import reference_servers as rs

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    passed = failed = 0

    def check(name: str, ok: bool, detail: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"PASS calibrate --quick {name}", flush=True)
        else:
            failed += 1
            print(f"FAIL calibrate --quick {name}: {detail}", flush=True)

    with tempfile.TemporaryDirectory(prefix="loopscale-calibrate-test-") as tmp:
        out = Path(tmp) / "calibration.json"
        cmd = [sys.executable, str(HERE / "calibrate"), "--quick", "--json", str(out), "--work-dir", tmp, *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        check("exits 0", proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
        if proc.returncode == 0:
            print(proc.stdout, flush=True)
        try:
            result = json.loads(out.read_text())
        except (OSError, ValueError) as err:
            check("writes its JSON", False, str(err))
            print(f"calibration quick test: {passed} PASS, {failed} FAIL")
            return 1
        check("writes its JSON", result.get("version") == cal.CALIBRATION_VERSION, f"version {result.get('version')}")
        metrics = result.get("shape_metrics", {})
        for impl in rs.IMPLEMENTATIONS:
            for metric in (*cal.SHAPE_METRICS, *cal.INFORMATION_METRICS):
                value = metrics.get(impl, {}).get(metric)
                check(
                    f"{impl} {metric} is a positive number",
                    isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                    f"got {value!r}",
                )
        for mode in ("event-loop", "thread-pool"):
            proposed = result.get("proposed_overhead_us", {}).get(mode, {})
            for knob in cal.OVERHEADS:
                value = proposed.get(knob.key)
                check(f"proposes {knob.key} for {mode}", isinstance(value, int) and value >= 0, f"got {value!r}")
            walked = result.get("used_overhead_us", {}).get(mode, {}).get(cal.WORKING_SET.key)
            check(
                f"runs the {mode} emulation with its working set",
                walked == cal.WORKING_SET_KIB[mode],
                f"got {walked!r}",
            )
        block = result.get("experiment_overheads_yaml") or ""
        check(
            "gives the overheads as an Experiment's overheadsByMode block",
            block.startswith("overheadsByMode:")
            and "eventLoop: {" in block
            and "threadPool: {" in block
            and f"{cal.WORKING_SET.field}: " in block,
            f"got {block!r}",
        )
        costs = result.get("baseline_costs", {})
        for impl in rs.IMPLEMENTATIONS:
            for scenario in cal.COST_SCENARIOS:
                for key in ("loop_cpu_us_per_request", "cpu_us_per_request"):
                    value = costs.get(impl, {}).get(scenario.name, {}).get(key)
                    check(
                        f"{impl} {scenario.name} {key} measured",
                        isinstance(value, (int, float)) and value > 0,
                        f"got {value!r}",
                    )
        least = result.get("proposal_costs", {})
        for impl in rs.IMPLEMENTATIONS:
            for scenario in cal.COST_SCENARIOS:
                value = least.get(impl, {}).get(scenario.name, {}).get("loop_cpu_us_per_request")
                check(
                    f"{impl} {scenario.name} least loop cost for the proposal",
                    isinstance(value, (int, float)) and value > 0,
                    f"got {value!r}",
                )
        measurements = result.get("measurements", {})
        for impl in rs.IMPLEMENTATIONS:
            runs = measurements.get(impl, {})
            bad = {name: m.get("errors") for name, m in runs.items() if m.get("errors") != 0 or m.get("ok", 0) <= 0}
            check(
                f"{impl}: every scenario served requests without errors",
                set(runs) == {s.name for s in cal.SCENARIOS} and not bad,
                f"scenarios {sorted(runs)}, with errors or nothing served: {bad}",
            )
        comparisons = result.get("comparisons", [])
        complete = [c for c in comparisons if c.get("ratio") is not None and c.get("target")]
        check(
            "compares every metric of both pairs",
            len(complete) == len(cal.PAIRS) * len(cal.SHAPE_METRICS),
            f"{len(complete)} of {len(cal.PAIRS) * len(cal.SHAPE_METRICS)}",
        )
    print(f"calibration quick test: {passed} PASS, {failed} FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
