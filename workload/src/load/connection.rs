//! One HTTP/1.1 keep-alive connection, owned by one worker of the run.
//!
//! A [`ConnectionSlot`] opens its connection on first use, to a target picked at random (what
//! kube-proxy does for each new connection), and re-opens it, to a new random pick, after the
//! server closed it, a request on it failed or timed out. One request at a time per connection:
//! HTTP/1.1 without pipelining, as browsers, wrk and k6 do.
//!
//! The slot drives hyper's connection state machine in the caller's own task instead of a
//! spawned one: a request then costs no hand-over between tasks and takes no lock, which is
//! where a shared pool spent most of its per-request CPU.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
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

/// What every connection of a run sends, prepared once.
pub struct RequestTemplate {
    targets: Vec<Target>,
    /// `Host` header per target, in `targets` order.
    host_headers: Vec<HeaderValue>,
    uri: Uri,
}

impl RequestTemplate {
    pub fn new(targets: Vec<Target>, path: PathAndQuery) -> RequestTemplate {
        let host_headers = targets
            .iter()
            .map(|t| HeaderValue::from_str(&t.authority).expect("authority is a valid header"))
            .collect();
        RequestTemplate {
            targets,
            host_headers,
            uri: Uri::from(path),
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
        request
    }
}

/// hyper's half of a connection that reads and writes the socket.
type Driver = http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// A live connection and the target it goes to.
struct Live {
    sender: SendRequest<Empty<Bytes>>,
    /// `None` once hyper finished with the connection (closed by either side, or failed).
    driver: Option<Driver>,
    target: usize,
}

impl Live {
    fn is_usable(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }
}

/// How one attempt on a connection ended.
enum Attempt {
    /// The request was answered, or failed after it may have reached the server.
    Done { outcome: Outcome, keep: bool },
    /// The connection was already closed: the request was not written and may be retried.
    NotSent,
}

/// A worker's connection: at most one live connection, re-opened as needed.
pub struct ConnectionSlot {
    template: Arc<RequestTemplate>,
    metrics: Arc<LoadMetrics>,
    timeout: Duration,
    live: Option<Live>,
    /// The running request's deadline, re-armed per request (tokio only moves a timer that is
    /// pushed later lazily, so this costs no timer-wheel work per request).
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
    pub async fn request(&mut self) -> Outcome {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + self.timeout);
        let outcome = {
            let exchange = pin!(exchange(&mut self.live, &self.template, &self.metrics));
            race(exchange, self.deadline.as_mut()).await
        };
        match outcome {
            Some(outcome) => outcome,
            None => {
                // Timed out: the exchange is dropped with its connection (its state is
                // unknown); the next request opens a new one.
                self.live = None;
                Outcome::Timeout
            }
        }
    }
}

/// `work`'s output, or `None` if `deadline` passes first.
async fn race<F: Future>(
    mut work: Pin<&mut F>,
    mut deadline: Pin<&mut Sleep>,
) -> Option<F::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        deadline.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The exchange on the slot's connection, opening or re-opening it as needed. The connection
/// stays in `live` only if it can carry the next request.
async fn exchange(
    live: &mut Option<Live>,
    template: &RequestTemplate,
    metrics: &LoadMetrics,
) -> Outcome {
    let (mut connection, mut reused) = match live.take() {
        Some(c) if c.is_usable() => (c, true),
        _ => match connect(template, metrics).await {
            Ok(c) => (c, false),
            Err(outcome) => return outcome,
        },
    };
    loop {
        match attempt(&mut connection, template).await {
            Attempt::Done { outcome, keep } => {
                if keep {
                    *live = Some(connection);
                }
                return outcome;
            }
            // A kept-alive connection the server has since closed: open a fresh one (that is
            // not an error). On a fresh connection it is.
            Attempt::NotSent if reused => match connect(template, metrics).await {
                Ok(c) => (connection, reused) = (c, false),
                Err(outcome) => return outcome,
            },
            Attempt::NotSent => return Outcome::Io,
        }
    }
}

/// One request on `connection`, driving its I/O in this task until the response is read.
async fn attempt(connection: &mut Live, template: &RequestTemplate) -> Attempt {
    let Live {
        sender,
        driver,
        target,
    } = connection;
    let request = template.request(*target);
    let work = async {
        if sender.ready().await.is_err() {
            return Attempt::NotSent;
        }
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(e) if e.message().is_some() => return Attempt::NotSent,
            Err(_) => {
                return Attempt::Done {
                    outcome: Outcome::Io,
                    keep: false,
                }
            }
        };
        let (parts, mut body) = response.into_parts();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return Attempt::Done {
                    outcome: Outcome::Io,
                    keep: false,
                };
            }
        }
        Attempt::Done {
            outcome: Outcome::from_status(parts.status),
            keep: true,
        }
    };
    drive(driver, work).await
}

/// Runs `work` to completion while polling the connection's `driver` in the same task.
///
/// The driver is polled first, so a request just handed to hyper is written in the same poll.
/// Once the driver finishes it is dropped at once: that fails whatever `work` still waits for
/// (hyper answers a dropped dispatcher with an error), so `work` cannot hang on it.
async fn drive<F: Future>(driver: &mut Option<Driver>, work: F) -> F::Output {
    let mut work = pin!(work);
    poll_fn(|cx| {
        if let Some(d) = driver.as_mut() {
            if Pin::new(d).poll(cx).is_ready() {
                *driver = None;
            }
        }
        work.as_mut().poll(cx)
    })
    .await
}

/// Opens a connection to a target picked at random.
async fn connect(template: &RequestTemplate, metrics: &LoadMetrics) -> Result<Live, Outcome> {
    let index = rand::rng().random_range(0..template.targets.len());
    let target = &template.targets[index];
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|_| Outcome::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, driver) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Outcome::Connect)?;
    metrics.connections_opened.inc();
    Ok(Live {
        sender,
        driver: Some(driver),
        target: index,
    })
}
