//! Data-plane predictions of the model, on the real binary over loopback. Each test takes the
//! serial lock: on a 2-core machine, two load tests at once would measure each other.
//! Tolerances are the issue's: wide enough for a noisy machine, tight enough that a wrong model
//! (a sleeping `/cpu`, a GIL that does not serialize, a loop that is not blocked) fails.

mod serve_support;

use std::time::Duration;

use serve_support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn event_loop_io_200ms_with_50_clients_serves_about_250_per_second() {
    let _serial = serial();
    let server = Server::start(&[("LOOPSCALE_MODE", "event-loop")]);
    let r = runtime().block_on(closed_loop(server.addr, "/io?ms=200", 50, 12));
    assert_eq!(r.failed, 0, "{r:?}");
    let rps = r.throughput();
    let p50 = r.percentile(50.0);
    println!("io: {rps:.1} req/s, p50 {p50:?}");
    assert!((212.5..=287.5).contains(&rps), "{rps:.1} req/s");
    assert!(
        p50 >= Duration::from_millis(200) && p50 <= Duration::from_millis(215),
        "p50 {p50:?}"
    );
}

#[test]
fn event_loop_cpu_10ms_is_bounded_by_one_core_and_blocks_the_loop() {
    let _serial = serial();
    let server = Server::start(&[("LOOPSCALE_MODE", "event-loop")]);
    runtime().block_on(async {
        let mut probe = Conn::open(server.addr).await.unwrap();
        let idle = probe_hello(&mut probe, 5, Duration::from_millis(20)).await;
        let load = tokio::spawn(closed_loop(server.addr, "/cpu?ms=10", 8, 25));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let loaded = probe_hello(&mut probe, 5, Duration::from_millis(100)).await;
        let r = load.await.unwrap();
        let rps = r.throughput();
        let (_, _, scrape) = get_once(server.addr, "/metrics").await.unwrap();
        let lag = metric_sum(&scrape, "loopscale_eventloop_lag_seconds_sum", &[]);
        println!("cpu: {rps:.1} req/s; /hello probe idle {idle:?}, loaded {loaded:?}; lag sum {lag:.3} s");
        assert_eq!(r.failed, 0);
        assert!((80.0..=105.0).contains(&rps), "{rps:.1} req/s");
        assert!(loaded >= Duration::from_millis(5), "probe {loaded:?}");
        // About 2 s of a fully busy loop: the lag probe's timer fired late by a large part of it.
        assert!(lag >= 0.3, "event-loop lag sum {lag} s");
    });
}

#[test]
fn thread_pool_cpu_with_the_gil_is_serialized_and_slows_the_loop() {
    let _serial = serial();
    let server = Server::start(&[("LOOPSCALE_MODE", "thread-pool")]);
    runtime().block_on(async {
        let mut probe = Conn::open(server.addr).await.unwrap();
        let idle = probe_hello(&mut probe, 5, Duration::from_millis(20)).await;
        let load = tokio::spawn(closed_loop(server.addr, "/cpu?ms=10", 8, 25));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let loaded = probe_hello(&mut probe, 5, Duration::from_millis(100)).await;
        let r = load.await.unwrap();
        let rps = r.throughput();
        let (_, _, scrape) = get_once(server.addr, "/metrics").await.unwrap();
        let loop_wait = metric_sum(&scrape, "loopscale_gil_wait_seconds_sum", &["thread=\"loop\""]);
        let pool_wait = metric_sum(&scrape, "loopscale_gil_wait_seconds_sum", &["thread=\"pool\""]);
        println!("gil on: {rps:.1} req/s; /hello probe idle {idle:?}, loaded {loaded:?}; GIL wait loop {loop_wait:.3} s, pool {pool_wait:.3} s");
        // 8 requests sharing one GIL for ~2 s: pool threads spend seconds waiting for it.
        assert!(pool_wait >= 1.0, "pool threads waited only {pool_wait} s for the GIL");
        assert!(loop_wait > 0.0, "the loop never waited for the GIL");
        assert_eq!(r.failed, 0);
        assert!(rps <= 105.0, "{rps:.1} req/s: CPU work was not serialized");
        assert!(rps >= 50.0, "{rps:.1} req/s: far below one core");
        assert!(
            loaded > idle * 2 && loaded >= Duration::from_millis(2),
            "probe idle {idle:?}, loaded {loaded:?}"
        );
    });
}

#[test]
fn thread_pool_cpu_without_the_gil_uses_both_cores() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "thread-pool"),
        ("LOOPSCALE_GIL", "false"),
    ]);
    let r = runtime().block_on(closed_loop(server.addr, "/cpu?ms=10", 8, 40));
    let rps = r.throughput();
    println!("gil off: {rps:.1} req/s");
    assert_eq!(r.failed, 0);
    assert!(rps >= 160.0, "{rps:.1} req/s");
}

#[test]
fn thread_pool_cpu_inline_blocks_the_loop_like_event_loop_cpu() {
    let _serial = serial();
    let server = Server::start(&[("LOOPSCALE_MODE", "thread-pool")]);
    runtime().block_on(async {
        let mut probe = Conn::open(server.addr).await.unwrap();
        let load = tokio::spawn(closed_loop(server.addr, "/cpu-inline?ms=10", 8, 25));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let loaded = probe_hello(&mut probe, 5, Duration::from_millis(100)).await;
        let r = load.await.unwrap();
        let rps = r.throughput();
        println!("cpu-inline: {rps:.1} req/s; /hello probe loaded {loaded:?}");
        assert_eq!(r.failed, 0);
        assert!(rps <= 105.0, "{rps:.1} req/s");
        assert!(loaded >= Duration::from_millis(5), "probe {loaded:?}");
    });
}

#[test]
fn event_loop_cpu_scales_with_a_second_process() {
    let _serial = serial();
    let rt = runtime();
    let one = {
        let server = Server::start(&[("LOOPSCALE_MODE", "event-loop")]);
        rt.block_on(closed_loop(server.addr, "/cpu?ms=10", 8, 25))
    };
    let two = {
        let server = Server::start(&[
            ("LOOPSCALE_MODE", "event-loop"),
            ("LOOPSCALE_PROCESSES", "2"),
        ]);
        rt.block_on(closed_loop(server.addr, "/cpu?ms=10", 8, 40))
    };
    let (a, b) = (one.throughput(), two.throughput());
    println!(
        "1 process {a:.1} req/s, 2 processes {b:.1} req/s ({:.2}x)",
        b / a
    );
    assert_eq!(one.failed + two.failed, 0);
    assert!(b >= 1.6 * a, "1 process {a:.1}, 2 processes {b:.1}");
}

#[test]
fn a_full_pool_queues_jobs_and_the_queue_depth_metric_shows_it() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "thread-pool"),
        ("LOOPSCALE_THREADPOOL_SIZE", "2"),
    ]);
    runtime().block_on(async {
        let load = tokio::spawn(closed_loop(server.addr, "/cpu?ms=50", 8, 6));
        let mut max_queue: f64 = 0.0;
        let mut max_busy: f64 = 0.0;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (status, _, scrape) = get_once(server.addr, "/metrics").await.unwrap();
            assert_eq!(status, 200);
            max_queue = max_queue.max(metric_sum(&scrape, "loopscale_threadpool_queue_depth", &[]));
            max_busy = max_busy.max(metric_sum(
                &scrape,
                "loopscale_threadpool_busy_threads",
                &[],
            ));
        }
        let r = load.await.unwrap();
        println!("queue depth up to {max_queue}, busy up to {max_busy}");
        assert_eq!(r.failed, 0);
        assert!(max_queue > 0.0, "queue depth never above 0");
        assert!(max_busy <= 2.0, "busy {max_busy} above the pool size");
    });
}

#[test]
fn event_loop_offload_runs_on_the_libuv_pool_of_four() {
    let _serial = serial();
    let server = Server::start(&[("LOOPSCALE_MODE", "event-loop")]);
    runtime().block_on(async {
        let load = tokio::spawn(closed_loop(server.addr, "/offload?ms=30", 8, 5));
        let mut max_queue: f64 = 0.0;
        let mut max_busy: f64 = 0.0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let (_, _, scrape) = get_once(server.addr, "/metrics").await.unwrap();
            max_queue = max_queue.max(metric_sum(
                &scrape,
                "loopscale_threadpool_queue_depth",
                &["pool=\"libuv\""],
            ));
            max_busy = max_busy.max(metric_sum(
                &scrape,
                "loopscale_threadpool_busy_threads",
                &["pool=\"libuv\""],
            ));
        }
        let r = load.await.unwrap();
        println!("offload: queue up to {max_queue}, busy up to {max_busy}");
        assert_eq!(r.failed, 0);
        assert!((2.0..=4.0).contains(&max_busy), "busy {max_busy}");
        assert!(max_queue > 0.0, "8 clients on 4 threads must queue");
    });
}

#[test]
fn request_overhead_is_cpu_on_the_loop_for_every_request() {
    let _serial = serial();
    let server = Server::start(&[
        ("LOOPSCALE_MODE", "event-loop"),
        ("LOOPSCALE_REQUEST_OVERHEAD_US", "5000"),
    ]);
    let r = runtime().block_on(closed_loop(server.addr, "/hello", 8, 50));
    let rps = r.throughput();
    println!("hello with 5 ms overhead: {rps:.1} req/s");
    assert_eq!(r.failed, 0);
    // 5 ms of loop CPU per request: at most 200 per second from one process (and not charged
    // twice, which would cap it at 100).
    assert!((130.0..=210.0).contains(&rps), "{rps:.1} req/s");
}
