"""The side-port HTTP server over real sockets on 127.0.0.1, port 0, raw HTTP."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import attrs
import pytest
import trio
from structlog.testing import capture_logs

from voxtrio.ops._http import HttpRequest, Route, RouteResult, protect, serve_http, text_response

TIMEOUT = 0.3  # request deadline for the tests that wait for it (real time: real sockets)


@attrs.frozen
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def parse(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    _, status, reason = status_line.split(" ", 2)
    return Reply(int(status), reason, headers, body)


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def exchange(port: int, raw: bytes) -> Reply:
    """Send `raw`, read until the server closes, parse the response."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            return parse(await read_all(stream))


async def get(port: int, target: str, method: str = "GET", extra: str = "") -> Reply:
    request = f"{method} {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n"
    return await exchange(port, request.encode())


def hello(request: HttpRequest) -> RouteResult:
    return 200, [("content-type", "text/plain")], b"hello\n"


def echo(request: HttpRequest) -> RouteResult:
    seen = {
        "method": request.method,
        "path": request.path,
        "target": request.target,
        "agent": request.header("User-Agent"),
    }
    return 200, [("content-type", "application/json")], json.dumps(seen).encode()


def boom(request: HttpRequest) -> RouteResult:
    raise RuntimeError("route bug")


def not_bytes(request: HttpRequest) -> RouteResult:
    return 200, [], "text"  # type: ignore[return-value]


def lying(request: HttpRequest) -> RouteResult:
    return 200, [("Content-Length", "999"), ("Connection", "keep-alive")], b"ok"


ROUTES: dict[str, Route] = {
    "/hello": hello,
    "/echo": echo,
    "/boom": boom,
    "/not-bytes": not_bytes,
    "/lying": lying,
}

Starter = Callable[..., Awaitable[int]]


@pytest.fixture
def start(nursery: trio.Nursery) -> Starter:
    """`await start(routes=..., **options)` serves on 127.0.0.1 port 0 and returns the port."""

    async def start(routes: Mapping[str, Route] = ROUTES, **options: Any) -> int:
        port: int = await nursery.start(partial(serve_http, "127.0.0.1", 0, routes, **options))
        return port

    return start


async def test_get_returns_the_route_response(start: Starter) -> None:
    """A GET on a known path returns the route's status, headers and body."""
    reply = await get(await start(), "/hello")
    assert (reply.status, reply.reason) == (200, "OK")
    assert reply.body == b"hello\n"
    assert reply.headers["content-type"] == "text/plain"
    assert reply.headers["content-length"] == "6"


async def test_every_response_closes_the_connection(start: Starter) -> None:
    """One request per connection: the response says Connection: close and the server closes."""
    reply = await get(await start(), "/hello")
    assert reply.headers["connection"] == "close"


async def test_route_sees_method_path_target_and_headers(start: Starter) -> None:
    """The route gets the path without the query, the full target and the headers."""
    reply = await get(await start(), "/echo?a=1&b=2", extra="user-agent: probe/1\r\n")
    assert json.loads(reply.body) == {
        "method": "GET",
        "path": "/echo",
        "target": "/echo?a=1&b=2",
        "agent": "probe/1",
    }


async def test_query_string_is_ignored_for_routing(start: Starter) -> None:
    """`/hello?x=1` is routed to `/hello`."""
    assert (await get(await start(), "/hello?x=1")).status == 200


async def test_head_returns_headers_without_body(start: Starter) -> None:
    """HEAD gets the GET headers, Content-Length included, and no body."""
    reply = await get(await start(), "/hello", method="HEAD")
    assert reply.status == 200
    assert reply.headers["content-length"] == "6"
    assert reply.body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_get_405_with_allow(start: Starter, method: str) -> None:
    """Only GET and HEAD are served; others get 405 and an Allow header."""
    reply = await get(await start(), "/hello", method=method, extra="content-length: 0\r\n")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


async def test_unknown_path_is_404(start: Starter) -> None:
    """A path with no route gets 404."""
    assert (await get(await start(), "/nope")).status == 404


async def test_malformed_request_is_400(start: Starter) -> None:
    """A request h11 cannot parse gets 400 and the connection is closed."""
    reply = await exchange(await start(), b"GET /hello HTTP/1.1\r\nbad header line\r\n\r\n")
    assert reply.status == 400


async def test_http_1_0_request_is_served(start: Starter) -> None:
    """An HTTP/1.0 client (no Host header) is answered too."""
    reply = await exchange(await start(), b"GET /hello HTTP/1.0\r\n\r\n")
    assert reply.status == 200
    assert reply.body == b"hello\n"


async def test_failing_route_gives_500_and_server_goes_on(start: Starter) -> None:
    """A route that raises answers 500 (logged) and later requests are served."""
    port = await start()
    with capture_logs() as logs:
        reply = await get(port, "/boom")
    assert reply.status == 500
    assert b"route bug" not in reply.body
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
        "http_route_failed"
    ]
    assert (await get(port, "/hello")).status == 200


async def test_route_returning_a_bad_body_gives_500(start: Starter) -> None:
    """A route result that is not (int, list, bytes) is a 500, not a crash."""
    with capture_logs():
        assert (await get(await start(), "/not-bytes")).status == 500


async def test_framing_headers_from_a_route_are_replaced(start: Starter) -> None:
    """Content-Length and Connection are the server's: a route cannot break framing."""
    reply = await get(await start(), "/lying")
    assert reply.headers["content-length"] == "2"
    assert reply.headers["connection"] == "close"
    assert reply.body == b"ok"


async def test_slowloris_client_is_answered_408_and_closed_at_the_deadline(
    start: Starter,
) -> None:
    """A client that never finishes its headers gets 408 and EOF at the request deadline."""
    port = await start(request_timeout=TIMEOUT)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            began = trio.current_time()
            await trio.sleep(TIMEOUT / 3)
            await stream.send_all(b"X-Drip: 1\r\n")  # dripping does not extend the deadline
            reply = parse(await read_all(stream))
            elapsed = trio.current_time() - began
    assert reply.status == 408
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 1.5


async def test_silent_client_is_closed_at_the_deadline(start: Starter) -> None:
    """A client that connects and sends nothing is closed at the deadline."""
    port = await start(request_timeout=TIMEOUT)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            reply = parse(await read_all(stream))
    assert reply.status == 408


async def test_client_closing_without_a_request_is_not_an_error(start: Starter) -> None:
    """A connect-and-close (a TCP health probe) is handled quietly."""
    port = await start()
    with capture_logs() as logs:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        assert (await get(port, "/hello")).status == 200
    assert [entry for entry in logs if entry["log_level"] in ("error", "warning")] == []


async def test_oversized_headers_are_refused_with_431(start: Starter) -> None:
    """Headers beyond max_request_bytes get 431 without being buffered further."""
    port = await start(max_request_bytes=1024)
    reply = await get(port, "/hello", extra=f"x-big: {'a' * 4000}\r\n")
    assert reply.status == 431


async def test_oversized_headers_trickled_in_are_refused_with_431(start: Starter) -> None:
    """Headers that grow past the cap across several reads are refused, not buffered."""
    port = await start(max_request_bytes=1024)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /hello HTTP/1.1\r\n")
            for _ in range(8):
                await trio.sleep(0.005)
                try:
                    await stream.send_all(b"x-pad: " + b"p" * 300 + b"\r\n")
                except trio.BrokenResourceError:
                    break  # the server answered and closed
            reply = parse(await read_all(stream))
    assert reply.status == 431


async def test_oversized_body_is_refused_with_413(start: Starter) -> None:
    """A request body that takes the request past max_request_bytes gets 413."""
    port = await start(max_request_bytes=1024)
    body = "b" * 4000
    raw = f"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    reply = await exchange(port, raw.encode())
    assert reply.status == 413


async def test_small_body_is_read_and_ignored(start: Starter) -> None:
    """A GET with a small body is served; the body is discarded."""
    raw = b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    assert (await exchange(await start(), raw)).status == 200


async def test_concurrent_clients_are_served_while_one_stalls(start: Starter) -> None:
    """A stalled client does not hold up others: five clients are answered at once."""
    port = await start(request_timeout=2.0)
    replies: list[Reply] = []
    with trio.fail_after(1.0):  # well inside the stalled client's 2 s deadline
        stalled = await trio.open_tcp_stream("127.0.0.1", port)
        async with stalled:
            await stalled.send_all(b"GET /hello HTTP/1.1\r\n")

            async def one(index: int) -> None:
                replies.append(await get(port, f"/echo?i={index}"))

            async with trio.open_nursery() as clients:
                for index in range(5):
                    clients.start_soon(one, index)
    assert sorted(json.loads(r.body)["target"] for r in replies) == [
        f"/echo?i={i}" for i in range(5)
    ]


async def test_newcomer_evicts_the_longest_stalled_client(start: Starter) -> None:
    """With every slot held by a stalled client, a new request is served; the oldest goes."""
    shed: list[str] = []
    port = await start(max_connections=2, request_timeout=30.0, on_shed=shed.append)
    with trio.fail_after(5.0), capture_logs():
        stalled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        for stream in stalled:
            await stream.send_all(b"GET /hello HTTP/1.1\r\n")
            await trio.sleep(0.05)  # accepted in this order
        probe = await trio.open_tcp_stream("127.0.0.1", port)
        async with probe:
            await probe.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await read_all(probe)
        try:
            oldest = await read_all(stalled[0])
        except trio.BrokenResourceError:
            oldest = b""
        for stream in stalled:
            await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert oldest == b""
    assert shed == ["evicted"]


async def test_health_checks_are_answered_under_slowloris(start: Starter) -> None:
    """80 clients trickling a header each cannot make a probe fail; one warning is logged."""
    shed: list[str] = []
    port = await start(max_connections=64, request_timeout=30.0, on_shed=shed.append)
    with trio.fail_after(10.0), capture_logs() as logs:
        attackers = []
        for _ in range(80):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"G")
            attackers.append(stream)
        answered = 0
        for _ in range(10):
            probe = await trio.open_tcp_stream("127.0.0.1", port)
            async with probe:
                await probe.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                answered += (await read_all(probe)).startswith(b"HTTP/1.1 200 ")
        for stream in attackers:
            await stream.aclose()
    assert answered == 10
    assert len(shed) >= 16
    assert [e["event"] for e in logs].count("http_connections_shed") == 1


async def test_started_reports_the_real_port_on_the_given_host_only(start: Starter) -> None:
    """port=0 reports the bound port; the listener is on 127.0.0.1, not every address."""
    port = await start()
    assert port > 0
    assert (await get(port, "/hello")).status == 200
    with trio.fail_after(5), pytest.raises(OSError, match="all attempts to connect"):
        # 127.0.0.2 reaches lo too, so it is refused only if the bind is host-specific.
        await trio.open_tcp_stream("127.0.0.2", port)


async def test_cancelling_the_server_closes_its_listener() -> None:
    """When its task is cancelled the port stops accepting connections."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_http, "127.0.0.1", 0, ROUTES))
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError, match="all attempts to connect"):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_protect_refuses_with_401_and_bearer_challenge(start: Starter) -> None:
    """A protected route answers 401 with WWW-Authenticate unless the check passes."""

    def authorized(request: HttpRequest) -> bool:
        return request.header("authorization") == "Bearer letmein"

    port = await start(routes={"/hello": protect(hello, authorized)})
    refused = await get(port, "/hello")
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    allowed = await get(port, "/hello", extra="Authorization: Bearer letmein\r\n")
    assert allowed.status == 200


def test_text_response_is_utf8_plain_text() -> None:
    """`text_response` builds a text/plain route result."""
    status, headers, body = text_response(503, "busy ✓\n", ("retry-after", "1"))
    assert status == 503
    assert headers == [("content-type", "text/plain; charset=utf-8"), ("retry-after", "1")]
    assert body == "busy ✓\n".encode()
