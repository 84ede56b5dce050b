//! The control channel between the supervisor and each worker: one unix stream socketpair per
//! worker (no files, so a read-only root filesystem is fine), carrying length-prefixed frames.
//!
//! Frame: `u32` big-endian body length, then the body: a one-byte tag, a `u64` big-endian id, and
//! a UTF-8 payload. Encoding and decoding are pure functions; the sync reader serves the worker's
//! control thread, the async reader the supervisor.

use std::io::{self, Read};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Frames larger than this are refused rather than allocated (a scrape of 256 workers is a few MiB).
pub const MAX_FRAME: usize = 64 << 20;

/// One message on the control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Worker → supervisor: the worker is serving (its accept loop runs).
    WorkerReady,
    /// Supervisor → worker: send your metrics, answering with the same id.
    Gather { id: u64 },
    /// Worker → supervisor: this worker's text exposition, answering `Gather { id }`.
    Exposition { id: u64, text: String },
    /// Worker → supervisor: a client asked this worker for `/metrics`; send the pod's scrape.
    Scrape { id: u64 },
    /// Supervisor → worker: the merged scrape of every process, answering `Scrape { id }`.
    ScrapeReply { id: u64, text: String },
    /// Supervisor → worker: whether every worker of the pod is up (what `/readyz` answers).
    PodReady(bool),
}

/// A frame that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("control frame too short ({0} bytes)")]
    TooShort(usize),
    #[error("unknown control message tag {0}")]
    UnknownTag(u8),
    #[error("control message payload is not UTF-8")]
    NotUtf8,
}

impl Message {
    fn parts(&self) -> (u8, u64, &str) {
        match self {
            Message::WorkerReady => (1, 0, ""),
            Message::Gather { id } => (2, *id, ""),
            Message::Exposition { id, text } => (3, *id, text),
            Message::Scrape { id } => (4, *id, ""),
            Message::ScrapeReply { id, text } => (5, *id, text),
            Message::PodReady(ready) => (6, u64::from(*ready), ""),
        }
    }

    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, id, text) = self.parts();
        let body_len = 1 + 8 + text.len();
        let mut out = Vec::with_capacity(4 + body_len);
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        out.push(tag);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// Decodes a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() < 9 {
            return Err(DecodeError::TooShort(body.len()));
        }
        let tag = body[0];
        let id = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
        let text = || {
            std::str::from_utf8(&body[9..])
                .map(str::to_string)
                .map_err(|_| DecodeError::NotUtf8)
        };
        Ok(match tag {
            1 => Message::WorkerReady,
            2 => Message::Gather { id },
            3 => Message::Exposition { id, text: text()? },
            4 => Message::Scrape { id },
            5 => Message::ScrapeReply { id, text: text()? },
            6 => Message::PodReady(id != 0),
            other => return Err(DecodeError::UnknownTag(other)),
        })
    }
}

fn check_len(len: usize) -> io::Result<usize> {
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    Ok(len)
}

fn decoded(body: &[u8]) -> io::Result<Message> {
    Message::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads one message; `Ok(None)` on a clean end of stream.
pub fn read_message(r: &mut impl Read) -> io::Result<Option<Message>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; check_len(u32::from_be_bytes(len) as usize)?];
    r.read_exact(&mut body)?;
    decoded(&body).map(Some)
}

/// Async twin of [`read_message`].
pub async fn read_message_async(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Message>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; check_len(u32::from_be_bytes(len) as usize)?];
    r.read_exact(&mut body).await?;
    decoded(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let all = [
            Message::WorkerReady,
            Message::Gather { id: 7 },
            Message::Exposition {
                id: u64::MAX,
                text: "a 1\nü\n".into(),
            },
            Message::Scrape { id: 0 },
            Message::ScrapeReply {
                id: 3,
                text: String::new(),
            },
            Message::PodReady(true),
            Message::PodReady(false),
        ];
        let mut stream = Vec::new();
        for m in &all {
            stream.extend(m.encode());
        }
        let mut r = stream.as_slice();
        for m in &all {
            assert_eq!(read_message(&mut r).unwrap().as_ref(), Some(m));
        }
        assert_eq!(read_message(&mut r).unwrap(), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Message::decode(&[1, 2]), Err(DecodeError::TooShort(2)));
        assert_eq!(Message::decode(&[99; 9]), Err(DecodeError::UnknownTag(99)));
        let mut bad = vec![3];
        bad.extend([0; 8]);
        bad.push(0xff);
        assert_eq!(Message::decode(&bad), Err(DecodeError::NotUtf8));
        let huge = (u32::MAX).to_be_bytes();
        assert!(read_message(&mut huge.as_slice()).is_err());
    }
}
