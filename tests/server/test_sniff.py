"""Telling a WebSocket handshake from plain HTTP on the shared port, and replaying the head."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from voxtrio.server._sniff import HeadTooLarge, ReplayStream, read_head, wants_websocket

UPGRADE = b"GET /tts HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n"
PLAIN = b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nX-Upgrade: websocket\r\n\r\n{}"


def test_upgrade_header_means_websocket_in_any_case() -> None:
    """`Upgrade: websocket` (any case) is a handshake; a look-alike header is not."""
    assert wants_websocket(UPGRADE)
    assert not wants_websocket(PLAIN)


async def test_head_is_read_across_writes_and_replayed_whole() -> None:
    """The head arrives in pieces; the replay hands out every byte read, then the rest."""
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(PLAIN[:10])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, PLAIN[10:])
        head = await read_head(right, 1024)
    assert head == PLAIN
    replay = ReplayStream(right, head)  # type: ignore[arg-type]
    await left.send_all(b"more")
    assert await replay.receive_some(5) == PLAIN[:5]
    assert await replay.receive_some() == PLAIN[5:]
    assert await replay.receive_some() == b"more"


async def test_a_head_past_the_bound_is_refused() -> None:
    """No blank line within the bound: HeadTooLarge, not an ever-growing buffer."""
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 1000)
    with pytest.raises(HeadTooLarge):
        await read_head(right, 1024)
