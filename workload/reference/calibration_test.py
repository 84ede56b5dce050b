"""Unit tests of the calibration's pure computations (no servers, no load), plus the CPU sampler
on a real child process. Prints a PASS/FAIL line per test; exits 1 on any failure.

    python3 calibration_test.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unittest
from pathlib import Path

import calibration as cal


def measurement(
    scenario: str, rps: float, p50: float = 1.0, impl: str = "x", cpu: float | None = None, ok: int = 1000, mean: float | None = None
) -> cal.Measurement:
    loop_cpu = None if cpu is None else cpu / 2
    mean = p50 * 1.5 if mean is None else mean
    return cal.Measurement(scenario, impl, rps, p50, p50 * 2, mean, ok, 0, 1.0, cpu, loop_cpu)


class ShapeMetrics(unittest.TestCase):
    def test_ratios_from_scenarios(self) -> None:
        by = {
            "cpu_p1": [measurement("cpu_p1", 100.0)],
            "cpu_p2": [measurement("cpu_p2", 190.0)],
            "cpu_inline_p1": [measurement("cpu_inline_p1", 105.0)],
            "hello_alone": [measurement("hello_alone", 5000.0, p50=0.2, mean=0.25)],
            # A bimodal p50 (one mode or the other per run) is not what is compared: the mean is.
            "hello_under_cpu": [measurement("hello_under_cpu", 80.0, p50=1.0, mean=12.5)],
            "hello_after_idle": [measurement("hello_after_idle", 50.0, p50=0.7, mean=0.9)],
            "hello_under_cpu_open": [measurement("hello_under_cpu_open", 50.0, p50=60.0, mean=62.9)],
            "io_cost": [measurement("io_cost", 4100.0)],
            "hello_cost": [measurement("hello_cost", 5000.0)],
        }
        m = cal.shape_metrics(by)
        self.assertAlmostEqual(m["cpu_scaling_2p_over_1p"], 1.9)
        self.assertAlmostEqual(m["cpu_inline_over_cpu"], 1.05)
        self.assertAlmostEqual(m["hello_slowdown_under_cpu"], 50.0)
        self.assertAlmostEqual(m["hello_delay_under_cpu"], (12.5 - 0.25) / cal.CPU_MS)
        self.assertAlmostEqual(m["io_over_hello_throughput"], 0.82)
        self.assertAlmostEqual(m["hello_latency_after_idle"], 3.5)
        self.assertAlmostEqual(m["hello_delay_under_cpu_open"], (62.9 - 0.9) / cal.CPU_MS)
        self.assertEqual(set(m), set(cal.SHAPE_METRICS) | set(cal.INFORMATION_METRICS))

    def test_the_added_latency_does_not_follow_the_cost_of_hello_alone(self) -> None:
        # The real runtime's /hello alone costs 0.2 ms in one repetition and 0.35 in the next (the
        # machine slowed), the convoy adds 6.5 ms in both; the emulation's /hello alone stays at
        # 0.2 ms, as a burn of CPU time does, and its convoy adds 6.8 ms. The slowdown ratio
        # compares 35 with 33.5 in the first repetition and with 19.6 in the second (1.32
        # for the median); the added
        # latency compares 0.68 with 0.65 in both, in the open model (the target) as in the closed
        # one (information since version 11).
        def runs(alone_ms: list[float], under_ms: list[float]) -> dict:
            return {
                "hello_alone": [measurement("hello_alone", 1e3 / a, mean=a) for a in alone_ms],
                "hello_under_cpu": [measurement("hello_under_cpu", 1e3 / u, mean=u) for u in under_ms],
                "hello_after_idle": [measurement("hello_after_idle", 50.0, mean=a) for a in alone_ms],
                "hello_under_cpu_open": [measurement("hello_under_cpu_open", 50.0, mean=u) for u in under_ms],
            }

        metrics = {
            "fastapi": cal.shape_metrics(runs([0.2, 0.35], [6.7, 6.85])),
            "emulated-thread-pool": cal.shape_metrics(runs([0.2, 0.2], [7.0, 7.0])),
        }
        comparisons = {(c.real, c.metric): c for c in cal.compare(metrics)}
        for metric, target in (("hello_delay_under_cpu_open", True), ("hello_delay_under_cpu", False)):
            delay = comparisons[("fastapi", metric)]
            self.assertAlmostEqual(delay.real_value, 0.65)
            self.assertAlmostEqual(delay.ratio, 0.68 / 0.65)
            self.assertEqual(delay.target, target)
            self.assertEqual(delay.within_target, True if target else None)
        slowdown = comparisons[("fastapi", "hello_slowdown_under_cpu")]
        self.assertAlmostEqual(slowdown.real_value, (6.7 / 0.2 + 6.85 / 0.35) / 2)
        self.assertGreater(slowdown.ratio, 1.25)
        self.assertFalse(slowdown.target)
        self.assertIsNone(slowdown.within_target)

    def test_each_ratio_is_taken_within_a_repetition_then_the_median(self) -> None:
        # The machine is half as fast in the second repetition: both sides of the ratio move, the
        # ratio does not (0.8 in both); the third's /io is disturbed alone (0.667). The ratio of
        # the medians (3000 / 4500 = 0.667) would follow the disturbed one.
        by = {
            "io_cost": [measurement("io_cost", rps) for rps in (4000.0, 2000.0, 3000.0)],
            "hello_cost": [measurement("hello_cost", rps) for rps in (5000.0, 2500.0, 4500.0)],
        }
        self.assertAlmostEqual(cal.shape_metrics(by)["io_over_hello_throughput"], 0.8)

    def test_missing_or_zero_gives_none_not_a_crash(self) -> None:
        m = cal.shape_metrics({"cpu_p2": [measurement("cpu_p2", 10.0)], "cpu_p1": [measurement("cpu_p1", 0.0)]})
        self.assertIsNone(m["cpu_scaling_2p_over_1p"])
        self.assertIsNone(m["hello_slowdown_under_cpu"])
        self.assertIsNone(m["hello_delay_under_cpu"])
        self.assertIsNone(m["hello_delay_under_cpu_open"])
        self.assertIsNone(m["io_over_hello_throughput"])


class Proposal(unittest.TestCase):
    def test_difference_of_cpu_costs(self) -> None:
        self.assertEqual(cal.propose_overhead_us(85.4, 20.0), 65)

    def test_never_negative(self) -> None:
        self.assertEqual(cal.propose_overhead_us(10.0, 30.0), 0)

    def test_unknown_cost(self) -> None:
        self.assertIsNone(cal.propose_overhead_us(None, 30.0))
        self.assertIsNone(cal.propose_overhead_us(50.0, None))

    @staticmethod
    def costs(hello: float | None, io: float | None, new_connection: float | None = None) -> dict:
        return {
            "hello_cost": {"loop_cpu_us_per_request": hello},
            "io_cost": {"loop_cpu_us_per_request": io},
            "connection_cost": {"loop_cpu_us_per_request": new_connection},
        }

    def test_request_from_hello_resume_and_connection_from_what_they_cost_more(self) -> None:
        # Real: /hello 200 us, /io 300 us, /hello on a new connection 310 us; emulation at zero:
        # 20, 28 (its timer costs 8 itself) and 45 (its accept and close cost 25).
        got = cal.propose_overheads(self.costs(200.0, 300.0, 310.0), self.costs(20.0, 28.0, 45.0))
        self.assertEqual(got, {"request_us": 180, "resume_us": 92, "connection_us": 85})

    def test_a_wait_that_costs_nothing_more_gives_no_resume_overhead(self) -> None:
        got = cal.propose_overheads(self.costs(230.0, 210.0, 220.0), self.costs(20.0, 28.0, 45.0))
        self.assertEqual(got, {"request_us": 210, "resume_us": 0, "connection_us": 0})

    def test_missing_costs_give_none(self) -> None:
        got = cal.propose_overheads(self.costs(200.0, None, 300.0), self.costs(20.0, 28.0, None))
        self.assertEqual(got, {"request_us": 180, "resume_us": None, "connection_us": None})
        self.assertEqual(
            cal.propose_overheads({}, {}), {"request_us": None, "resume_us": None, "connection_us": None}
        )

    def test_own_costs_take_out_what_each_scenario_paid(self) -> None:
        ran_with = self.costs(200.0, 300.0, 310.0)
        used = {"request_us": 180, "resume_us": 92, "connection_us": 85}
        own = cal.own_costs(ran_with, used)
        self.assertEqual(own, self.costs(20.0, 28.0, 45.0))
        # A real runtime that cost exactly what the emulation did is proposed the same overheads.
        self.assertEqual(cal.propose_overheads(ran_with, own), used)
        # One that cost 20% more on /hello is proposed 40 us more per request.
        dearer = self.costs(240.0, 340.0, 350.0)
        self.assertEqual(cal.propose_overheads(dearer, own)["request_us"], 220)
        self.assertEqual(cal.own_costs({}, used), {})

    def test_the_second_proposal_takes_out_the_own_cost_the_emulation_had_with_the_first(self) -> None:
        # Step 1: real /hello 200 us, the emulation at zero 20: propose 180 (resume 92, connection
        # 85). Step 1b: with those, the emulation's own part of every scenario grew by 30 us
        # (/hello 50 + 180, /io 58 + 180 + 92, a new connection 75 + 180 + 85); the real runtime
        # cost the same again.
        real = self.costs(200.0, 300.0, 310.0)
        first = cal.propose_overheads(real, self.costs(20.0, 28.0, 45.0))
        at_first = self.costs(230.0, 330.0, 340.0)
        second = cal.propose_overheads(real, cal.own_costs(at_first, first))
        # The request overhead comes down by the 30 us; the differences stay.
        self.assertEqual(second, {"request_us": 150, "resume_us": 92, "connection_us": 85})

    def test_given_overheads_win_and_unmeasured_ones_are_zero(self) -> None:
        proposal = {
            "event-loop": {"request_us": 150, "resume_us": None, "connection_us": 90},
            "thread-pool": {"request_us": 140, "resume_us": 50, "connection_us": 80},
        }
        given = {
            "event-loop": {"request_us": None, "resume_us": None, "connection_us": 0},
            "thread-pool": {"request_us": 200, "resume_us": None, "connection_us": None},
        }
        ws = cal.WORKING_SET_KIB
        self.assertEqual(
            cal.with_given(proposal, given),
            {
                "event-loop": {"request_us": 150, "resume_us": 0, "connection_us": 0, "working_set_kib": ws["event-loop"]},
                "thread-pool": {"request_us": 200, "resume_us": 50, "connection_us": 80, "working_set_kib": ws["thread-pool"]},
            },
        )

    def test_the_working_set_is_the_models_unless_given_and_never_proposed(self) -> None:
        proposal = {"thread-pool": {"request_us": 140, "working_set_kib": 4096}}
        used = cal.with_given(proposal, {})
        self.assertEqual(used["thread-pool"]["working_set_kib"], cal.WORKING_SET_KIB["thread-pool"])
        self.assertEqual(used["event-loop"], {"request_us": 0, "resume_us": 0, "connection_us": 0, "working_set_kib": cal.WORKING_SET_KIB["event-loop"]})
        used = cal.with_given(proposal, {"thread-pool": {"working_set_kib": 0}})
        self.assertEqual(used["thread-pool"]["working_set_kib"], 0)
        self.assertEqual(used["thread-pool"]["request_us"], 140)
        args = cal.parse_args(["--working-set-thread-pool-kib", "256"])
        self.assertEqual(args.working_set_thread_pool_kib, 256)
        self.assertIsNone(args.working_set_event_loop_kib)

    def test_environment_of_the_emulation(self) -> None:
        env = cal.overhead_env({"request_us": 180, "resume_us": None, "connection_us": 85, "working_set_kib": 512})
        self.assertEqual(
            env,
            {
                "LOOPSCALE_REQUEST_OVERHEAD_US": "180",
                "LOOPSCALE_RESUME_OVERHEAD_US": "0",
                "LOOPSCALE_CONNECTION_OVERHEAD_US": "85",
                "LOOPSCALE_WORKING_SET_KIB": "512",
            },
        )
        self.assertEqual(cal.overhead_env(None)["LOOPSCALE_CONNECTION_OVERHEAD_US"], "0")

    def test_the_connection_scenario_opens_a_connection_per_request(self) -> None:
        argv = cal.load_argv(Path("/bin/load"), 8080, "/hello", 32, 1.0, 4.0, Path("r.json"), keep_alive=False)
        self.assertIn("--disable-keepalive", argv)
        self.assertNotIn("--disable-keepalive", cal.load_argv(Path("/bin/load"), 8080, "/hello", 32, 1.0, 4.0, Path("r.json")))
        by_name = {s.name: s for s in cal.COST_SCENARIOS}
        self.assertFalse(by_name[cal.CONNECTION_SCENARIO].keep_alive)
        self.assertEqual(by_name[cal.CONNECTION_SCENARIO].path, by_name[cal.REQUEST_SCENARIO].path)

    def test_the_cpu_scenarios_open_a_connection_per_request_on_both_sides_of_each_ratio(self) -> None:
        # Kept alive, a shared socket's race gives one worker all 8 connections in some
        # repetitions and the 2-process throughput collapses to the 1-process one (version 10).
        by_name = {s.name: s for s in cal.SCENARIOS}
        for name in ("cpu_p1", "cpu_p2", "cpu_inline_p1"):
            scenario = by_name[name]
            self.assertFalse(scenario.keep_alive, name)
            argv = cal.load_argv(Path("/bin/load"), 8080, scenario.path, scenario.concurrency, 1.0, 4.0, Path("r.json"), scenario.keep_alive)
            self.assertIn("--disable-keepalive", argv, name)
        self.assertEqual((by_name["cpu_p1"].processes, by_name["cpu_p2"].processes), (1, 2))

    def test_the_idle_scenario_sends_at_a_fixed_rate_on_one_connection(self) -> None:
        idle = next(s for s in cal.SCENARIOS if s.name == "hello_after_idle")
        argv = cal.load_argv(Path("/bin/load"), 8080, idle.path, idle.concurrency, 1.0, 4.0, Path("r.json"), rate=idle.rate)
        self.assertEqual(argv[argv.index("--model") + 1 : argv.index("--model") + 4], ["open", "--rate", "50"])
        self.assertEqual(argv[argv.index("--connections") + 1], "1")
        closed = cal.load_argv(Path("/bin/load"), 8080, "/hello", 1, 1.0, 4.0, Path("r.json"))
        self.assertEqual(closed[closed.index("--model") + 1], "closed")
        self.assertNotIn("--rate", closed)
        # Paired with /hello back to back: both run in one group, on one server, in turn.
        self.assertTrue(any({"hello_alone", "hello_after_idle"} <= set(group) for group in cal.SCENARIO_GROUPS))

    def test_the_open_convoy_sends_at_the_idle_rate_under_cpu_beside_its_baseline(self) -> None:
        by_name = {s.name: s for s in cal.SCENARIOS}
        open_ = by_name["hello_under_cpu_open"]
        self.assertEqual(open_.rate, by_name["hello_after_idle"].rate)
        self.assertEqual(open_.path, "/hello")
        self.assertEqual((open_.background_path, open_.background_concurrency), (by_name["hello_under_cpu"].background_path, 4))
        # Express keeps a /hello 40-80 ms under 4 /cpu: at 50 req/s that is up to 4 in flight.
        self.assertGreaterEqual(open_.concurrency * 1000 / open_.rate, 80 * 2)
        self.assertTrue(any({"hello_after_idle", "hello_under_cpu_open"} <= set(group) for group in cal.SCENARIO_GROUPS))


class ExperimentSnippet(unittest.TestCase):
    def test_each_mode_gets_its_overheads_as_experiment_fields(self) -> None:
        yaml = cal.overheads_by_mode_yaml(
            {
                "event-loop": {"request_us": 160, "resume_us": 47, "connection_us": 158},
                "thread-pool": {"request_us": 126, "resume_us": None, "connection_us": 79, "working_set_kib": 256},
            }
        )
        self.assertEqual(
            yaml,
            "overheadsByMode:\n"
            "  eventLoop: {requestOverheadUs: 160, resumeOverheadUs: 47, connectionOverheadUs: 158}\n"
            "  threadPool: {requestOverheadUs: 126, connectionOverheadUs: 79, workingSetKiB: 256}",
        )

    def test_nothing_measured_gives_nothing_to_paste(self) -> None:
        self.assertEqual(cal.overheads_by_mode_yaml({"event-loop": {"request_us": None}}), "")


class Compare(unittest.TestCase):
    def metrics(self, real: float, emulated: float) -> dict:
        return {
            "express": {"cpu_scaling_2p_over_1p": real},
            "emulated-event-loop": {"cpu_scaling_2p_over_1p": emulated},
        }

    def find(self, comparisons, real: str, metric: str) -> cal.Comparison:
        return next(c for c in comparisons if c.real == real and c.metric == metric)

    def test_tolerance_edges(self) -> None:
        for emulated, within in ((1.25, True), (1.26, False), (0.75, True), (0.74, False), (1.0, True)):
            c = self.find(cal.compare(self.metrics(1.0, emulated)), "express", "cpu_scaling_2p_over_1p")
            self.assertAlmostEqual(c.ratio, emulated)
            self.assertEqual(c.within_target, within, emulated)

    def test_every_metric_of_both_pairs_and_none_when_missing(self) -> None:
        comparisons = cal.compare(self.metrics(2.0, 1.9))
        self.assertEqual(len(comparisons), 2 * (len(cal.SHAPE_METRICS) + len(cal.INFORMATION_METRICS)))
        self.assertEqual(sum(c.target for c in comparisons), 2 * len(cal.SHAPE_METRICS))
        missing = self.find(comparisons, "fastapi", "io_over_hello_throughput")
        self.assertIsNone(missing.ratio)
        self.assertIsNone(missing.within_target)

    def test_table_has_a_row_per_metric_and_the_proposal(self) -> None:
        costs = {"express": {"io_cost": {"loop_cpu_us_per_request": 300.0}}, "emulated-event-loop": {"io_cost": {"loop_cpu_us_per_request": 150.0}}}
        overheads = {
            "event-loop": {"request_us": 60, "resume_us": 0, "connection_us": 40},
            "thread-pool": {"request_us": None, "resume_us": 90, "connection_us": 85},
        }
        table = cal.render_table(cal.compare(self.metrics(2.0, 1.0)), costs, overheads)
        self.assertIn("| CPU us per /io?ms=50, 256 in flight, event-loop thread | 300 | 150 | 0.50 |", table)
        self.assertIn("| CPU us per /hello, 1 in flight, event-loop thread |", table)
        for metric in cal.SHAPE_METRICS:
            self.assertIn(f"| {metric} |", table)
        for metric in cal.INFORMATION_METRICS:
            self.assertIn(f"| {metric} (information, not a target) |", table)
        self.assertIn("0.50 OFF", table)
        self.assertIn("LOOPSCALE_REQUEST_OVERHEAD_US: event-loop = 60, thread-pool = -", table)
        self.assertIn("LOOPSCALE_RESUME_OVERHEAD_US: event-loop = 0, thread-pool = 90", table)
        self.assertIn("LOOPSCALE_CONNECTION_OVERHEAD_US: event-loop = 40, thread-pool = 85", table)
        self.assertIn("| CPU us per /hello on a new connection, 32 in flight, event-loop thread |", table)


class Groups(unittest.TestCase):
    def test_every_scenario_in_exactly_one_group_and_ratio_sides_together(self) -> None:
        grouped = [name for group in cal.SCENARIO_GROUPS for name in group]
        self.assertEqual(sorted(grouped), sorted(s.name for s in cal.SCENARIOS))
        group_of = {name: i for i, group in enumerate(cal.SCENARIO_GROUPS) for name in group}
        for a, b in (("cpu_p1", "cpu_p2"), ("hello_alone", "hello_under_cpu"), ("cpu_p1", "cpu_inline_p1")):
            self.assertEqual(group_of[a], group_of[b], (a, b))


class GilSweepTable(unittest.TestCase):
    def test_cells_and_missing(self) -> None:
        sweep = {"fastapi": {"1": {"p50_ms": 0.46, "mean_ms": 3.1, "p99_ms": 10.4}, "2": {"p50_ms": 0.5, "p99_ms": 9.0}}}
        table = cal.render_gil_sweep(sweep)
        self.assertIn("| real FastAPI | 0.46 / 3.10 / 10.40 | 0.50 / - / 9.00 | - | - |", table)
        self.assertIn("| emulated thread-pool | - | - | - | - |", table)


class Costs(unittest.TestCase):
    def test_the_resume_overhead_is_fitted_where_the_io_metric_is_measured(self) -> None:
        # Fitted at /io?ms=1 and 32 in flight, it left /io throughput at 256 in flight 1.23-1.43x
        # the real runtimes' (session 6): the /io premium grows with concurrency and wait.
        resume = next(s for s in cal.COST_SCENARIOS if s.name == cal.RESUME_SCENARIO)
        self.assertEqual((resume.path, resume.concurrency, resume.processes), (f"/io?ms={cal.IO_MS}", cal.IO_CONCURRENCY, 1))
        self.assertTrue(resume.measure_cpu)
        by = {cal.RESUME_SCENARIO: [measurement(cal.RESUME_SCENARIO, 3900.0)], cal.REQUEST_SCENARIO: [measurement(cal.REQUEST_SCENARIO, 5200.0)]}
        self.assertAlmostEqual(cal.shape_metrics(by)["io_over_hello_throughput"], 0.75)

    def test_costs_of_the_cpu_sampled_scenarios_that_ran(self) -> None:
        summary = {
            "express": {
                "io_cost": measurement("io_cost", 3000.0, cpu=0.9, ok=3000),
                "cpu_p1": measurement("cpu_p1", 95.0, cpu=0.9, ok=380),
            }
        }
        costs = cal.costs_of(summary)
        self.assertAlmostEqual(costs["express"]["io_cost"]["cpu_us_per_request"], 300.0)
        self.assertAlmostEqual(costs["express"]["io_cost"]["loop_cpu_us_per_request"], 150.0)
        # Not run: absent, not a row of Nones. Not CPU-sampled: absent too.
        self.assertEqual(set(costs["express"]), {"io_cost"})
        self.assertTrue(
            {cal.REQUEST_SCENARIO, cal.RESUME_SCENARIO, cal.CONNECTION_SCENARIO} <= {s.name for s in cal.COST_SCENARIOS}
        )
        self.assertIn("hello_alone", {s.name for s in cal.CPU_SCENARIOS})


class LeastCosts(unittest.TestCase):
    def test_the_least_loop_cost_over_the_repetitions_of_each_cpu_sampled_scenario(self) -> None:
        results = {
            "express": {
                # 150, 75 (the least) and 100 us per request on the loop thread.
                "hello_cost": [
                    measurement("hello_cost", 1.0, cpu=0.3, ok=1000),
                    measurement("hello_cost", 1.0, cpu=0.3, ok=2000),
                    measurement("hello_cost", 1.0, cpu=0.4, ok=2000),
                ],
                # Not CPU-sampled: absent.
                "cpu_p1": [measurement("cpu_p1", 95.0, cpu=0.9, ok=380)],
                # CPU-sampled, but no sample in any repetition: absent, not None.
                "io_cost": [measurement("io_cost", 3000.0)],
            }
        }
        least = cal.least_costs(results)
        self.assertEqual(set(least["express"]), {"hello_cost"})
        self.assertAlmostEqual(least["express"]["hello_cost"]["loop_cpu_us_per_request"], 75.0)

    def test_the_least_ignores_disturbed_repetitions_that_the_median_follows(self) -> None:
        def runs(*loop_us: float) -> list:
            return [measurement("hello_cost", 1.0, cpu=us * 2 / 1e6 * 1000, ok=1000) for us in loop_us]

        quiet = {"express": {"hello_cost": runs(160, 161, 162)}, "emulated-event-loop": {"hello_cost": runs(12, 12, 13)}}
        # Session 5's second run: two of three repetitions on a busier machine.
        busy = {"express": {"hello_cost": runs(166.7, 199.8, 219.6)}, "emulated-event-loop": {"hello_cost": runs(11.5, 13.1, 13.4)}}
        for results, expected in ((quiet, 148), (busy, 155)):
            least = cal.least_costs(results)
            proposal = cal.propose_overheads(least["express"], least["emulated-event-loop"])
            self.assertEqual(proposal["request_us"], expected)
        median = cal.costs_of(cal.summarise(busy))
        self.assertEqual(cal.propose_overheads(median["express"], median["emulated-event-loop"])["request_us"], 187)


class CostsForProposal(unittest.TestCase):
    @staticmethod
    def runs(scenario: str, *loop_us: float) -> list:
        return [measurement(scenario, 1.0, cpu=us * 2 / 1e6 * 1000, ok=1000) for us in loop_us]

    def test_premiums_are_ratios_within_a_repetition_scaled_to_the_least_hello(self) -> None:
        # /hello 200, 260, 240 us; /io 500 (a disturbed repetition), 325, 300: ratios 2.5, 1.25,
        # 1.25. The least of each (300 - 200) says /io costs 100 us more; within a repetition it
        # costs 25% more, 50 us at the least /hello.
        results = {
            "fastapi": {
                "hello_cost": self.runs("hello_cost", 200, 260, 240),
                "io_cost": self.runs("io_cost", 500, 325, 300),
                "connection_cost": self.runs("connection_cost", 300, 390, 360),
                "cpu_p1": [measurement("cpu_p1", 95.0)],
            },
            "emulated-thread-pool": {
                "hello_cost": self.runs("hello_cost", 20, 21, 20),
                "io_cost": self.runs("io_cost", 30, 31, 30),
                "connection_cost": self.runs("connection_cost", 45, 46, 45),
            },
        }
        costs = cal.costs_for_proposal(results)
        self.assertEqual(set(costs["fastapi"]), {"hello_cost", "io_cost", "connection_cost"})
        self.assertAlmostEqual(costs["fastapi"]["hello_cost"]["loop_cpu_us_per_request"], 200.0)
        self.assertAlmostEqual(costs["fastapi"]["io_cost"]["loop_cpu_us_per_request"], 250.0)
        self.assertAlmostEqual(costs["fastapi"]["connection_cost"]["loop_cpu_us_per_request"], 300.0)
        proposal = cal.propose_per_mode(costs | {"express": {}, "emulated-event-loop": {}}, {})["thread-pool"]
        # request 200 - 20; resume (250 - 200) - (30 - 20); connection (300 - 200) - (45 - 20).
        self.assertEqual(proposal, {"request_us": 180, "resume_us": 40, "connection_us": 75})
        least = cal.least_costs(results)
        self.assertEqual(cal.propose_overheads(least["fastapi"], least["emulated-thread-pool"])["resume_us"], 90)

    def test_pooled_steps_keep_each_repetition_paired(self) -> None:
        step1 = {"express": {"hello_cost": self.runs("hello_cost", 300, 310), "io_cost": self.runs("io_cost", 360, 372)}}
        step1b = {"express": {"hello_cost": self.runs("hello_cost", 200), "io_cost": self.runs("io_cost", 240)}}
        both = cal.pooled(step1, step1b)
        self.assertEqual(len(both["express"]["io_cost"]), 3)
        costs = cal.costs_for_proposal(both)["express"]
        self.assertAlmostEqual(costs["hello_cost"]["loop_cpu_us_per_request"], 200.0)
        self.assertAlmostEqual(costs["io_cost"]["loop_cpu_us_per_request"], 240.0)
        self.assertNotIn("connection_cost", costs)


class Medians(unittest.TestCase):
    def test_median_per_field(self) -> None:
        runs = [
            measurement("hello_cost", 100.0, p50=1.0, cpu=0.10, ok=1000),  # 100 us/req
            measurement("hello_cost", 300.0, p50=9.0, cpu=0.40, ok=2000),  # 200 us/req
            measurement("hello_cost", 200.0, p50=2.0, cpu=0.90, ok=3000),  # 300 us/req
        ]
        m = cal.median_measurement(runs)
        self.assertEqual(m.throughput_rps, 200.0)
        self.assertEqual(m.p50_ms, 2.0)
        self.assertAlmostEqual(m.cpu_us_per_request, 200.0)
        self.assertAlmostEqual(m.loop_cpu_us_per_request, 100.0)

    def test_no_cpu_sample(self) -> None:
        m = cal.median_measurement([measurement("cpu_p1", 1.0), measurement("cpu_p1", 3.0)])
        self.assertIsNone(m.cpu_us_per_request)
        self.assertEqual(m.throughput_rps, 2.0)


class LoadCommand(unittest.TestCase):
    def test_closed_model_flags_of_the_contract(self) -> None:
        argv = cal.load_argv(cal.Path("/bin/lw"), 8123, "/cpu?ms=10", 8, 0.5, 1.25, cal.Path("/tmp/r.json"))
        self.assertEqual(argv[:2], ["/bin/lw", "load"])
        flags = dict(zip(argv[2::2], argv[3::2]))
        self.assertEqual(
            flags,
            {
                "--target": "http://127.0.0.1:8123",
                "--model": "closed",
                "--concurrency": "8",
                "--connections": "8",
                "--warmup": "500ms",
                "--duration": "1250ms",
                "--timeout": "30s",
                "--path": "/cpu?ms=10",
                "--report": "/tmp/r.json",
            },
        )

    def test_quick_defaults_and_bad_flags(self) -> None:
        args = cal.parse_args(["--quick"])
        self.assertEqual((args.duration, args.warmup, args.repetitions, args.prime), (2.0, 0.5, 1, 2.0))
        args = cal.parse_args([])
        self.assertEqual((args.duration, args.warmup, args.repetitions, args.prime), (4.0, 1.0, 3, 5.0))
        with open(os.devnull, "w") as devnull:
            stderr, sys.stderr = sys.stderr, devnull
            try:
                for bad in (
                    ["--duration", "0"],
                    ["--repetitions", "0"],
                    ["--prime", "0"],
                    ["--overhead-event-loop-us", "-5"],
                    ["--resume-thread-pool-us", "-1"],
                    ["--connection-event-loop-us", "-1"],
                ):
                    with self.assertRaises(SystemExit):
                        cal.parse_args(bad)
            finally:
                sys.stderr = stderr

    def test_gil_sweep_only_uses_the_given_overhead_or_the_latest_calibrations(self) -> None:
        self.assertTrue(cal.parse_args(["--gil-sweep-only"]).gil_sweep_only)
        self.assertFalse(cal.parse_args([]).gil_sweep_only)
        latest = json.loads(cal.LATEST.read_text())["used_overhead_us"]["thread-pool"]
        none = {"request_us": None, "resume_us": None, "connection_us": None, "working_set_kib": None}
        zero = {"request_us": 0, "resume_us": 0, "connection_us": 0, "working_set_kib": 0}
        self.assertEqual(
            cal.sweep_overheads(none),
            {**{key: int(latest.get(key) or 0) for key in zero}, "working_set_kib": cal.WORKING_SET_KIB["thread-pool"]},
        )
        self.assertEqual(cal.sweep_overheads({**none, "request_us": 300})["request_us"], 300)
        self.assertEqual(cal.sweep_overheads({**none, "request_us": 300})["resume_us"], latest["resume_us"])
        self.assertEqual(cal.sweep_overheads(zero), zero)
        self.assertEqual(cal.sweep_overheads({**none, "working_set_kib": 0}, Path("/nonexistent.json")), zero)
        args = cal.parse_args(["--gil-sweep-only", "--connection-thread-pool-us", "85"])
        self.assertEqual(args.connection_thread_pool_us, 85)


class CpuDelta(unittest.TestCase):
    def test_total_and_busiest_thread(self) -> None:
        before = {(1, 1): 2.0, (1, 2): 0.5, (3, 3): 1.0}
        after = {(1, 1): 3.5, (1, 2): 0.7, (3, 3): 1.1, (3, 9): 0.3}  # (3, 9) was born in between
        total, busiest = cal.cpu_delta(before, after)
        self.assertAlmostEqual(total, 1.5 + 0.2 + 0.1 + 0.3)
        self.assertAlmostEqual(busiest, 1.5)
        self.assertEqual(cal.cpu_delta({}, {}), (0.0, 0.0))


class CpuSampler(unittest.TestCase):
    def test_counts_a_busy_child_group(self) -> None:
        burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.4: pass\ntime.sleep(5)"
        proc = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            cpu = 0.0
            while time.monotonic() < deadline:
                cpu = cal.process_group_cpu_secs(proc.pid)
                if cpu >= 0.4:
                    break
                time.sleep(0.1)
            self.assertGreaterEqual(cpu, 0.4)
            self.assertLess(cpu, 2.0)
            self.assertEqual(cal.process_group_cpu_secs(2**22 + 12345), 0.0)
            threads = cal.process_group_thread_cpu(proc.pid)
            self.assertIn((proc.pid, proc.pid), threads)
            self.assertGreaterEqual(threads[(proc.pid, proc.pid)], 0.4)
        finally:
            proc.kill()
            proc.wait()


class PassFailResult(unittest.TextTestResult):
    """One PASS/FAIL line per test, the format ./test counts."""

    def addSuccess(self, test) -> None:
        super().addSuccess(test)
        print(f"PASS calibration unit {test.id().split('.', 1)[1]}", flush=True)

    def addFailure(self, test, err) -> None:
        super().addFailure(test, err)
        print(f"FAIL calibration unit {test.id().split('.', 1)[1]}: {self._exc_info_to_string(err, test)}", flush=True)

    def addError(self, test, err) -> None:
        super().addError(test, err)
        print(f"FAIL calibration unit {test.id().split('.', 1)[1]}: {self._exc_info_to_string(err, test)}", flush=True)


if __name__ == "__main__":
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    with open(os.devnull, "w") as quiet:
        result = unittest.TextTestRunner(stream=quiet, resultclass=PassFailResult, verbosity=0).run(suite)
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
