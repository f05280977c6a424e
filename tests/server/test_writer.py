"""FrameWriter over a real 127.0.0.1 WebSocket: whole messages, in order, or ConnectionGone."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
from trio_websocket import WebSocketConnection, WebSocketRequest, open_websocket_url

from voxtrio.server._listener import _GuardedWebSocketServer
from voxtrio.server._pending import PendingRequests
from voxtrio.server._websocket import (
    MessageLimits,
    PartialMessageBudget,
    VoxWebSocketConnection,
    message_header,
)
from voxtrio.server._writer import ConnectionGone, FrameWriter

BIG = 8 * 2**20  # far more than the socket buffers hold: writes go out in parts


@attrs.define
class Pair:
    writer: FrameWriter
    server_ws: WebSocketConnection
    client: WebSocketConnection


@asynccontextmanager
async def writer_pair(write_timeout: float = 5.0) -> AsyncIterator[Pair]:
    """A FrameWriter on the server end of a real WebSocket, and the client end."""
    accepted: trio.MemorySendChannel[WebSocketConnection]
    accepted, take = trio.open_memory_channel[WebSocketConnection](1)
    finished = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        await accepted.send(await request.accept())
        await finished.wait()

    limits = MessageLimits(BIG * 2, 0, frozenset(), PartialMessageBudget(BIG * 4))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server = _GuardedWebSocketServer(
        handler,
        listeners,
        limits=limits,
        pending=PendingRequests(8),
        max_message_size=BIG * 2,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        url = f"ws://127.0.0.1:{port}/tts"
        async with open_websocket_url(url, max_message_size=BIG * 2) as client:
            server_ws = await take.receive()
            assert isinstance(server_ws, VoxWebSocketConnection)
            writer = FrameWriter(
                server_ws, write_timeout=write_timeout, activity=server_ws.activity
            )
            yield Pair(writer, server_ws, client)
            finished.set()
        nursery.cancel_scope.cancel()


async def write_until_it_fails(writer: FrameWriter, payload: bytes, *, pause: float) -> None:
    for _ in range(1000):
        await writer.send_frame(b"h", payload)
        await trio.sleep(pause)


def test_message_header_lengths() -> None:
    """RFC 6455: 7-bit, 16-bit and 64-bit lengths, FIN set, no mask."""
    assert message_header(0x2, 125) == b"\x82\x7d"
    assert message_header(0x2, 126) == b"\x82\x7e\x00\x7e"
    assert message_header(0x1, 65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")


async def test_the_plain_tcp_connection_is_written_directly() -> None:
    """An open connection over plain TCP offers its socket for direct writes."""
    with trio.fail_after(10):
        async with writer_pair() as pair:
            assert pair.server_ws.direct_socket() is not None  # type: ignore[attr-defined]


async def test_a_large_frame_to_a_slow_reader_arrives_whole() -> None:
    """A frame larger than the socket buffers is written in parts and arrives intact."""
    payload = bytes(range(256)) * (BIG // 256)
    with trio.fail_after(20):
        async with writer_pair() as pair, trio.open_nursery() as nursery:
            nursery.start_soon(pair.writer.send_frame, b"head", payload)
            await trio.sleep(0.2)  # the writer is blocked on a full socket by now
            message = await pair.client.get_message()
    assert message == b"head" + payload
    assert pair.writer.frames_sent == 1


async def test_concurrent_writers_never_interleave() -> None:
    """Frames from many tasks each arrive whole, in each task's own order."""
    tasks, frames, size = 8, 20, 200_000
    got: list[bytes] = []
    with trio.fail_after(30):
        async with writer_pair() as pair:

            async def write(task: int) -> None:
                for index in range(frames):
                    head = bytes([task, index])
                    await pair.writer.send_frame(head, bytes([task]) * size)

            async with trio.open_nursery() as nursery:
                for task in range(tasks):
                    nursery.start_soon(write, task)
                for _ in range(tasks * frames):
                    got.append(bytes(await pair.client.get_message()))
    for task in range(tasks):
        mine = [message for message in got if message[0] == task]
        assert [message[1] for message in mine] == list(range(frames))
        assert all(message[2:] == bytes([task]) * size for message in mine)


async def test_text_goes_out_as_a_text_message() -> None:
    """A str is sent as a UTF-8 text message."""
    with trio.fail_after(10):
        async with writer_pair() as pair:
            await pair.writer.send('{"type":"progress","message":"语音"}')
            assert await pair.client.get_message() == '{"type":"progress","message":"语音"}'


async def test_a_reader_that_stops_fails_the_write_after_write_timeout() -> None:
    """A client that reads nothing makes a write raise ConnectionGone once write_timeout passes."""
    with trio.fail_after(20):
        async with writer_pair(write_timeout=0.5) as pair:
            began = trio.current_time()
            with pytest.raises(ConnectionGone, match="read nothing"):
                await write_until_it_fails(pair.writer, bytes(BIG), pause=0)
            assert trio.current_time() - began < 5
            with pytest.raises(ConnectionGone):  # and stays broken
                await pair.writer.send(b"more")


async def test_a_vanished_peer_gives_connection_gone() -> None:
    """Writing to a peer whose socket was closed raises ConnectionGone, nothing else."""
    with trio.fail_after(10):
        async with writer_pair() as pair:
            await pair.client._stream.aclose()  # no close handshake: the TCP connection drops
            with pytest.raises(ConnectionGone):
                await write_until_it_fails(pair.writer, bytes(65536), pause=0.001)


async def test_a_cancelled_writer_sends_nothing() -> None:
    """A write whose request is already cancelled raises Cancelled and sends no frame."""
    with trio.fail_after(10):
        async with writer_pair() as pair:
            with trio.CancelScope() as scope:
                scope.cancel()
                await pair.writer.send_frame(b"h", b"lost")
            await pair.writer.send_frame(b"h", b"kept")
            assert await pair.client.get_message() == b"hkept"
    assert pair.writer.frames_sent == 1


async def test_try_send_frame_writes_a_whole_frame_at_once() -> None:
    """With the connection free, try_send_frame writes the frame now and says so."""
    with trio.fail_after(10):
        async with writer_pair() as pair, trio.open_nursery() as tails:
            pair.writer.tails = tails
            assert pair.writer.try_send_frame(b"head", b"audio" * 100)
            assert pair.writer.frames_sent == 1
            assert pair.writer.try_send_text('{"type":"progress"}')
            assert await pair.client.get_message() == b"head" + b"audio" * 100
            assert await pair.client.get_message() == '{"type":"progress"}'


async def test_try_send_frame_declines_while_a_write_turn_is_held() -> None:
    """Someone else writing (trio-websocket's pong, say): nothing sent, False, send it later."""
    with trio.fail_after(10):
        async with writer_pair() as pair, trio.open_nursery() as tails:
            pair.writer.tails = tails
            turn = pair.server_ws.stream_lock  # type: ignore[attr-defined]
            turn.acquire_nowait()
            assert not pair.writer.try_send_frame(b"h", b"declined")
            turn.release()
            await pair.writer.send_frame(b"h", b"sent")
            assert await pair.client.get_message() == b"hsent"
    assert pair.writer.frames_sent == 1


async def test_try_send_frame_declines_without_a_nursery_for_the_rest() -> None:
    """No `tails` nursery to finish a partial write in: the writer offers no handover."""
    with trio.fail_after(10):
        async with writer_pair() as pair:
            assert not pair.writer.try_send_frame(b"h", b"declined")
            await pair.writer.send_frame(b"h", b"sent")
            assert await pair.client.get_message() == b"hsent"


async def test_a_partial_handover_is_finished_before_the_next_frame() -> None:
    """A frame the socket takes in part is finished by a task once the peer reads; a frame
    sent after it waits for it, and both arrive intact, in order."""
    payload = bytes(range(256)) * (BIG // 256)
    sent_after = trio.Event()
    with trio.fail_after(20):
        async with writer_pair() as pair, trio.open_nursery() as tails:
            pair.writer.tails = tails
            sock = pair.server_ws.direct_socket()  # type: ignore[attr-defined]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            # Two messages the client leaves unread fill its queue: it stops reading.
            await pair.writer.send(b"first")
            await pair.writer.send(b"second")
            assert pair.writer.try_send_frame(b"big", payload)
            assert not pair.writer.try_send_frame(b"h", b"x")  # the rest is still going out

            async def send_after() -> None:
                await pair.writer.send_frame(b"after", b"!")
                sent_after.set()

            tails.start_soon(send_after)
            await trio.sleep(0.2)
            assert not sent_after.is_set()  # the peer reads nothing: the rest waits, so must it
            got = [await pair.client.get_message() for _ in range(4)]
            await sent_after.wait()
    assert got == [b"first", b"second", b"big" + payload, b"after!"]
    assert pair.writer.frames_sent == 4


async def test_try_send_frame_declines_once_the_connection_is_broken() -> None:
    """After a write timed out (part of a frame may be on the wire), nothing more is written."""
    with trio.fail_after(20):
        async with writer_pair(write_timeout=0.3) as pair, trio.open_nursery() as tails:
            pair.writer.tails = tails
            with pytest.raises(ConnectionGone):
                await write_until_it_fails(pair.writer, bytes(BIG), pause=0)
            sent = pair.writer.frames_sent
            assert not pair.writer.try_send_frame(b"h", b"x")
            assert not pair.writer.try_send_text("{}")
            assert pair.writer.frames_sent == sent


async def test_try_send_frame_declines_when_the_socket_takes_nothing() -> None:
    """A full socket (the peer reads nothing) takes no byte: the hand-over declines and
    holds no write turn, so the request task sends the frame instead."""
    with trio.fail_after(20):
        async with writer_pair() as pair, trio.open_nursery() as tails:
            pair.writer.tails = tails
            sock = pair.server_ws.direct_socket()  # type: ignore[attr-defined]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            # Fill the kernel's buffers, raw, with whole binary messages (the client must
            # still parse the stream afterwards); `rest` is what the last write left over.
            message = message_header(0x2, 65536) + bytes(65536)
            rest = b""
            with contextlib.suppress(BlockingIOError):
                while True:
                    rest = rest or message
                    rest = rest[os.write(sock.fileno(), rest) :]
            sent = pair.writer.frames_sent
            assert not pair.writer.try_send_frame(b"h", b"x")
            assert pair.writer.frames_sent == sent
            assert not pair.server_ws.stream_lock.locked()  # type: ignore[attr-defined]
            tails.cancel_scope.cancel()
            # Leave a well-formed stream behind, so that both ends close cleanly.
            async with trio.open_nursery() as reader:
                reader.start_soon(_read_forever, pair.client)
                while rest:
                    await trio.lowlevel.wait_writable(sock)
                    with contextlib.suppress(BlockingIOError):
                        rest = rest[os.write(sock.fileno(), rest) :]
                reader.cancel_scope.cancel()


async def _read_forever(client: WebSocketConnection) -> None:
    while True:
        await client.get_message()
