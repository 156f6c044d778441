"""A lean keep-alive HTTP/1.1 client for the report PUT (s3.SignedPut).

urllib3 cost about 1 ms of CPU per report PUT (its header containers, then
http.client reading the answer's headers with the email parser): half a
verification, in the pool process that stores the report. A PUT needs none of
it: the request is one buffer (headers and body) and the answer a status
line, a few headers and a short body (empty, or an S3 error document).

Plain http or https (the default SSL context: system CAs, the host name
checked). Answers with Content-Length, chunked, or read to the close. Idle
connections are kept for the next request; one that the server closed in the
meantime is retried once at once on a new connection (a PUT the server did
take is then refused as existing: reports are written once).
"""

from __future__ import annotations

import socket
import ssl
import threading
from urllib.parse import urlsplit

_CHUNK = 65536
_KEEP = 16  # idle connections kept, as urllib3's pool did


class ProtocolError(ConnectionError):
    """The answer is not HTTP/1.x, or the connection ended inside it."""


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        chunk = self.sock.recv(_CHUNK)
        if not chunk:
            raise ProtocolError("the server closed the connection")
        self.buffer += chunk

    def _until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            self._more()
        out, self.buffer = self.buffer[:end], self.buffer[end + len(marker) :]
        return out

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def receive(self) -> tuple[int, bytes, bool]:
        """The answer to the request sent: (status, body, whether the
        connection may be reused)."""
        while True:
            status_line, *lines = self._until(b"\r\n\r\n").split(b"\r\n")
            version, _, rest = status_line.partition(b" ")
            if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
                raise ProtocolError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
            status = int(rest[:3])
            if status != 100:  # an interim answer; the real one follows
                break
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        keep = version != b"HTTP/1.0" and headers.get(b"connection", b"").lower() != b"close"
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = self._chunked()
        elif b"content-length" in headers:
            body = self._exactly(int(headers[b"content-length"]))
        elif status in (204, 304):
            body = b""
        else:  # the body runs to the close
            body, keep = self._to_close(), False
        return status, body, keep

    def _chunked(self) -> bytes:
        parts = []
        while size := int(self._until(b"\r\n").split(b";")[0], 16):
            parts.append(self._exactly(size))
            self._until(b"\r\n")
        while self._until(b"\r\n"):  # trailers, up to the empty line
            pass
        return b"".join(parts)

    def _to_close(self) -> bytes:
        while chunk := self.sock.recv(_CHUNK):
            self.buffer += chunk
        out, self.buffer = self.buffer, b""
        return out

    def close(self) -> None:
        self.sock.close()


class Http1Client:
    """Requests to one endpoint (scheme://host[:port]); safe from several threads."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def exchange_many(self, requests: list[bytes]) -> list[tuple[int, bytes] | OSError]:
        """Each request's (status, body), or the OSError (ConnectionError,
        TimeoutError, ProtocolError, ...) that left it without an answer.
        Every request is sent before any answer is read, each on a
        connection of its own: the server works on them side by side (a
        SeaweedFS spends a third less CPU per PUT so than one at a time)."""
        sent: list[tuple[_Connection, bool] | OSError] = []
        for request in requests:
            try:
                sent.append(self._send(request))
            except OSError as exc:
                sent.append(exc)
        out: list[tuple[int, bytes] | OSError] = []
        for request, item in zip(requests, sent, strict=True):
            if isinstance(item, OSError):
                out.append(item)
                continue
            connection, reused = item
            try:
                out.append(self._receive(connection))
            except ConnectionError as exc:
                if not reused:
                    out.append(exc)
                    continue
                # Closed by the server while idle: once more, on a new one.
                try:
                    out.append(self._receive(self._fresh(request)))
                except OSError as exc:
                    out.append(exc)
            except OSError as exc:
                out.append(exc)
        return out

    @staticmethod
    def encode(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        head = [f"{method} {path} HTTP/1.1"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r}: a line break")
            head.append(f"{name}: {value}")
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "\r\n".join(head).encode("latin-1") + body

    def _send(self, request: bytes) -> tuple[_Connection, bool]:
        """The connection `request` went on, and whether it was an idle one."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is not None:
            try:
                connection.sock.sendall(request)
                return connection, True
            except ConnectionError:
                connection.close()  # closed by the server while idle
        return self._fresh(request), False

    def _fresh(self, request: bytes) -> _Connection:
        connection = self._connect()
        try:
            connection.sock.sendall(request)
        except BaseException:
            connection.close()
            raise
        return connection

    def _receive(self, connection: _Connection) -> tuple[int, bytes]:
        try:
            status, body, keep = connection.receive()
        except BaseException:
            connection.close()
            raise
        kept = False
        if keep:
            with self._lock:
                if len(self._idle) < _KEEP:
                    self._idle.append(connection)
                    kept = True
        if not kept:
            connection.close()
        return status, body

    def _connect(self) -> _Connection:
        sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(self._read_timeout)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
