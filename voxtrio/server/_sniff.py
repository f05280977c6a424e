"""Tell a WebSocket handshake from a plain HTTP request on the shared port.

The head is read with a size bound (the caller puts a deadline around it); the
bytes read are replayed to whichever side takes the connection, so neither the
WebSocket library nor the HTTP parser sees a stream that starts mid-request.
"""

from __future__ import annotations

import trio

_RECEIVE_SIZE = 4096
HEAD_END = b"\r\n\r\n"


class HeadTooLarge(Exception):
    """The request head outgrew the bound before its blank line arrived."""


async def read_head(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes:
    """Bytes up to and past the head's blank line (b"" if the peer closed first)."""
    buffered = bytearray()
    while HEAD_END not in buffered:
        if len(buffered) > max_bytes:
            raise HeadTooLarge(f"request head over {max_bytes} bytes")
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            return bytes(buffered)
        buffered += data
    return bytes(buffered)


def wants_websocket(head: bytes) -> bool:
    """True when the head asks to upgrade to WebSocket (RFC 6455 §4.1)."""
    for line in head.split(HEAD_END, 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


class ReplayStream(trio.abc.HalfCloseableStream):
    """`stream`, with `prefix` handed out first by `receive_some`."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    def __repr__(self) -> str:
        # trio-websocket shows a stream it cannot see into by its repr (the `remote`).
        try:
            host, port, *_ = self.stream.socket.getpeername()
        except OSError:
            return "closed"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()
