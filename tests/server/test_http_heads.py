"""The shared port answers malformed heads with a status, HEAD with a head, and lets
a client that stops reading go quietly."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from tests.server.http_raw import LOCAL, request
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine

GET = b"GET /v1/models HTTP/1.1\r\n"
POST = b"POST /v1/audio/speech HTTP/1.1\r\n"

MALFORMED = {
    "missing Host": (GET + b"\r\n", 400),
    "two Content-Lengths": (POST + LOCAL + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    "negative Content-Length": (POST + LOCAL + b"Content-Length: -1\r\n\r\n", 400),
    "huge Content-Length": (POST + LOCAL + b"Content-Length: 1" + b"0" * 30 + b"\r\n\r\n", 400),
    "NUL in a header": (GET + LOCAL + b"X-A: a\0b\r\n\r\n", 400),
    "CR in a header": (GET + LOCAL + b"X-A: a\rb\r\n\r\n", 400),
    "space in the target": (b"GET /v1/mo dels HTTP/1.1\r\n" + LOCAL + b"\r\n", 400),
    "unknown Transfer-Encoding": (POST + LOCAL + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    "100 KB URL": (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n" + LOCAL + b"\r\n", 414),
    "10,000 headers": (GET + LOCAL + b"X-A: b\r\n" * 10_000 + b"\r\n", 431),
    "HTTP/0.9": (b"GET /\r\n", 400),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_head_gets_its_status_promptly(
    synthetic_server: ServerHandle, case: str
) -> None:
    """Each malformed head is answered (400, 414 or 431) within a second or two."""
    data, status = MALFORMED[case]
    reply = await request(synthetic_server.port, data, limit_s=3)
    assert reply.status == status, reply.head


async def test_a_bare_lf_request_is_answered_without_waiting(
    synthetic_server: ServerHandle,
) -> None:
    """Lines ended by LF alone (h11 reads them) are served, not held for the head deadline."""
    reply = await request(synthetic_server.port, b"GET /v1/models HTTP/1.1\nHost: 127.0.0.1\n\n")
    assert reply.status == 200


@pytest.mark.parametrize("path", ["/", "/web/app.js", "/v1/models", "/v1/audio/voices"])
async def test_head_gets_the_get_head_and_no_body(
    synthetic_server: ServerHandle, path: str
) -> None:
    """HEAD: the GET response's status and Content-Length, and not a byte of body."""
    port = synthetic_server.port
    get = await request(port, f"GET {path} HTTP/1.1\r\n".encode() + LOCAL + b"\r\n")
    head = await request(port, f"HEAD {path} HTTP/1.1\r\n".encode() + LOCAL + b"\r\n")
    assert get.status == head.status == 200
    assert head.header("content-length") == str(len(get.body)) != "0"
    assert head.body == b""


async def test_a_method_a_route_lacks_is_405_with_allow(synthetic_server: ServerHandle) -> None:
    """HEAD (or GET) on the POST-only speech route: 405 naming the methods it takes."""
    head = b"HEAD /v1/audio/speech HTTP/1.1\r\n" + LOCAL + b"\r\n"
    reply = await request(synthetic_server.port, head)
    assert reply.status == 405
    assert reply.header("allow") == "POST"


async def test_a_client_that_stops_reading_is_let_go_without_an_error(
    start_server: Callable[..., Any],
) -> None:
    """At the write timeout the request ends, logged at info; no 500 to the gone peer."""
    server: ServerHandle = await start_server(
        lambda: SyntheticEngine(rtf=0.0), write_timeout=0.5, max_text_chars=5000
    )
    body = b'{"input": "' + b"Long text. " * 400 + b'", "response_format": "pcm"}'
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    await stream.socket.connect(("127.0.0.1", server.port))
    with capture_logs() as logs:
        async with stream:
            await stream.send_all(
                POST + LOCAL + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            with trio.fail_after(10):
                while not any(entry["event"] == "http_client_gone" for entry in logs):
                    await trio.sleep(0.05)
            await trio.sleep(0.2)
    # Only error lines count: the engine may warn about the generation it was stopping.
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    gone = next(entry for entry in logs if entry["event"] == "http_client_gone")
    assert gone["log_level"] == "info"
    assert "did not read" in gone["reason"]


async def test_a_client_that_resets_mid_body_is_not_an_error(
    synthetic_server: ServerHandle,
) -> None:
    """A reset while the body is read ends that request quietly (info), nothing else."""
    import struct

    with capture_logs() as logs:
        stream = await trio.open_tcp_stream("127.0.0.1", synthetic_server.port)
        await stream.send_all(POST + LOCAL + b"Content-Length: 1000\r\n\r\n{")
        await trio.sleep(0.2)
        # SO_LINGER 0: close() sends a reset instead of a FIN.
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
        with trio.fail_after(5):
            while not any(entry["event"] == "http_client_gone" for entry in logs):
                await trio.sleep(0.05)
    assert [e for e in logs if e["log_level"] in ("error", "critical", "warning")] == []
