"""The shared port's HTTP body policy: the head decides first, bodies are bounded and
read as they come, and clients that trickle their request cannot crowd out the others."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio

from tests.server.http_raw import LOCAL, parse, post, read_all, read_response, request
from voxtrio._app import run_server
from voxtrio._config import Settings
from voxtrio.ops._auth import KeyStore
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._synthetic import SyntheticEngine

KEY = "sk-test-0123456789abcdef"
AUTH = f"Authorization: Bearer {KEY}".encode()
SPEECH = json.dumps({"input": "Hi.", "response_format": "pcm"}).encode()


@pytest.fixture
async def keyed(nursery: trio.Nursery) -> Callable[..., Any]:
    """Start a server that requires the API key KEY: `await keyed(**settings)`."""

    async def start(**overrides: Any) -> ServerHandle:
        settings = Settings(**{"port": 0, "metrics_port": 0, "engine": "synthetic", **overrides})
        handle: ServerHandle = await nursery.start(
            partial(
                run_server,
                settings,
                engine_factory=partial(SyntheticEngine, rtf=0.0),
                keys=KeyStore([KEY]),
            )
        )
        return handle

    return start


def speech_head(length: int, *headers: bytes) -> bytes:
    return (
        b"POST /v1/audio/speech HTTP/1.1\r\n"
        + LOCAL
        + b"Content-Type: application/json\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + f"Content-Length: {length}\r\n\r\n".encode()
    )


async def test_a_keyless_request_is_401_before_its_body_is_read(keyed: Callable[..., Any]) -> None:
    """A 14 MB body declared without a key: 401 at once, not a body held until a 408."""
    server: ServerHandle = await keyed()
    reply = await request(server.port, speech_head(14_000_001), limit_s=3)
    assert reply.status == 401
    assert reply.header("www-authenticate") == "Bearer"


async def test_100_continue_only_follows_a_valid_key(keyed: Callable[..., Any]) -> None:
    """`Expect: 100-continue` without a key is answered 401, never 100; with one, 100."""
    server: ServerHandle = await keyed()
    expect = b"Expect: 100-continue"
    refused = await request(server.port, speech_head(len(SPEECH), expect), limit_s=3)
    assert refused.status == 401
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(speech_head(len(SPEECH), expect, AUTH))
        with trio.fail_after(3):
            interim = await stream.receive_some(4096)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(SPEECH)
        assert parse(await read_response(stream)).status == 200


async def test_a_json_body_declared_over_the_json_limit_is_413_at_once(
    synthetic_server: ServerHandle,
) -> None:
    """The speech route takes 256 KiB of JSON; a larger Content-Length is refused unread."""
    reply = await request(synthetic_server.port, speech_head(300_000), limit_s=3)
    assert reply.status == 413


async def test_a_chunked_json_body_is_cut_off_at_the_limit(synthetic_server: ServerHandle) -> None:
    """With no declared length the body is counted as it arrives: 413 past 256 KiB."""
    stream = await trio.open_tcp_stream("127.0.0.1", synthetic_server.port)
    async with stream:
        await stream.send_all(
            b"POST /v1/audio/speech HTTP/1.1\r\n" + LOCAL + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
        with trio.move_on_after(5):
            try:
                for _ in range(24):  # 384 KiB: past the JSON limit, far below the upload cap
                    await stream.send_all(chunk)
            except trio.BrokenResourceError:
                pass  # the server answered and closed while we were still sending
        reply = parse(await read_all(stream, limit_s=3))
    assert reply.status == 413


async def test_slow_requests_do_not_count_against_capacity(
    start_server: Callable[..., Any],
) -> None:
    """More trickling requests than max_connections: a prompt request is still served."""
    server: ServerHandle = await start_server(max_connections=4)
    slow = []
    for _ in range(6):  # each: a head and the first byte of a 100-byte body
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(speech_head(100) + b"{")
        slow.append(stream)
    await trio.sleep(0.2)
    reply = await request(server.port, post("/v1/audio/speech", SPEECH))
    assert reply.status == 200
    assert len(reply.body) > 0
    for stream in slow:
        await stream.aclose()


async def test_keyless_trickling_cannot_lock_out_a_keyed_request(
    keyed: Callable[..., Any],
) -> None:
    """On a keyed server a keyless slow request is refused on its head and holds nothing."""
    server: ServerHandle = await keyed(max_connections=4)
    slow = []
    for _ in range(6):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(speech_head(100) + b"{")
        slow.append(stream)
    for stream in slow:
        assert parse(await read_all(stream, limit_s=3)).status == 401
        await stream.aclose()
    reply = await request(server.port, post("/v1/audio/speech", SPEECH, AUTH))
    assert reply.status == 200


async def test_the_oldest_slow_request_is_evicted_when_the_pending_pool_is_full(
    start_server: Callable[..., Any],
) -> None:
    """Pending connections are bounded: a newcomer closes the longest-waiting reader."""
    server: ServerHandle = await start_server(max_connections=3)
    slow = []
    for _ in range(3):  # request lines with no end of head
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GET /v1/models HTTP/1.1\r\n")
        slow.append(stream)
        await trio.sleep(0.05)
    await trio.sleep(1.2)  # past the grace a reader gets in a burst
    reply = await request(server.port, b"GET /v1/models HTTP/1.1\r\n" + LOCAL + b"\r\n")
    assert reply.status == 200
    with trio.fail_after(3):
        assert await slow[0].receive_some(1024) == b""  # closed without an answer
    assert server.server.pending.evicted >= 1
    for stream in slow:
        await stream.aclose()


def tiny_parts_form(parts: int) -> bytes:
    part = b"--a\r\nContent-Disposition: form-data; name=f; filename=x\r\n\r\nx\r\n"
    return part * parts + b"--a--\r\n"


async def test_a_form_of_many_tiny_parts_is_refused_at_its_first_surplus_part(
    start_server: Callable[..., Any],
) -> None:
    """160k parts (~10 MB, under the upload cap): 400 naming the part limit, not a full parse."""
    server: ServerHandle = await start_server(allow_voice_upload=True)
    body = tiny_parts_form(160_000)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        head = post("/v1/audio/voices", b"", content_type=b"multipart/form-data; boundary=a")
        head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
        await stream.send_all(head)
        with trio.move_on_after(5):
            try:
                for start in range(0, len(body), 65536):
                    await stream.send_all(body[start : start + 65536])
            except trio.BrokenResourceError:
                pass
        reply = parse(await read_all(stream, limit_s=5))
    assert reply.status == 400
    assert "parts" in reply.json()["error"]["message"]


async def test_an_upload_body_is_refused_while_the_shared_budget_is_spent(
    start_server: Callable[..., Any],
) -> None:
    """Request bodies draw on the budget for unfinished messages: 503 when it is spent."""
    server: ServerHandle = await start_server(
        allow_voice_upload=True, partial_message_budget_bytes=100_000
    )
    body = b"--a\r\nContent-Disposition: form-data; name=audio_sample; filename=x\r\n\r\n"
    body += b"\0" * 200_000
    head = post("/v1/audio/voices", b"", content_type=b"multipart/form-data; boundary=a")
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body) + 100}".encode())
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(head)
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(body)
        reply = parse(await read_all(stream, limit_s=5))
    assert reply.status == 503
    assert server.server._partial_budget.used == 0  # given back
