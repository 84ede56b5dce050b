//! Bad settings stop `serve` before it serves anything: exit code 2 and a message naming the
//! variable and the allowed values.

use std::process::Command;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(env: &[(&str, &str)], port: u16) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopscale-workload"));
    cmd.arg("serve");
    for (k, _) in std::env::vars() {
        if k.starts_with("LOOPSCALE_") || k == "PORT" {
            cmd.env_remove(k);
        }
    }
    cmd.env("LOOPSCALE_HOST", "127.0.0.1")
        .env("PORT", port.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run loopscale-workload serve")
}

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
