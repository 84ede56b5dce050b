//! One HTTP/1.1 keep-alive connection, owned by one worker of the run.
//!
//! A [`ConnectionSlot`] opens its connection on first use, to a target picked at random (what
//! kube-proxy does for each new connection), and re-opens it, to a new random pick, after the
//! server closed it, a request on it failed or timed out. With `--disable-keepalive` every
//! request says `Connection: close` and the slot opens a new connection for the next one. One
//! request at a time per connection: HTTP/1.1 without pipelining, as browsers, wrk and k6 do.
//!
//! The slot belongs to one worker, so a request takes no pool lock or semaphore; hyper's
//! connection state machine runs in a task of its own. (Driving it inside the worker's task
//! instead was measured too: no CPU per request saved on this machine, so the simpler form
//! stayed; see `workload/LOAD.md`.)
//!
//! The connection's socket is wrapped in a [`StampedIo`], so each exchange also reports when its
//! request was written and its response read ([`WireTimes`]), free of the client's own hops
//! between this worker and the connection task.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::args::Target;
use super::metrics::LoadMetrics;
use super::outcome::Outcome;
use super::wire_clock::{StampedIo, WireClock, WireTimes};

/// What every connection of a run sends, prepared once.
pub struct RequestTemplate {
    targets: Vec<Target>,
    /// `Host` header per target, in `targets` order.
    host_headers: Vec<HeaderValue>,
    uri: Uri,
    /// Reuse connections; false sends `Connection: close` and opens one per request.
    keep_alive: bool,
}

impl RequestTemplate {
    pub fn new(targets: Vec<Target>, path: PathAndQuery, keep_alive: bool) -> RequestTemplate {
        let host_headers = targets
            .iter()
            .map(|t| HeaderValue::from_str(&t.authority).expect("authority is a valid header"))
            .collect();
        RequestTemplate {
            targets,
            host_headers,
            uri: Uri::from(path),
            keep_alive,
        }
    }

    /// The request for `target`: only reference-counted clones (the URI's bytes, the header
    /// value), no parsing.
    fn request(&self, target: usize) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        request
            .headers_mut()
            .insert(HOST, self.host_headers[target].clone());
        if !self.keep_alive {
            request
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        request
    }
}

/// A live connection, the target it goes to and the clock its socket stamps.
struct Live {
    sender: SendRequest<Empty<Bytes>>,
    target: usize,
    clock: Arc<WireClock>,
}

impl Live {
    fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// How one request ended, and when it crossed the wire.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub outcome: Outcome,
    /// When the request was written and the response read; `None` when the request failed or
    /// was never written.
    pub wire: Option<WireTimes>,
}

impl Exchange {
    fn failed(outcome: Outcome) -> Exchange {
        Exchange {
            outcome,
            wire: None,
        }
    }
}

/// How one attempt on a connection ended.
enum Attempt {
    /// The request was answered, or failed after it may have reached the server.
    Done { exchange: Exchange, keep: bool },
    /// The connection was already closed: the request was not written and may be retried.
    NotSent,
}

impl Attempt {
    /// The exchange broke after the request may have reached the server.
    fn failed() -> Attempt {
        Attempt::Done {
            exchange: Exchange::failed(Outcome::Io),
            keep: false,
        }
    }
}

/// A worker's connection: at most one live connection, re-opened as needed.
pub struct ConnectionSlot {
    template: Arc<RequestTemplate>,
    metrics: Arc<LoadMetrics>,
    timeout: Duration,
    live: Option<Live>,
    /// A timer at or before the running request's deadline: it is moved to the request's own
    /// deadline only when it fires early (about once per `--timeout`), not per request.
    deadline: Pin<Box<Sleep>>,
}

impl ConnectionSlot {
    pub fn new(
        template: Arc<RequestTemplate>,
        metrics: Arc<LoadMetrics>,
        timeout: Duration,
    ) -> ConnectionSlot {
        ConnectionSlot {
            template,
            metrics,
            timeout,
            live: None,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Sends one request and reads the whole response, opening or re-opening the connection
    /// as needed. `--timeout` covers connect + response, not the wait for the connection.
    pub async fn request(&mut self) -> Exchange {
        let due = tokio::time::Instant::now() + self.timeout;
        let outcome = {
            let exchange = pin!(exchange(&mut self.live, &self.template, &self.metrics));
            race(exchange, self.deadline.as_mut(), due).await
        };
        match outcome {
            Some(exchange) => exchange,
            None => {
                // Timed out: the exchange is dropped with its connection (its state is
                // unknown); the next request opens a new one.
                self.live = None;
                Exchange::failed(Outcome::Timeout)
            }
        }
    }
}

/// `work`'s output, or `None` if `due` passes first. `timer` is set no later than `due` (an
/// earlier request's deadline, or `due` itself); when it fires before `due` it is moved there.
async fn race<F: Future>(
    mut work: Pin<&mut F>,
    mut timer: Pin<&mut Sleep>,
    due: tokio::time::Instant,
) -> Option<F::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() >= due {
                return Poll::Ready(None);
            }
            timer.as_mut().reset(due);
        }
        Poll::Pending
    })
    .await
}

/// The exchange on the slot's connection, opening or re-opening it as needed. The connection
/// stays in `live` only if it can carry the next request.
async fn exchange(
    live: &mut Option<Live>,
    template: &RequestTemplate,
    metrics: &LoadMetrics,
) -> Exchange {
    let (mut connection, mut reused) = match live.take() {
        Some(c) if c.is_usable() => (c, true),
        _ => match connect(template, metrics).await {
            Ok(c) => (c, false),
            Err(outcome) => return Exchange::failed(outcome),
        },
    };
    loop {
        match attempt(&mut connection, template).await {
            Attempt::Done { exchange, keep } => {
                if keep {
                    *live = Some(connection);
                }
                return exchange;
            }
            // A kept-alive connection the server has since closed: open a fresh one (that is
            // not an error). On a fresh connection it is.
            Attempt::NotSent if reused => match connect(template, metrics).await {
                Ok(c) => (connection, reused) = (c, false),
                Err(outcome) => return Exchange::failed(outcome),
            },
            Attempt::NotSent => return Exchange::failed(Outcome::Io),
        }
    }
}

/// One request on `connection`, read to the end of its response.
async fn attempt(connection: &mut Live, template: &RequestTemplate) -> Attempt {
    let sender = &mut connection.sender;
    if sender.ready().await.is_err() {
        return Attempt::NotSent;
    }
    let request = template.request(connection.target);
    connection.clock.arm();
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(e) if e.message().is_some() => return Attempt::NotSent,
        Err(_) => return Attempt::failed(),
    };
    let (parts, mut body) = response.into_parts();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return Attempt::failed();
        }
    }
    Attempt::Done {
        exchange: Exchange {
            outcome: Outcome::from_status(parts.status),
            wire: connection.clock.take(),
        },
        keep: template.keep_alive,
    }
}

/// Opens a connection to a target picked at random.
async fn connect(template: &RequestTemplate, metrics: &LoadMetrics) -> Result<Live, Outcome> {
    let index = rand::rng().random_range(0..template.targets.len());
    let target = &template.targets[index];
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|_| Outcome::Connect)?;
    let _ = stream.set_nodelay(true);
    let clock = Arc::new(WireClock::new());
    let io = TokioIo::new(StampedIo::new(stream, clock.clone()));
    let (sender, driver) = http1::handshake(io).await.map_err(|_| Outcome::Connect)?;
    metrics.connections_opened.inc();
    tokio::spawn(async move {
        // Ends when the server closes or the sender is dropped; errors surface on the sender.
        let _ = driver.await;
    });
    Ok(Live {
        sender,
        target: index,
        clock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;
    use tokio::time::Instant;

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_times_out_at_its_own_deadline_not_an_earlier_timer() {
        let start = Instant::now();
        let mut timer = Box::pin(tokio::time::sleep_until(start + Duration::from_millis(10)));
        let due = start + Duration::from_millis(60);

        let answered = pin!(async {
            tokio::time::sleep_until(start + Duration::from_millis(30)).await;
            7
        });
        assert_eq!(
            race(answered, timer.as_mut(), due).await,
            Some(7),
            "the earlier timer fired at 10 ms; the request's deadline is 60 ms"
        );
        assert_eq!(
            timer.deadline(),
            due,
            "the timer moved to the request's deadline"
        );

        let due = start + Duration::from_millis(120);
        let silent = pin!(pending::<()>());
        assert_eq!(race(silent, timer.as_mut(), due).await, None);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(120) && waited < Duration::from_secs(5),
            "timed out after {waited:?}, at the deadline (120 ms)"
        );
    }
}
