//! The HTTP/1.1 keep-alive connection pool.
//!
//! `--connections` slots, handed out first-in first-out so every slot carries its share of the
//! requests. A slot opens its connection on first use, to a target picked at random (what
//! kube-proxy does for each new connection), and re-opens it, to a new random pick, after the
//! server closed it or it failed. One request at a time per connection: HTTP/1.1 without
//! pipelining, as browsers, wrk and k6 do.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::args::Target;
use super::metrics::LoadMetrics;
use super::outcome::Outcome;

/// A live connection and the target it goes to.
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    target: usize,
}

/// One place for a connection; empty until first used or after its connection ended.
#[derive(Default)]
struct Slot {
    connection: Option<Connection>,
}

/// The connection pool shared by all request tasks.
pub struct Pool {
    targets: Vec<Target>,
    host_headers: Vec<HeaderValue>,
    path: PathAndQuery,
    timeout: Duration,
    slots: Mutex<VecDeque<Slot>>,
    permits: Semaphore,
    metrics: Arc<LoadMetrics>,
}

impl Pool {
    pub fn new(
        targets: Vec<Target>,
        path: PathAndQuery,
        connections: usize,
        timeout: Duration,
        metrics: Arc<LoadMetrics>,
    ) -> Pool {
        let host_headers = targets
            .iter()
            .map(|t| HeaderValue::from_str(&t.authority).expect("authority is a valid header"))
            .collect();
        Pool {
            targets,
            host_headers,
            path,
            timeout,
            slots: Mutex::new((0..connections).map(|_| Slot::default()).collect()),
            permits: Semaphore::new(connections),
            metrics,
        }
    }

    /// Sends one request on a free connection (waiting for one if all are busy) and reads the
    /// whole response. `--timeout` covers connect + response, not the wait for a free slot.
    pub async fn request(&self) -> Outcome {
        let _permit = self.permits.acquire().await.expect("the pool never closes");
        let mut slot = self
            .slots
            .lock()
            .expect("pool lock")
            .pop_front()
            .expect("a permit guarantees a slot");
        // On timeout the exchange is dropped with its connection (its state is unknown); the
        // slot then re-opens on next use.
        let outcome = match tokio::time::timeout(self.timeout, self.exchange(&mut slot)).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Outcome::Timeout,
        };
        self.slots.lock().expect("pool lock").push_back(slot);
        outcome
    }

    /// The exchange on the slot's connection, opening or re-opening it as needed.
    async fn exchange(&self, slot: &mut Slot) -> Outcome {
        let (mut connection, mut reused) = match slot.connection.take() {
            Some(c) if !c.sender.is_closed() => (c, true),
            _ => match self.connect().await {
                Ok(c) => (c, false),
                Err(outcome) => return outcome,
            },
        };
        let response = loop {
            if connection.sender.ready().await.is_err() {
                if reused {
                    // A kept-alive connection the server has since closed: open a fresh one.
                    match self.connect().await {
                        Ok(c) => (connection, reused) = (c, false),
                        Err(outcome) => return outcome,
                    }
                    continue;
                }
                return Outcome::Io;
            }
            let request = self.build_request(connection.target);
            match connection.sender.try_send_request(request).await {
                Ok(response) => break response,
                // Not written at all on a reused connection (it was closing): retry on a new one.
                Err(e) if reused && e.message().is_some() => match self.connect().await {
                    Ok(c) => (connection, reused) = (c, false),
                    Err(outcome) => return outcome,
                },
                Err(_) => return Outcome::Io,
            }
        };
        let (parts, mut body) = response.into_parts();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return Outcome::Io;
            }
        }
        slot.connection = Some(connection);
        Outcome::from_status(parts.status)
    }

    /// Opens a connection to a target picked at random.
    async fn connect(&self) -> Result<Connection, Outcome> {
        let index = rand::rng().random_range(0..self.targets.len());
        let target = &self.targets[index];
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|_| Outcome::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Outcome::Connect)?;
        tokio::spawn(async move {
            // Ends when the server closes or the sender is dropped; errors surface on the sender.
            let _ = connection.await;
        });
        self.metrics.connections_opened.inc();
        Ok(Connection {
            sender,
            target: index,
        })
    }

    fn build_request(&self, target: usize) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = self.path.clone().into();
        request
            .headers_mut()
            .insert(HOST, self.host_headers[target].clone());
        request
    }
}
