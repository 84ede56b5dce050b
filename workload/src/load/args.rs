//! Flags of `loopscale-workload load` (each also read from a `LOOPSCALE_LOAD_*` env var, for
//! pods) and their validation into a [`LoadPlan`].
//!
//! Single-value checks live in clap value parsers, so clap's own error (exit code 2, naming the
//! flag) covers them; checks across flags live in [`LoadArgs::plan`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::PathAndQuery;

use crate::report::{GeneratorInfo, LoadModel};

/// Flags of the `load` role.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of a target, `http://host:port` (repeatable; comma-separated in the env var).
    /// Each new connection picks one at random, as kube-proxy does.
    #[arg(long = "target", env = "LOOPSCALE_LOAD_TARGET", value_delimiter = ',',
          value_parser = parse_target, required = true, value_name = "URL")]
    pub targets: Vec<Target>,

    /// `open`: constant arrival rate, latency from the intended start, late requests dropped.
    /// `closed`: `--concurrency` loops, each sending its next request when the previous ends;
    /// latency from the request's first byte written, as wrk measures.
    #[arg(long, env = "LOOPSCALE_LOAD_MODEL", value_enum, default_value_t = LoadModel::Open)]
    pub model: LoadModel,

    /// Open model: intended requests per second over all targets (required, > 0).
    #[arg(long, env = "LOOPSCALE_LOAD_RATE", value_parser = parse_rate, value_name = "N")]
    pub rate: Option<f64>,

    /// Closed model: number of loops. Open model: the most requests in flight; an intended
    /// request beyond it is dropped (counted, not sent).
    #[arg(long, env = "LOOPSCALE_LOAD_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000), value_name = "N")]
    pub concurrency: u64,

    /// Keep-alive HTTP/1.1 connections (default: `--concurrency`). Requests beyond it wait for a
    /// free connection; in the open model that wait counts in their latency.
    #[arg(long, env = "LOOPSCALE_LOAD_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=100_000), value_name = "N")]
    pub connections: Option<u64>,

    /// Send every request on a new connection, with `Connection: close` (hey's
    /// `-disable-keepalive`, k6's `noConnectionReuse`): measures what a server pays per
    /// connection (accept, protocol set-up, close) as well as per request.
    #[arg(long, env = "LOOPSCALE_LOAD_DISABLE_KEEPALIVE")]
    pub disable_keepalive: bool,

    /// Time before the measured window; requests intended (open) or started (closed) in it are
    /// excluded from everything.
    #[arg(long, env = "LOOPSCALE_LOAD_WARMUP", default_value = "1s",
          value_parser = parse_duration, value_name = "DUR")]
    pub warmup: Duration,

    /// Length of the measured window (> 0), e.g. `500ms`, `10s`, `2m`.
    #[arg(long, env = "LOOPSCALE_LOAD_DURATION", default_value = "10s",
          value_parser = parse_positive_duration, value_name = "DUR")]
    pub duration: Duration,

    /// Limit for connect + response of one request (> 0); beyond it the request is a timeout.
    #[arg(long, env = "LOOPSCALE_LOAD_TIMEOUT", default_value = "5s",
          value_parser = parse_positive_duration, value_name = "DUR")]
    pub timeout: Duration,

    /// Route and query sent to every target.
    #[arg(long, env = "LOOPSCALE_LOAD_PATH", default_value = "/",
          value_parser = parse_path, value_name = "/ROUTE?QUERY")]
    pub path: PathAndQuery,

    /// Where to write the JSON report (`-`: stdout, and the summary goes to stderr).
    #[arg(long, env = "LOOPSCALE_LOAD_REPORT", value_name = "FILE|-")]
    pub report: Option<PathBuf>,

    /// Serve live Prometheus metrics on this address (`IP:PORT`; port 0 picks a free port,
    /// printed on stderr).
    #[arg(long, env = "LOOPSCALE_LOAD_METRICS_ADDR", value_name = "IP:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Kubernetes: publish the report as a ConfigMap of this name for the operator, with the
    /// pod's proof-of-origin token (see `load::publish`).
    #[arg(long, env = "LOOPSCALE_LOAD_PUBLISH_CONFIGMAP", value_name = "NAME")]
    pub publish_configmap: Option<String>,

    /// Worker threads of the generator's runtime. 1 (the default) runs everything on one
    /// current-thread runtime, the fair match for `wrk -t1`.
    #[arg(long, env = "LOOPSCALE_LOAD_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=256), value_name = "N")]
    pub threads: u64,
}

/// A target's base URL, split for connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As given, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Host to resolve and connect to (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
}

/// A bad flag value, naming the flag, for exit code 2.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid value for {flag}: {message}")]
pub struct ArgError {
    pub flag: &'static str,
    pub message: String,
}

/// Validated settings of one run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub model: LoadModel,
    /// Open model only.
    pub rate: Option<f64>,
    pub concurrency: u64,
    pub connections: u64,
    /// Reuse connections (false: one connection per request).
    pub keep_alive: bool,
    pub targets: Vec<Target>,
    pub path: PathAndQuery,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
}

impl LoadPlan {
    /// The report's echo of these settings.
    pub fn generator_info(&self) -> GeneratorInfo {
        GeneratorInfo {
            model: self.model,
            rate: self.rate,
            concurrency: self.concurrency,
            connections: self.connections,
            keep_alive: self.keep_alive,
            targets: self.targets.iter().map(|t| t.url.clone()).collect(),
            path: self.path.to_string(),
            warmup_secs: self.warmup.as_secs_f64(),
            duration_secs: self.duration.as_secs_f64(),
        }
    }
}

impl LoadArgs {
    /// Checks across flags and builds the plan of the run.
    pub fn plan(&self) -> Result<LoadPlan, ArgError> {
        if self.targets.is_empty() {
            return Err(ArgError {
                flag: "--target",
                message: "at least one target is required".into(),
            });
        }
        let rate = match (self.model, self.rate) {
            (LoadModel::Open, None) => {
                return Err(ArgError {
                    flag: "--rate",
                    message: "the open model needs a rate (requests per second)".into(),
                })
            }
            (LoadModel::Open, Some(r)) if r <= 0.0 => {
                return Err(ArgError {
                    flag: "--rate",
                    message: format!("{r}: the open model needs a rate above 0"),
                })
            }
            (LoadModel::Open, Some(r)) => Some(r),
            (LoadModel::Closed, _) => None,
        };
        Ok(LoadPlan {
            model: self.model,
            rate,
            concurrency: self.concurrency,
            connections: self.connections.unwrap_or(self.concurrency),
            keep_alive: !self.disable_keepalive,
            targets: self.targets.clone(),
            path: self.path.clone(),
            warmup: self.warmup,
            duration: self.duration,
            timeout: self.timeout,
        })
    }
}

/// Parses `http://host[:port][/]`; the route belongs in `--path`.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("'{text}' is not a URL ({e}); expected http://host:port"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "'{text}': scheme '{other}' is not supported; only http://"
            ))
        }
        None => return Err(format!("'{text}' has no scheme; expected http://host:port")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("'{text}' has no host; expected http://host:port"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "'{text}': credentials in the URL are not supported"
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("'{text}' has no host; expected http://host:port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "'{text}' has a path; give the base URL here and the route in --path"
        ));
    }
    Ok(Target {
        url: format!("http://{}", authority.as_str()),
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_string(),
    })
}

/// Parses a rate in requests per second: a finite number ≥ 0 (0 is refused later for the
/// open model, where it matters, with a message naming `--rate`).
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err(format!("'{text}' must be a finite number ≥ 0"));
    }
    if rate > 10_000_000.0 {
        return Err(format!("'{text}' is above the supported 10,000,000 req/s"));
    }
    Ok(rate)
}

/// Parses a duration like `500ms`, `10s`, `2m`, `1h 30m` (humantime); a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration ({e}); use e.g. 500ms, 10s, 2m"))?;
    if duration > Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("'{text}' is longer than a week"));
    }
    Ok(duration)
}

/// Like [`parse_duration`], refusing zero.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("'{}' must be greater than zero", text.trim()));
    }
    Ok(duration)
}

/// Parses the route and query, which must start with `/`.
pub fn parse_path(text: &str) -> Result<PathAndQuery, String> {
    if !text.starts_with('/') {
        return Err(format!("'{text}' must start with '/', e.g. /io?ms=20"));
    }
    text.parse()
        .map_err(|e| format!("'{text}' is not a valid route and query ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadArgs, clap::Error> {
        let mut full = vec!["load"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| c.args)
    }

    #[test]
    fn targets_parse_to_host_and_port() {
        let t = parse_target("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = parse_target("http://localhost/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.url.as_str()),
            ("localhost", 80, "http://localhost")
        );
        let t = parse_target("http://[::1]:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!(t.authority, "[::1]:9000");
    }

    #[test]
    fn bad_targets_say_why() {
        for (bad, why) in [
            ("not a url", "not a URL"),
            ("127.0.0.1:8080", "scheme"),
            ("https://a:443", "only http"),
            ("http://a:1/hello", "--path"),
            ("http://a:1/?x=1", "--path"),
            ("http://u:p@a:1", "credentials"),
            ("/hello", "no scheme"),
        ] {
            let err = parse_target(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_accept_humantime_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err(), "a unit is required");
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("30d").is_err());
        assert!(parse_positive_duration("0s")
            .unwrap_err()
            .contains("greater than zero"));
        assert!(parse_positive_duration("0").is_err());
    }

    #[test]
    fn rates_are_finite_and_not_negative() {
        assert_eq!(parse_rate("250.5").unwrap(), 250.5);
        assert_eq!(parse_rate("0").unwrap(), 0.0);
        for bad in ["-1", "NaN", "inf", "x", "1e9"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_must_be_routes() {
        assert_eq!(parse_path("/io?ms=20").unwrap().query(), Some("ms=20"));
        assert!(parse_path("io").is_err());
        assert!(parse_path("/a b").is_err());
    }

    #[test]
    fn open_model_needs_a_positive_rate() {
        let a = parse(&["--target", "http://a:1"]).unwrap();
        assert_eq!(a.plan().unwrap_err().flag, "--rate");
        let a = parse(&["--target", "http://a:1", "--rate", "0"]).unwrap();
        assert_eq!(a.plan().unwrap_err().flag, "--rate");
        let a = parse(&["--target", "http://a:1", "--rate", "100"]).unwrap();
        let plan = a.plan().unwrap();
        assert_eq!(plan.rate, Some(100.0));
        assert_eq!(plan.connections, 64, "connections default to concurrency");
    }

    #[test]
    fn closed_model_ignores_rate_and_takes_defaults() {
        let a = parse(&[
            "--target",
            "http://a:1,http://b:2",
            "--target",
            "http://c:3",
            "--model",
            "closed",
            "--concurrency",
            "8",
            "--connections",
            "4",
            "--path",
            "/io?ms=20",
        ])
        .unwrap();
        let plan = a.plan().unwrap();
        assert_eq!(plan.targets.len(), 3);
        assert_eq!(plan.rate, None);
        assert_eq!((plan.concurrency, plan.connections), (8, 4));
        assert_eq!(plan.warmup, Duration::from_secs(1));
        assert_eq!(plan.duration, Duration::from_secs(10));
        assert_eq!(plan.timeout, Duration::from_secs(5));
        let info = plan.generator_info();
        assert_eq!(info.targets, vec!["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(info.path, "/io?ms=20");
    }

    #[test]
    fn clap_errors_name_the_flag() {
        for (args, flag) in [
            (vec!["--target", "nope", "--rate", "1"], "--target"),
            (
                vec!["--target", "http://a:1", "--duration", "0s"],
                "--duration",
            ),
            (
                vec!["--target", "http://a:1", "--timeout", "0"],
                "--timeout",
            ),
            (
                vec!["--target", "http://a:1", "--concurrency", "0"],
                "--concurrency",
            ),
            (
                vec!["--target", "http://a:1", "--model", "half-open"],
                "--model",
            ),
            (vec!["--rate", "1"], "--target"),
        ] {
            let err = parse(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }
}
