"""One request at a time on a kept-alive connection, for the experiments that time or count what
one request costs."""
import socket


def get(conn: socket.socket) -> None:
    """One GET /hello on a kept-alive connection, on the bare socket so that the client adds as
    little as it can to the latency (`reference_servers.get` opens a connection per request)."""
    conn.sendall(b"GET /hello HTTP/1.1\r\nHost: loopscale\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += conn.recv(4096)
