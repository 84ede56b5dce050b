//! Settings of `serve`, read only from environment variables (the chart and the operator set
//! them). Parsing is a pure function of a lookup so every rule is unit-tested without touching
//! the process environment.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Which runtime the worker emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Node.js/Express: everything on one loop, CPU work blocks it; `/offload` uses libuv's pool.
    EventLoop,
    /// Python/FastAPI: an ASGI loop plus anyio's bounded thread pool for `def` routes, under a GIL.
    ThreadPool,
}

impl Mode {
    const ALLOWED: &'static str = "event-loop, thread-pool";

    /// The env value naming this mode, also used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::EventLoop => "event-loop",
            Mode::ThreadPool => "thread-pool",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How accepted connections reach the worker processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    /// The supervisor accepts and hands each connection to the next worker (Node cluster on Linux).
    RoundRobin,
    /// Every worker accepts on one inherited listener; the kernel picks (uvicorn `--workers`).
    SharedSocket,
}

impl Balancing {
    const ALLOWED: &'static str = "round-robin, shared-socket";

    /// The env value naming this strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            Balancing::RoundRobin => "round-robin",
            Balancing::SharedSocket => "shared-socket",
        }
    }

    /// What the emulated runtime does when nothing is configured.
    pub fn default_for(mode: Mode) -> Self {
        match mode {
            Mode::EventLoop => Balancing::RoundRobin,
            Mode::ThreadPool => Balancing::SharedSocket,
        }
    }
}

/// Everything `serve` needs; one value shared by the supervisor and its workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `LOOPSCALE_MODE`: which runtime is emulated.
    pub mode: Mode,
    /// `LOOPSCALE_PROCESSES`: workers under the supervisor (PM2 `-i N`, `uvicorn --workers N`).
    pub processes: usize,
    /// `LOOPSCALE_BALANCING`: how connections reach workers.
    pub balancing: Balancing,
    /// `LOOPSCALE_THREADPOOL_SIZE`: anyio's capacity for `def` routes (thread-pool mode).
    pub threadpool_size: usize,
    /// `LOOPSCALE_GIL`: whether CPU work in thread-pool mode is serialized per process.
    pub gil: bool,
    /// `LOOPSCALE_GIL_SWITCH_INTERVAL_MS`: CPython's `sys.getswitchinterval()`.
    pub gil_switch_interval: Duration,
    /// `LOOPSCALE_LIBUV_THREADPOOL_SIZE`: libuv's pool behind `/offload` (event-loop mode).
    pub libuv_threadpool_size: usize,
    /// `LOOPSCALE_REQUEST_OVERHEAD_US`: the framework's own CPU per request, on the loop.
    pub request_overhead: Duration,
    /// `LOOPSCALE_RESUME_OVERHEAD_US`: the framework's CPU on the loop each time a handler resumes
    /// after waiting (a timer, a pool job): one more loop callback, as asyncio's task step is.
    pub resume_overhead: Duration,
    /// `LOOPSCALE_CONNECTION_OVERHEAD_US`: the framework's CPU on the loop for each accepted
    /// connection (uvicorn builds its protocol object under the GIL, Node a socket and a parser):
    /// paid once per connection, so it matters for short-lived connections, and in shared-socket
    /// balancing it gives the other workers time to accept (see `worker::serve`).
    pub connection_overhead: Duration,
    /// `LOOPSCALE_WORKING_SET_KIB`: the framework's memory that each request and each new
    /// connection walks on the loop (see `working_set`): it makes the first request after an
    /// idle moment cost more, as the real runtimes' cold caches do. 0: no walk.
    pub working_set_kib: usize,
    /// `LOOPSCALE_HOST`: listen address.
    pub host: IpAddr,
    /// `PORT`: one port for routes, probes and metrics (0 = pick a free one).
    pub port: u16,
    /// `LOOPSCALE_SHUTDOWN_GRACE_SECS`: how long SIGTERM waits for in-flight requests.
    pub shutdown_grace: Duration,
}

/// Upper bounds, so a typo cannot ask for a million processes or threads.
pub const MAX_PROCESSES: usize = 256;
/// anyio allows any capacity; 10,000 threads is already far beyond anything useful here.
pub const MAX_THREADPOOL_SIZE: usize = 10_000;
/// libuv itself caps `UV_THREADPOOL_SIZE` at 1024.
pub const MAX_LIBUV_THREADPOOL_SIZE: usize = 1024;
/// One second of framework overhead per request (or per resume, or per connection) is already
/// absurd.
pub const MAX_OVERHEAD_US: u64 = 1_000_000;
/// 256 MiB: far beyond any cache, and a walk of it already takes tens of milliseconds.
pub const MAX_WORKING_SET_KIB: u64 = 262_144;
/// CPython accepts any positive switch interval; more than a second models nothing real.
pub const MAX_GIL_SWITCH_INTERVAL_MS: f64 = 1000.0;
/// Kubernetes' own default grace is 30 s; an hour is the sanity bound.
pub const MAX_SHUTDOWN_GRACE_SECS: u64 = 3600;

/// A bad environment value: the message names the variable, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("{var} is not set; allowed values: {allowed}")]
    Missing {
        var: &'static str,
        allowed: &'static str,
    },
    /// A variable has a value outside what is allowed.
    #[error("{var}={value:?} is not allowed; allowed values: {allowed}")]
    Invalid {
        var: &'static str,
        value: String,
        allowed: &'static str,
    },
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Parses settings from any `name -> value` lookup (the environment in production, a map in
    /// tests). Empty values count as unset, as shells and YAML often produce them.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let mode = match get("LOOPSCALE_MODE").as_deref().map(str::trim) {
            None => {
                return Err(ConfigError::Missing {
                    var: "LOOPSCALE_MODE",
                    allowed: Mode::ALLOWED,
                })
            }
            Some("event-loop") => Mode::EventLoop,
            Some("thread-pool") => Mode::ThreadPool,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "LOOPSCALE_MODE",
                    value: other.to_string(),
                    allowed: Mode::ALLOWED,
                })
            }
        };
        let balancing = match get("LOOPSCALE_BALANCING").as_deref().map(str::trim) {
            None => Balancing::default_for(mode),
            Some("round-robin") => Balancing::RoundRobin,
            Some("shared-socket") => Balancing::SharedSocket,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "LOOPSCALE_BALANCING",
                    value: other.to_string(),
                    allowed: Balancing::ALLOWED,
                })
            }
        };
        let gil = match get("LOOPSCALE_GIL").as_deref().map(str::trim) {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "LOOPSCALE_GIL",
                    value: other.to_string(),
                    allowed: "true, false",
                })
            }
        };
        let host = match get("LOOPSCALE_HOST") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                var: "LOOPSCALE_HOST",
                value: v.clone(),
                allowed: "an IPv4 or IPv6 address, e.g. 0.0.0.0 or 127.0.0.1",
            })?,
        };
        let interval_ms = decimal_in_range(
            &get,
            "LOOPSCALE_GIL_SWITCH_INTERVAL_MS",
            5.0,
            "a number of milliseconds above 0 and at most 1000",
            |v| v > 0.0 && v <= MAX_GIL_SWITCH_INTERVAL_MS,
        )?;

        Ok(Config {
            mode,
            processes: integer_in_range(
                &get,
                "LOOPSCALE_PROCESSES",
                1,
                "an integer from 1 to 256",
                1,
                MAX_PROCESSES as u64,
            )? as usize,
            balancing,
            threadpool_size: integer_in_range(
                &get,
                "LOOPSCALE_THREADPOOL_SIZE",
                40,
                "an integer from 1 to 10000",
                1,
                MAX_THREADPOOL_SIZE as u64,
            )? as usize,
            gil,
            gil_switch_interval: Duration::from_secs_f64(interval_ms / 1000.0),
            libuv_threadpool_size: integer_in_range(
                &get,
                "LOOPSCALE_LIBUV_THREADPOOL_SIZE",
                4,
                "an integer from 1 to 1024",
                1,
                MAX_LIBUV_THREADPOOL_SIZE as u64,
            )? as usize,
            request_overhead: Duration::from_micros(integer_in_range(
                &get,
                "LOOPSCALE_REQUEST_OVERHEAD_US",
                0,
                "an integer number of microseconds from 0 to 1000000",
                0,
                MAX_OVERHEAD_US,
            )?),
            resume_overhead: Duration::from_micros(integer_in_range(
                &get,
                "LOOPSCALE_RESUME_OVERHEAD_US",
                0,
                "an integer number of microseconds from 0 to 1000000",
                0,
                MAX_OVERHEAD_US,
            )?),
            connection_overhead: Duration::from_micros(integer_in_range(
                &get,
                "LOOPSCALE_CONNECTION_OVERHEAD_US",
                0,
                "an integer number of microseconds from 0 to 1000000",
                0,
                MAX_OVERHEAD_US,
            )?),
            working_set_kib: integer_in_range(
                &get,
                "LOOPSCALE_WORKING_SET_KIB",
                0,
                "an integer number of KiB from 0 to 262144",
                0,
                MAX_WORKING_SET_KIB,
            )? as usize,
            host,
            port: integer_in_range(
                &get,
                "PORT",
                8080,
                "a port number from 0 to 65535 (0 picks a free port)",
                0,
                u16::MAX as u64,
            )? as u16,
            shutdown_grace: Duration::from_secs(integer_in_range(
                &get,
                "LOOPSCALE_SHUTDOWN_GRACE_SECS",
                30,
                "an integer number of seconds from 0 to 3600",
                0,
                MAX_SHUTDOWN_GRACE_SECS,
            )?),
        })
    }
}

fn integer_in_range(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    allowed: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    match raw.trim().parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ConfigError::Invalid {
            var,
            value: raw,
            allowed,
        }),
    }
}

fn decimal_in_range(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: f64,
    allowed: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Result<f64, ConfigError> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(ConfigError::Invalid {
            var,
            value: raw,
            allowed,
        }),
    }
}

/// Parses settings from `name = value` pairs, as the environment would give them (for tests).
#[cfg(test)]
pub fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_is_required_and_the_error_names_the_allowed_values() {
        let err = parse(&[]).unwrap_err();
        assert!(err.to_string().contains("LOOPSCALE_MODE"));
        assert!(err.to_string().contains("event-loop, thread-pool"));
        let err = parse(&[("LOOPSCALE_MODE", "")]).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }));
        let err = parse(&[("LOOPSCALE_MODE", "asyncio")]).unwrap_err();
        assert!(err.to_string().contains("\"asyncio\""));
        assert!(err.to_string().contains("event-loop, thread-pool"));
    }

    #[test]
    fn defaults_follow_the_design_table() {
        let c = parse(&[("LOOPSCALE_MODE", "event-loop")]).unwrap();
        assert_eq!(c.mode, Mode::EventLoop);
        assert_eq!(c.processes, 1);
        assert_eq!(c.balancing, Balancing::RoundRobin);
        assert_eq!(c.threadpool_size, 40);
        assert!(c.gil);
        assert_eq!(c.gil_switch_interval, Duration::from_millis(5));
        assert_eq!(c.libuv_threadpool_size, 4);
        assert_eq!(c.request_overhead, Duration::ZERO);
        assert_eq!(c.resume_overhead, Duration::ZERO);
        assert_eq!(c.connection_overhead, Duration::ZERO);
        assert_eq!(c.working_set_kib, 0);
        assert_eq!(c.port, 8080);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        let c = parse(&[("LOOPSCALE_MODE", "thread-pool")]).unwrap();
        assert_eq!(c.balancing, Balancing::SharedSocket);
    }

    #[test]
    fn explicit_values_are_read() {
        let c = parse(&[
            ("LOOPSCALE_MODE", "thread-pool"),
            ("LOOPSCALE_PROCESSES", "4"),
            ("LOOPSCALE_BALANCING", "round-robin"),
            ("LOOPSCALE_THREADPOOL_SIZE", "2"),
            ("LOOPSCALE_GIL", "false"),
            ("LOOPSCALE_GIL_SWITCH_INTERVAL_MS", "0.5"),
            ("LOOPSCALE_LIBUV_THREADPOOL_SIZE", "8"),
            ("LOOPSCALE_REQUEST_OVERHEAD_US", "150"),
            ("LOOPSCALE_RESUME_OVERHEAD_US", "90"),
            ("LOOPSCALE_CONNECTION_OVERHEAD_US", "85"),
            ("LOOPSCALE_WORKING_SET_KIB", "512"),
            ("LOOPSCALE_HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("LOOPSCALE_SHUTDOWN_GRACE_SECS", "5"),
        ])
        .unwrap();
        assert_eq!(c.processes, 4);
        assert_eq!(c.balancing, Balancing::RoundRobin);
        assert_eq!(c.threadpool_size, 2);
        assert!(!c.gil);
        assert_eq!(c.gil_switch_interval, Duration::from_micros(500));
        assert_eq!(c.libuv_threadpool_size, 8);
        assert_eq!(c.request_overhead, Duration::from_micros(150));
        assert_eq!(c.resume_overhead, Duration::from_micros(90));
        assert_eq!(c.connection_overhead, Duration::from_micros(85));
        assert_eq!(c.working_set_kib, 512);
        assert_eq!(c.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.port, 0);
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
    }

    #[test]
    fn out_of_range_and_garbage_values_are_rejected_with_the_variable_named() {
        for (var, value) in [
            ("LOOPSCALE_PROCESSES", "0"),
            ("LOOPSCALE_PROCESSES", "-1"),
            ("LOOPSCALE_PROCESSES", "257"),
            ("LOOPSCALE_PROCESSES", "two"),
            ("LOOPSCALE_BALANCING", "random"),
            ("LOOPSCALE_THREADPOOL_SIZE", "0"),
            ("LOOPSCALE_GIL", "yes"),
            ("LOOPSCALE_GIL_SWITCH_INTERVAL_MS", "0"),
            ("LOOPSCALE_GIL_SWITCH_INTERVAL_MS", "NaN"),
            ("LOOPSCALE_GIL_SWITCH_INTERVAL_MS", "inf"),
            ("LOOPSCALE_LIBUV_THREADPOOL_SIZE", "1025"),
            ("LOOPSCALE_REQUEST_OVERHEAD_US", "1.5"),
            ("LOOPSCALE_RESUME_OVERHEAD_US", "1000001"),
            ("LOOPSCALE_CONNECTION_OVERHEAD_US", "-5"),
            ("LOOPSCALE_WORKING_SET_KIB", "262145"),
            ("LOOPSCALE_WORKING_SET_KIB", "1M"),
            ("LOOPSCALE_HOST", "localhost"),
            ("PORT", "65536"),
            ("LOOPSCALE_SHUTDOWN_GRACE_SECS", "3601"),
        ] {
            let err = parse(&[("LOOPSCALE_MODE", "event-loop"), (var, value)]).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(var), "{var}={value}: {text}");
            assert!(text.contains("allowed values"), "{var}={value}: {text}");
        }
    }
}
