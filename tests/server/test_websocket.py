"""The WebSocket layer under both endpoints: early frames, framing violations, message sizes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio

from voxtrio.protocol._dashscope import PATH as DASHSCOPE_PATH
from voxtrio.server._listener import ServerHandle

from ..stress.harness import FRAMING_VIOLATIONS, RawWebSocket, client_frame, split_url

SMALL = 64 * 1024


@pytest.mark.parametrize("path", ["/tts", DASHSCOPE_PATH])
async def test_frame_in_the_handshake_write_is_answered(
    synthetic_server: ServerHandle, path: str
) -> None:
    """A frame sent in the same TCP write as the handshake is processed, not dropped."""
    url = synthetic_server.url.replace("/tts", path)
    with trio.fail_after(5):
        async with RawWebSocket.open(url, handshake=False) as raw:
            await raw.handshake(split_url(url)[2], then=client_frame(0x1, b"not json"))
            reply = await raw.receive()
    assert isinstance(reply, str)
    assert "INVALID_JSON" in reply or "task-failed" in reply


@pytest.mark.parametrize("name", sorted(FRAMING_VIOLATIONS))
async def test_framing_violation_gets_a_close_frame(
    synthetic_server: ServerHandle, name: str
) -> None:
    """A framing violation is answered with a close frame naming it, not a TCP drop."""
    frame, code = FRAMING_VIOLATIONS[name]
    with trio.fail_after(5):
        async with RawWebSocket.open(synthetic_server.url) as raw:
            await raw.send_raw(frame)
            assert await raw.receive() is None
    assert raw.closed is not None
    assert raw.closed.code == code


def register(size: int) -> str:
    """A voice_register of about `size` characters (its audio is not real: the size matters)."""
    return json.dumps({"type": "voice_register", "name": "v", "audio": "A" * size})


async def send_past_the_cap(raw: RawWebSocket, start: str) -> None:
    """A message of exactly the cap, then one byte more in its own frame.

    The server reads every byte before it closes, so its close frame is not lost to a
    reset (it closes the socket at once on an oversize message).
    """
    payload = (start + "x" * SMALL)[:SMALL].encode()
    await raw.send_raw(client_frame(0x1, payload, fin=False))
    await trio.sleep(0.2)
    await raw.send_raw(client_frame(0x0, b"x", fin=True))


@pytest.fixture
async def upload_server(start_server: Callable[..., Any]) -> ServerHandle:
    handle: ServerHandle = await start_server(
        allow_voice_upload=True, max_message_bytes=SMALL, partial_message_budget_bytes=400_000
    )
    return handle


async def test_uploads_on_leave_other_messages_at_the_small_cap(
    upload_server: ServerHandle,
) -> None:
    """With uploads on, a message that is not a voice_register is still closed past the cap."""
    with trio.fail_after(10):
        async with RawWebSocket.open(upload_server.url) as raw:
            await send_past_the_cap(raw, '{"type":"tts_request","request_id":"r","text":"')
            while await raw.receive() is not None:
                pass
    assert raw.closed is not None
    assert raw.closed.code == 1009


async def test_dashscope_endpoint_never_takes_an_upload_sized_message(
    upload_server: ServerHandle,
) -> None:
    """Uploads are a native-endpoint message: DashScope connections keep the small cap."""
    with trio.fail_after(10):
        async with RawWebSocket.open(upload_server.url.replace("/tts", DASHSCOPE_PATH)) as raw:
            await send_past_the_cap(raw, register(SMALL)[:SMALL])
            while await raw.receive() is not None:
                pass
    assert raw.closed is not None
    assert raw.closed.code == 1009


async def test_voice_register_may_exceed_the_small_cap(upload_server: ServerHandle) -> None:
    """A voice_register larger than the small cap is read and answered (here: bad audio)."""
    with trio.fail_after(10):
        async with RawWebSocket.open(upload_server.url) as raw:
            await raw.send_text(register(3 * SMALL))
            reply = await raw.receive()
    assert isinstance(reply, str)
    assert json.loads(reply)["type"] == "error"


async def test_unfinished_messages_share_one_server_wide_budget(
    upload_server: ServerHandle,
) -> None:
    """Parked partial uploads past the budget close the newcomer with 1009; leaving frees it."""
    start = register(300_000)[:300_000].encode()
    with trio.fail_after(10):
        async with RawWebSocket.open(upload_server.url) as first:
            await first.send_raw(client_frame(0x1, start, fin=False))
            await trio.sleep(0.3)  # parked server-side
            async with RawWebSocket.open(upload_server.url) as second:
                # 399_000 parked in all fits the 400_000 budget; 2_000 more does not.
                await second.send_raw(client_frame(0x1, start[:99_000], fin=False))
                await trio.sleep(0.3)
                await second.send_raw(client_frame(0x0, b"A" * 2_000, fin=False))
                assert await second.receive() is None
            assert second.closed is not None
            assert second.closed.code == 1009
            assert "busy" in second.closed.reason
        await trio.sleep(0.3)  # the first one's share is given back when it goes
        async with RawWebSocket.open(upload_server.url) as third:
            await third.send_raw(client_frame(0x1, start, fin=False))
            await third.send_raw(client_frame(0x0, b'"}', fin=True))
            reply = await third.receive()
    assert isinstance(reply, str)
    assert json.loads(reply)["type"] == "error"
