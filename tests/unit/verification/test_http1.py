"""The lean HTTP/1.1 client of the report PUT (http1.py), against a scripted
server on a real socket: answers read whole whatever their framing, idle
connections the server closed retried once, a batch's requests sent side by
side."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from services.verification.http1 import Http1Client

# (the request's bytes) -> (the answer's bytes, close the connection after it)
Answer = Callable[[bytes], tuple[bytes, bool]]


class ScriptedServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                request, buffer = head + b"\r\n\r\n" + buffer[:length], buffer[length:]
                with self.lock:
                    self.requests.append(request)
                data, close = self.answer(request)
                conn.sendall(data)
                if close:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture()
def serve() -> Iterator[Callable[[Answer], ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(answer: Answer) -> ScriptedServer:
        started.append(ScriptedServer(answer))
        return started[-1]

    yield start
    for server in started:
        server.close()


def _client(server: ScriptedServer) -> Http1Client:
    return Http1Client(f"http://127.0.0.1:{server.port}", connect_timeout=5, read_timeout=5)


def _put(client: Http1Client, body: bytes = b"{}") -> tuple[int, bytes] | OSError:
    request = Http1Client.encode("PUT", "/b/k", {"Host": "h", "X-A": "1"}, body)
    (answer,) = client.exchange_many([request])
    return answer


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", (200, b"hello")),
        (
            b"HTTP/1.1 412 Precondition Failed\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=y\r\n<Co\r\n4\r\nde/>\r\n0\r\nTrailer: t\r\n\r\n",
            (412, b"<Code/>"),
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", (204, b"")),
    ],
)
def test_answers_are_read_whole_whatever_their_framing(
    serve: Callable[[Answer], ScriptedServer], answer: bytes, expected: tuple[int, bytes]
) -> None:
    server = serve(lambda _: (answer, False))
    client = _client(server)
    assert _put(client) == expected
    assert _put(client) == expected
    assert server.connections == 1  # kept alive and used again


def test_an_answer_running_to_the_close_is_read_and_the_connection_not_kept(
    serve: Callable[[Answer], ScriptedServer],
) -> None:
    server = serve(lambda _: (b"HTTP/1.1 500 Oops\r\n\r\n<Code>InternalError</Code>", True))
    client = _client(server)
    assert _put(client) == (500, b"<Code>InternalError</Code>")
    assert _put(client) == (500, b"<Code>InternalError</Code>")
    assert server.connections == 2


def test_an_idle_connection_the_server_closed_is_retried_once_on_a_new_one(
    serve: Callable[[Answer], ScriptedServer],
) -> None:
    # Keep-alive promised, then the connection closed: as a server's idle timeout does.
    server = serve(lambda _: (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True))
    client = _client(server)
    assert _put(client) == (200, b"")
    assert _put(client) == (200, b"")
    assert server.connections == 2
    assert len(server.requests) == 2  # the request the closed connection lost is sent again


def test_every_request_of_a_batch_is_sent_before_any_answer_is_read(
    serve: Callable[[Answer], ScriptedServer],
) -> None:
    arrived = threading.Barrier(4, timeout=5)

    def answer(request: bytes) -> tuple[bytes, bool]:
        arrived.wait()  # a client reading each answer before the next send would stall here
        return b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", False

    server = serve(answer)
    client = _client(server)
    requests = [Http1Client.encode("PUT", f"/b/{i}", {"Host": "h"}, b"x") for i in range(4)]
    assert client.exchange_many(requests) == [(201, b"")] * 4
    assert server.connections == 4


def test_a_refused_connection_is_that_requests_fault() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    client = Http1Client(f"http://127.0.0.1:{port}", connect_timeout=5, read_timeout=5)
    assert isinstance(_put(client), ConnectionRefusedError)


def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        Http1Client.encode("PUT", "/b/k", {"X-A": "1\r\nX-B: 2"}, b"")
