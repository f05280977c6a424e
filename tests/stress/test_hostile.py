"""Hostile input, round two (issue 15): the attacks, at the sizes they were found at.

Framing violations and a first frame in the handshake's TCP write are also chaos
behaviours (`chaos.early_frame`, `chaos.framing_violation`) in every misbehaving-clients
round; the attacks here each need a server of their own.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import soundfile
import trio

from voxtrio.server._listener import ServerHandle

from ..support import http_get, session
from .harness import RawWebSocket, client_frame, record_figures, rss_bytes, watch_logs

pytestmark = pytest.mark.slow

UPLOAD_ATTACKERS = 40
PARKED_BYTES = 4 * 2**20
SLOWLORIS = 80


async def test_parked_partial_uploads_are_bounded_server_wide(
    start_server: Callable[..., Any],
) -> None:
    """40 connections parking 4 MiB of an unfinished upload each hold at most the budget."""
    budget = 16 * 2**20
    handle: ServerHandle = await start_server(
        allow_voice_upload=True, partial_message_budget_bytes=budget
    )
    start = json.dumps({"type": "voice_register", "audio": ""})[:-2].encode()
    frame = client_frame(0x1, start + b"A" * (PARKED_BYTES - len(start)), fin=False)
    codes: list[int | None] = []
    before = rss_bytes()
    peak = before
    async with trio.open_nursery() as nursery:

        async def park(ready: trio.Event) -> None:
            async with RawWebSocket.open(handle.url) as raw:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await raw.send_raw(frame)
                ready.set()
                with trio.move_on_after(3):
                    while await raw.receive() is not None:
                        pass
                codes.append(raw.closed.code if raw.closed else None)

        for _ in range(UPLOAD_ATTACKERS):
            ready = trio.Event()
            nursery.start_soon(park, ready)
            with trio.move_on_after(5):
                await ready.wait()
            peak = max(peak, rss_bytes())
    growth_mb = (peak - before) / 2**20
    closed = sum(code in (1009, 1006) for code in codes)
    record_figures(
        "hostile_uploads",
        connections=UPLOAD_ATTACKERS,
        parked_mb_each=PARKED_BYTES / 2**20,
        budget_mb=budget / 2**20,
        rss_growth_mb=round(growth_mb, 1),
        refused=closed,
    )
    # Unbounded, the parked parts alone would be 160 MiB (text: more as str objects).
    assert growth_mb < 3 * budget / 2**20
    assert closed >= UPLOAD_ATTACKERS - budget // PARKED_BYTES


async def test_slowloris_on_the_side_port_leaves_ready_answering(
    start_server: Callable[..., Any],
) -> None:
    """80 connections trickling a byte every 0.5 s: every /ready probe is answered 200."""
    handle: ServerHandle = await start_server()
    port = handle.metrics_port
    statuses: list[int] = []
    with watch_logs() as logs:
        async with trio.open_nursery() as nursery:

            async def trickle() -> None:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    async with stream:
                        for byte in b"GET /ready HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                            await stream.send_all(bytes([byte]))
                            await trio.sleep(0.5)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass  # evicted to make room

            for _ in range(SLOWLORIS):
                nursery.start_soon(trickle)
            await trio.sleep(1.0)
            for _ in range(10):
                with trio.fail_after(5):
                    status, _ = await http_get(f"http://127.0.0.1:{port}/ready")
                statuses.append(status)
                await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    warnings = [event for event in logs if event.event == "http_connections_shed"]
    record_figures(
        "hostile_slowloris",
        connections=SLOWLORIS,
        probes=len(statuses),
        probes_ok=statuses.count(200),
        shed_warnings=len(warnings),
    )
    assert statuses == [200] * 10
    assert len(warnings) <= 1


def id3_then_aiff() -> str:
    """An ID3 tag in front of a 2 s AIFF: the allow-list's smuggling case, base64."""
    t = np.arange(32000) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(8 * np.pi * t))).astype(
        np.float32
    )
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="AIFF", subtype="PCM_16")
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"TIT2\x00\x00\x00\x02\x00\x00"
    return base64.b64encode(tag + buffer.getvalue()).decode()


async def test_id3_prefixed_aiff_is_refused_by_voice_register(
    start_server: Callable[..., Any],
) -> None:
    """voice_register of ID3 + AIFF is refused as not a supported audio file."""
    handle: ServerHandle = await start_server(allow_voice_upload=True)
    message = {
        "type": "voice_register",
        "request_id": "smuggle",
        "voice_id": "smuggled",
        "audio": id3_then_aiff(),
        "persist": False,
    }
    async with session(handle.url) as s:
        await s.send(message)
        with trio.fail_after(30):
            await s.receive_one()
    reply = s.outcomes["smuggle"].messages[-1]
    record_figures("hostile_id3", reply=reply.get("error", {}).get("message"))
    assert reply["type"] == "error"
    assert "not a supported audio file" in json.dumps(reply)


async def _ping_rtts(url: str, count: int) -> list[float]:
    """Application-level ping round trips on a connection of its own, in ms."""
    rtts: list[float] = []
    async with session(url) as s:
        for n in range(count):
            sent = time.perf_counter()
            await s.ws.send_message(json.dumps({"type": "ping", "timestamp": n}))
            await s.ws.get_message()
            rtts.append((time.perf_counter() - sent) * 1000)
            await trio.sleep(0.02)
    return rtts


async def test_interim_response_flood_does_not_stall_the_server(
    start_server: Callable[..., Any], nursery: trio.Nursery
) -> None:
    """An allow-listed origin answering 1xx without end: bystanders' pings stay fast."""

    async def flood(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await stream.receive_some(65536)
                for _ in range(200):
                    await stream.send_all(b"HTTP/1.1 102 Processing\r\n\r\n" * 5000)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listeners = await nursery.start(partial(trio.serve_tcp, flood, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    handle: ServerHandle = await start_server(
        prompt_url_hosts="127.0.0.1", prompt_url_allow_private=True, prompt_url_timeout=5.0
    )
    url = f"http://127.0.0.1:{port}/prompt.wav"
    replies: list[dict[str, Any]] = []

    async def attack() -> None:
        async with session(handle.url) as s:
            await s.request("flood", text="Hi.", prompt_wav_url=url, prompt_text="hello")
            with trio.fail_after(30):
                await s.until_terminal("flood")
            replies.append(s.outcomes["flood"].terminal)

    async with trio.open_nursery() as inner:
        inner.start_soon(attack)
        rtts = await _ping_rtts(handle.url, 50)
    p50 = statistics.median(rtts)
    record_figures(
        "hostile_interim_flood",
        ping_p50_ms=round(p50, 2),
        ping_max_ms=round(max(rtts), 2),
        terminal=replies[0].get("error", {}).get("message"),
    )
    assert replies[0]["type"] == "error"
    assert "interim" in json.dumps(replies[0])
    assert p50 < 20.0


@pytest.mark.parametrize(
    ("address", "allow_private", "problem"),
    [
        ("64:ff9b::a9fe:a9fe", True, "a cloud metadata address"),
        ("::a9fe:a9fe", True, "a cloud metadata address"),
        ("2002:7f00:1::1", False, "a loopback address"),
        ("64:ff9b::7f00:1", False, "a loopback address"),
    ],
)
async def test_ipv6_forms_of_ipv4_addresses_are_judged_by_the_ipv4_address(
    start_server: Callable[..., Any], address: str, allow_private: bool, problem: str
) -> None:
    """NAT64, IPv4-compatible and 6to4 forms of metadata/loopback are refused as such."""
    handle: ServerHandle = await start_server(
        prompt_url_hosts=f"[{address}]", prompt_url_allow_private=allow_private
    )
    async with session(handle.url) as s:
        await s.request(
            "embedded", text="Hi.", prompt_wav_url=f"http://[{address}]:80/x.wav", prompt_text="x"
        )
        with trio.fail_after(30):
            await s.until_terminal("embedded")
    terminal = s.outcomes["embedded"].terminal
    record_figures(f"hostile_embedded_ipv4_{address}", reply=terminal["error"]["message"])
    assert terminal["error"]["code"] == "INVALID_PARAMS"
    assert terminal["error"]["message"].endswith(problem)
