//! Handing accepted connections from the supervisor to a worker (round-robin balancing, as Node's
//! cluster primary does with `SCHED_RR`): the socket's fd travels over a unix `SOCK_SEQPACKET`
//! socketpair as `SCM_RIGHTS` ancillary data, one connection per message.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

/// A connected pair for passing connections: (supervisor end, worker end). Both close-on-exec;
/// the spawn code gives the worker end to the child explicitly.
pub fn connection_channel() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(io::Error::from)
}

/// Sends `conn` over `channel`. `WouldBlock` when the worker's receive queue is full.
pub fn send_fd(channel: RawFd, conn: RawFd) -> io::Result<()> {
    let byte = [b'c'];
    let fds = [conn];
    sendmsg::<()>(
        channel,
        &[IoSlice::new(&byte)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map(drop)
    .map_err(io::Error::from)
}

/// Receives one passed fd. `Ok(None)` when the supervisor closed its end.
pub fn recv_fd(channel: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        channel,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut received = None;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed this fd in our table; we own it now.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    match (msg.bytes, received) {
        (0, None) => Ok(None),
        (_, Some(fd)) => Ok(Some(fd)),
        (_, None) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "connection message without a file descriptor",
        )),
    }
}

/// The worker side of round-robin balancing: an axum [`Listener`](axum::serve::Listener) whose
/// "accept" is receiving the next connection the supervisor passed.
pub struct PassedConnections {
    channel: AsyncFd<OwnedFd>,
}

impl PassedConnections {
    /// Wraps the worker end of [`connection_channel`]. Needs a tokio runtime.
    pub fn new(channel: OwnedFd) -> io::Result<Self> {
        nix::fcntl::fcntl(
            &channel,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: the AsyncFd owns this fd and nothing else closes or replaces it.
        let channel = unsafe { AsyncFd::register(channel)? };
        Ok(PassedConnections { channel })
    }

    async fn next(&mut self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        loop {
            let mut guard = self.channel.readable().await?;
            match guard.try_io(|fd| recv_fd(fd.as_raw_fd())) {
                Ok(Ok(Some(fd))) => {
                    let std = std::net::TcpStream::from(fd);
                    std.set_nonblocking(true)?;
                    // A client may have given up already; the caller skips such connections.
                    let peer = std.peer_addr()?;
                    return Ok(Some((TcpStream::from_std(std)?, peer)));
                }
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl axum::serve::Listener for PassedConnections {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.next().await {
                Ok(Some(conn)) => return conn,
                // The supervisor is gone or shutting down: accept nothing more and let the
                // graceful shutdown (signal or control-channel end) finish the worker.
                Ok(None) => std::future::pending::<()>().await,
                Err(e) if e.raw_os_error() == Some(Errno::EMFILE as i32) => {
                    tracing::warn!("too many open files; pausing connection intake for 100 ms");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => tracing::debug!("skipping a passed connection: {e}"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_connection_survives_the_trip_and_end_of_channel_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let (sup, work) = connection_channel().unwrap();
        send_fd(sup.as_raw_fd(), accepted.as_raw_fd()).unwrap();
        drop(accepted); // the supervisor closes its copy after passing it
        let passed = recv_fd(work.as_raw_fd()).unwrap().expect("an fd");
        let mut passed = std::net::TcpStream::from(passed);
        use std::io::{Read, Write};
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        passed.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        drop(sup);
        assert!(recv_fd(work.as_raw_fd()).unwrap().is_none());
    }
}
