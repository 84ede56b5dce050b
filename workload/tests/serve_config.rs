//! Bad settings stop `serve` before it serves anything: exit code 2 and a message naming the
//! variable and the allowed values.

mod support;

use support::free_port;
use support::serve::serve_output as serve;

#[test]
fn missing_or_unknown_mode_exits_2_naming_the_allowed_values_and_serves_nothing() {
    for env in [
        vec![],
        vec![("LOOPSCALE_MODE", "")],
        vec![("LOOPSCALE_MODE", "asyncio")],
        vec![("LOOPSCALE_MODE", "EVENT-LOOP")],
    ] {
        let port = free_port();
        let out = serve(&env, port);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains("LOOPSCALE_MODE"), "{stderr}");
        assert!(stderr.contains("event-loop, thread-pool"), "{stderr}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something listens on {port}"
        );
    }
}

#[test]
fn other_bad_values_exit_2_naming_the_variable() {
    for (var, value) in [
        ("LOOPSCALE_PROCESSES", "0"),
        ("LOOPSCALE_BALANCING", "least-conn"),
        ("LOOPSCALE_THREADPOOL_SIZE", "-4"),
        ("LOOPSCALE_GIL", "maybe"),
        ("LOOPSCALE_GIL_SWITCH_INTERVAL_MS", "0"),
        ("LOOPSCALE_LIBUV_THREADPOOL_SIZE", "x"),
        ("LOOPSCALE_REQUEST_OVERHEAD_US", "-1"),
        ("PORT", "70000"),
        ("LOOPSCALE_WORKER_INDEX", "9"),
    ] {
        let out = serve(
            &[("LOOPSCALE_MODE", "event-loop"), (var, value)],
            free_port(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}
