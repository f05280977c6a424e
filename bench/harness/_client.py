"""The load generator's own minimal client of voxtrio's native protocol.

It measures exactly what it reports: a request's clock starts just before its
`tts_request` is handed to the socket (or at its scheduled arrival, open-loop), and
an audio chunk counts when its binary frame has been read off the socket. Frames
are not decoded beyond their header (payload length; the metadata JSON of the first
chunk, for the sample rate), so the client stays cheap next to the server.
"""

from __future__ import annotations

import itertools
import json
import struct
from time import perf_counter

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

from ._texts import Job

_HEAD = struct.Struct(">2sBBI")  # magic, type, reserved, metadata length
_LENGTH = struct.Struct(">I")
_MAGIC = b"\xaa\x55"
#: Large reads: a 48 kHz chunk is a 15 KB frame; trio-websocket's 4 KB default splits it.
RECEIVE_BUFFER = 64 * 1024
#: Errors a connection can fail with; they count as a request error, never crash a level.
CONNECTION_ERRORS = (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError)

_ids = itertools.count(1)


class BadFrame(ValueError):
    """A binary message that is not a voxtrio audio frame."""


@attrs.define
class RequestTiming:
    """One request's timeline (perf_counter seconds) and what it delivered."""

    sent: float
    first_audio: float | None = None
    done: float | None = None
    samples: int = 0
    chunks: int = 0
    sample_rate: int = 0
    error: str | None = None
    arrivals: list[float] | None = None
    # Kernel receive times (time.time seconds) of the same chunks: `_wire.py`.
    wire_arrivals: list[float] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.done is not None and self.first_audio is not None

    @property
    def ttfa(self) -> float | None:
        return None if self.first_audio is None else self.first_audio - self.sent

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def rtf(self) -> float | None:
        """(wall - first audio) / audio seconds: how fast the rest of the stream came."""
        if not self.ok or not self.audio_seconds:
            return None
        assert self.done is not None
        assert self.first_audio is not None
        return (self.done - self.first_audio) / self.audio_seconds


def frame_payload_samples(frame: bytes) -> tuple[int, int]:
    """(metadata length, PCM16 samples) of a binary frame, from its header only."""
    if len(frame) < _HEAD.size + _LENGTH.size:
        raise BadFrame(f"frame of {len(frame)} bytes")
    magic, _type, _reserved, meta_len = _HEAD.unpack_from(frame)
    if magic != _MAGIC:
        raise BadFrame(f"bad magic {magic.hex()}")
    (payload_len,) = _LENGTH.unpack_from(frame, _HEAD.size + meta_len)
    return meta_len, payload_len // 2


def frame_sample_rate(frame: bytes, meta_len: int) -> int:
    metadata = json.loads(frame[_HEAD.size : _HEAD.size + meta_len])
    return int(metadata["sample_rate"])


async def connect(nursery: trio.Nursery, url: str) -> WebSocketConnection:
    """One connection whose background reader lives in `nursery`; close with `aclose()`."""
    return await connect_websocket_url(
        nursery, url, max_message_size=16 * 1024 * 1024, receive_buffer_size=RECEIVE_BUFFER
    )


async def synthesize(
    ws: WebSocketConnection,
    job: Job,
    *,
    sent: float | None = None,
    keep_arrivals: bool = False,
) -> RequestTiming:
    """Send one streaming request on `ws` and read until its terminal message.

    One request at a time per connection: every frame on `ws` belongs to it. Raises
    the connection's error if the connection fails; protocol errors are recorded.
    """
    request_id = f"b{next(_ids)}"
    message = json.dumps(
        {"type": "tts_request", "request_id": request_id, "params": job.params()},
        separators=(",", ":"),
    )
    timing = RequestTiming(sent=perf_counter() if sent is None else sent)
    arrivals = timing.arrivals = [] if keep_arrivals else None
    await ws.send_message(message)
    while True:
        received = await ws.get_message()
        now = perf_counter()
        if isinstance(received, bytes):
            if note_audio(timing, received, now) and arrivals is not None:
                arrivals.append(now)
        elif note_message(timing, received, now):
            return timing


def note_audio(timing: RequestTiming, frame: bytes, now: float) -> bool:
    """Count a binary frame's audio in `timing`; False for the empty is_final frame."""
    meta_len, samples = frame_payload_samples(frame)
    if not samples:
        return False
    if timing.first_audio is None:
        timing.first_audio = now
        timing.sample_rate = frame_sample_rate(frame, meta_len)
    timing.samples += samples
    timing.chunks += 1
    return True


def note_message(timing: RequestTiming, text: str, now: float) -> bool:
    """Note a text message in `timing`; True once it is the request's terminal one."""
    decoded = json.loads(text)
    kind = decoded.get("type")
    if kind == "complete":
        timing.done = now
        result = decoded["result"]
        if result.get("cancelled"):
            timing.error = "cancelled"
        elif result.get("samples") != timing.samples:
            timing.error = "audio_mismatch"
        return True
    if kind == "error":
        timing.done = now
        timing.error = str(decoded["error"]["code"])
        return True
    return False  # progress (and any pong): nothing to measure


def failed(sent: float, error: BaseException | str) -> RequestTiming:
    """A request that never completed, for the level's error count."""
    name = error if isinstance(error, str) else type(error).__name__
    return RequestTiming(sent=sent, done=perf_counter(), error=name)
