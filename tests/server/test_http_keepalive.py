"""Persistent HTTP/1.1 connections on the shared port, over real sockets."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import trio

from tests.server.http_raw import LOCAL, Reply, parse, post, read_all, read_response
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine

SPEECH = json.dumps({"input": "Hello there.", "response_format": "pcm"}).encode()
MODELS = b"GET /v1/models HTTP/1.1\r\n" + LOCAL + b"\r\n"


async def exchange(stream: trio.SocketStream, data: bytes, limit_s: float = 5.0) -> Reply:
    """One request and its whole response on an open connection."""
    await stream.send_all(data)
    return parse(await read_response(stream, limit_s))


async def closed_within(stream: trio.SocketStream, limit_s: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within `limit_s`."""
    with trio.move_on_after(limit_s):
        return await read_all(stream, limit_s + 1) == b""
    return False


async def test_one_connection_serves_many_speech_requests(
    synthetic_server: ServerHandle,
) -> None:
    """Streamed (chunked) responses end cleanly and the next request reuses the socket."""
    stream = await trio.open_tcp_stream("127.0.0.1", synthetic_server.port)
    async with stream:
        for _ in range(5):
            reply = await exchange(stream, post("/v1/audio/speech", SPEECH))
            assert reply.status == 200
            assert reply.header("transfer-encoding") == "chunked"
            assert reply.header("connection") is None
            assert len(reply.body) == 3 * 7680 // 2 * 2  # 12 chars: 3 chunks, 24 kHz s16


async def test_pooled_httpx_client_reuses_its_one_connection(
    synthetic_server: ServerHandle,
) -> None:
    """A pooled client (as the SDKs and frameworks use) sends 20 requests on one socket."""
    url = f"http://127.0.0.1:{synthetic_server.port}/v1/audio/speech"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    peers: set[Any] = set()
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        for _ in range(20):
            async with client.stream("POST", url, json={"input": "Hi."}) as response:
                assert response.status_code == 200
                await response.aread()
                peers.add(response.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(peers) == 1


async def test_pipelined_requests_are_answered_in_order(synthetic_server: ServerHandle) -> None:
    """A request sent while the previous response streams is kept and answered next."""
    stream = await trio.open_tcp_stream("127.0.0.1", synthetic_server.port)
    async with stream:
        await stream.send_all(post("/v1/audio/speech", SPEECH) + MODELS)
        first = await read_response(stream)
        second = parse(await read_response(stream))
    assert parse(first).status == 200
    assert second.status == 200
    assert "data" in second.json()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    start_server: Callable[..., Any],
) -> None:
    """Between requests a connection may idle for http_keepalive_timeout, no longer."""
    server: ServerHandle = await start_server(http_keepalive_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        assert (await exchange(stream, MODELS)).status == 200
        assert await closed_within(stream, 3.0)


async def test_the_last_allowed_request_says_connection_close(
    start_server: Callable[..., Any],
) -> None:
    """Past http_keepalive_requests the response says Connection: close, then it closes."""
    server: ServerHandle = await start_server(http_keepalive_requests=2)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        first = await exchange(stream, MODELS)
        second = await exchange(stream, MODELS)
        assert first.header("connection") is None
        assert second.header("connection") == "close"
        assert await closed_within(stream, 3.0)


async def test_a_refused_request_closes_the_connection(synthetic_server: ServerHandle) -> None:
    """A body the server never read (413 on the head) cannot leave a reusable connection."""
    head = (
        b"POST /v1/audio/speech HTTP/1.1\r\n"
        + LOCAL
        + b"Content-Type: application/json\r\nContent-Length: 99000000\r\n\r\n"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", synthetic_server.port)
    async with stream:
        reply = await exchange(stream, head)
        assert reply.status == 413
        assert reply.header("connection") == "close"
        assert await closed_within(stream, 3.0)


async def test_a_client_asking_for_close_gets_it(synthetic_server: ServerHandle) -> None:
    """`Connection: close` from the client is honoured (h11 answers it in kind)."""
    stream = await trio.open_tcp_stream("127.0.0.1", synthetic_server.port)
    async with stream:
        request = b"GET /v1/models HTTP/1.1\r\n" + LOCAL + b"Connection: close\r\n\r\n"
        reply = await exchange(stream, request)
        assert reply.header("connection") == "close"
        assert await closed_within(stream, 3.0)


async def test_idle_connections_hold_no_request_capacity(
    start_server: Callable[..., Any],
) -> None:
    """With max_connections=1, a kept-alive idle connection does not refuse a newcomer."""
    server: ServerHandle = await start_server(max_connections=1)
    idle = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with idle:
        assert (await exchange(idle, MODELS)).status == 200
        newcomer = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with newcomer:
            assert (await exchange(newcomer, post("/v1/audio/speech", SPEECH))).status == 200
        with trio.fail_after(2):  # the newcomer's route returns just after its last byte
            while server.server.open_connections:
                await trio.sleep(0.01)


async def test_drain_closes_an_idle_connection_at_once(start_server: Callable[..., Any]) -> None:
    """On shutdown an idle kept-alive connection closes now, not at its idle deadline."""
    server: ServerHandle = await start_server(http_keepalive_timeout=60.0)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        assert (await exchange(stream, MODELS)).status == 200
        with trio.fail_after(5):
            await server.server.shutdown(drain_timeout=10.0)
        assert await closed_within(stream, 1.0)


async def test_a_stream_running_at_drain_finishes_then_the_connection_closes(
    start_server: Callable[..., Any],
) -> None:
    """A response in flight when the drain starts ends whole; the connection then closes."""
    server: ServerHandle = await start_server(lambda: SyntheticEngine(rtf=1.0))
    body = json.dumps({"input": "x" * 24, "response_format": "pcm"}).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream, trio.open_nursery() as nursery:
        await stream.send_all(post("/v1/audio/speech", body))
        received = await stream.receive_some(65536)  # the head: the request is running
        nursery.start_soon(server.server.shutdown, 10.0)
        rest = await read_all(stream, 10.0)  # whole response, then the server's close
        reply = parse(received + rest)
        assert reply.status == 200
        assert len(reply.body) == 6 * 7680 // 2 * 2


async def test_a_later_request_on_the_connection_has_the_same_deadline(
    start_server: Callable[..., Any],
) -> None:
    """A second request that stops sending its body gets 408, like a first one would."""
    server: ServerHandle = await start_server(handshake_timeout=0.5)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        assert (await exchange(stream, MODELS)).status == 200
        unfinished = post("/v1/audio/speech", SPEECH)[:-5]
        started = trio.current_time()
        reply = await exchange(stream, unfinished, limit_s=5.0)
        assert reply.status == 408
        assert trio.current_time() - started < 3.0
        assert reply.header("connection") == "close"


async def test_an_idle_connection_is_evicted_for_a_newcomer(
    start_server: Callable[..., Any],
) -> None:
    """Idle kept-alive connections are pending: past the pool's bound the oldest makes room."""
    server: ServerHandle = await start_server(max_connections=2)
    first = await trio.open_tcp_stream("127.0.0.1", server.port)
    second = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with first, second:
        assert (await exchange(first, MODELS)).status == 200
        assert (await exchange(second, MODELS)).status == 200
        await trio.sleep(1.2)  # past the pending pool's grace for young readers
        newcomer = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with newcomer:
            assert await closed_within(first, 3.0)
            assert (await exchange(newcomer, MODELS)).status == 200
        assert (await exchange(second, MODELS)).status == 200


async def test_an_http_1_0_client_gets_its_response_then_a_close(
    synthetic_server: ServerHandle,
) -> None:
    """HTTP/1.0 has no keep-alive by default: the streamed answer is whole, then closed."""
    stream = await trio.open_tcp_stream("127.0.0.1", synthetic_server.port)
    async with stream:
        data = post("/v1/audio/speech", SPEECH).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        await stream.send_all(data)
        raw = await read_all(stream, 5.0)  # ends when the server closes
    reply = parse(raw)
    assert reply.status == 200
    assert reply.header("connection") == "close"
    assert len(reply.body) == 3 * 7680 // 2 * 2


async def test_a_hang_up_during_a_later_request_frees_its_replica(
    start_server: Callable[..., Any],
) -> None:
    """On a reused connection, a client leaving mid-stream still stops its generation."""
    server: ServerHandle = await start_server(
        lambda: SyntheticEngine(rtf=1.0), max_concurrent=1, workers=1
    )
    pool = server.server.pool
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    long_text = json.dumps({"input": "A long text. " * 40, "response_format": "pcm"}).encode()
    async with stream:
        assert (await exchange(stream, MODELS)).status == 200
        await stream.send_all(post("/v1/audio/speech", long_text))
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        assert pool.admitted == 1
    with trio.fail_after(5):  # 40 sentences at real-time pace would take ~60 s
        while pool.admitted:
            await trio.sleep(0.01)
