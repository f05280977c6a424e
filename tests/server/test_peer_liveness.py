"""The write timeout and the keepalive judge the peer's progress, not the server's backlog."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import trio

from voxtrio.protocol._frames import decode_frame
from voxtrio.speech._synthetic import SyntheticEngine

from ..stress.harness import RawWebSocket, client_frame


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message)


async def read_slowly(url: str) -> int:
    """11 MB of non-streaming WAV read at about 5 MB/s: the audio bytes, once complete."""
    request = {"text": "x" * 3000, "mode": "non_streaming", "format": "wav"}
    async with RawWebSocket.open(url) as raw:
        # A fixed receive buffer (no autotuning) and paced reads: the kernel cannot
        # soak up the message; the server's send proceeds at the reader's pace.
        raw.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        raw.receive_size, raw.read_delay = 64 * 1024, 0.01
        await raw.send_text(dumps({"type": "tts_request", "request_id": "big", "params": request}))
        audio = 0
        with trio.fail_after(60):
            while (message := await raw.receive()) is not None:
                if isinstance(message, bytes):
                    audio += len(decode_frame(message).payload)
                elif json.loads(message)["type"] in ("complete", "error"):
                    break
        assert raw.closed is None, raw.closed
        assert json.loads(message)["type"] == "complete"
    return audio


async def test_client_reading_a_large_message_slowly_is_not_dropped(
    start_server: Callable[..., Any],
) -> None:
    """A client reading 11 MB at ~5 MB/s is served whole with a write timeout of 0.5 s."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.0), write_timeout=0.5)
    assert await read_slowly(handle.url) > 10_000_000


async def test_ping_behind_megabytes_a_client_reads_slowly_does_not_drop_it(
    start_server: Callable[..., Any],
) -> None:
    """The server's pings wait behind MBs of audio; its send queue drains: no ping timeout."""
    handle = await start_server(
        lambda: SyntheticEngine(rtf=0.0), write_timeout=30, ping_interval=0.2, ping_timeout=0.5
    )
    assert await read_slowly(handle.url) > 10_000_000


async def test_pong_queued_behind_the_peers_own_messages_does_not_drop_it(
    start_server: Callable[..., Any],
) -> None:
    """10,000 pings sent at once, the server's ping answered behind them: every pong arrives."""
    handle = await start_server(ping_interval=0.2, ping_timeout=0.3)
    count = 10_000
    async with RawWebSocket.open(handle.url) as raw:

        async def send_all() -> None:
            for start in range(0, count, 100):
                batch = b"".join(
                    client_frame(0x1, dumps({"type": "ping", "timestamp": n}).encode())
                    for n in range(start, start + 100)
                )
                await raw.send_raw(batch)

        pongs = 0
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                while pongs < count:
                    message = await raw.receive()
                    assert message is not None, f"closed {raw.closed} after {pongs} pongs"
                    pongs += isinstance(message, str) and json.loads(message)["type"] == "pong"
    assert pongs == count


async def test_silent_peer_is_dropped_by_the_keepalive(start_server: Callable[..., Any]) -> None:
    """A peer that answers nothing and sends nothing is closed with 1011 after the ping timeout."""
    handle = await start_server(ping_interval=0.2, ping_timeout=0.3)
    async with RawWebSocket.open(handle.url) as raw:
        await trio.sleep(1.5)  # not reading: the server's ping goes unanswered
        with trio.fail_after(10):
            while await raw.receive() is not None:
                pass
    assert raw.closed is not None
    assert (raw.closed.code, raw.closed.reason) == (1011, "ping timeout")
