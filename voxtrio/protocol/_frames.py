"""The binary audio frame of seed 000 §2.2, sans-IO.

    AA 55 | type u8 | 00 | metadata length u32 BE | metadata JSON | payload length u32 BE | payload

Type 0x01 is one chunk of a stream, 0x02 the whole audio of a non-streaming request.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any

import attrs

from voxtrio.protocol._json import dump_json

MAGIC = b"\xaa\x55"
_HEAD = struct.Struct(">2sBBI")  # magic, type, reserved, metadata length
_LENGTH = struct.Struct(">I")
# A frame's metadata is a handful of small fields; anything bigger is corrupt.
MAX_METADATA_BYTES = 64 * 1024


class FrameType(enum.IntEnum):
    STREAMING_CHUNK = 0x01
    NON_STREAMING = 0x02


class FrameError(ValueError):
    """Bytes that are not a well-formed audio frame."""


@attrs.frozen
class AudioFrame:
    type: FrameType
    metadata: dict[str, Any]
    payload: bytes


def encode_frame(frame_type: FrameType, metadata: dict[str, Any], payload: bytes) -> bytes:
    """Serialise one frame; metadata is compact UTF-8 JSON."""
    meta = dump_json(metadata).encode()
    if len(meta) > MAX_METADATA_BYTES:
        raise FrameError(f"metadata is {len(meta)} bytes, over {MAX_METADATA_BYTES}")
    return b"".join(
        (
            _HEAD.pack(MAGIC, int(frame_type), 0, len(meta)),
            meta,
            _LENGTH.pack(len(payload)),
            payload,
        )
    )


class StreamFrameHeads:
    """The heads of one stream's STREAMING_CHUNK frames, built without a dict or a JSON dump.

    Only `sequence` and `is_final` change from frame to frame, so the metadata JSON is
    two fixed byte strings around the sequence number. `head(...) + payload` is byte
    for byte `encode_frame(STREAMING_CHUNK, metadata, payload)`, and lets a writer
    send the payload without copying it behind the head.
    """

    def __init__(self, request_id: str, sample_rate: int, audio_format: str) -> None:
        opening = dump_json({"request_id": request_id}).encode()
        self._prefix = opening[:-1] + b',"sequence":'
        self._suffixes = {
            is_final: b","
            + dump_json(
                {"sample_rate": sample_rate, "is_final": is_final, "format": audio_format}
            ).encode()[1:]
            for is_final in (False, True)
        }
        if len(self._prefix) + 20 + len(self._suffixes[False]) > MAX_METADATA_BYTES:
            raise FrameError(f"metadata would be over {MAX_METADATA_BYTES} bytes")

    def head(self, sequence: int, *, is_final: bool, payload_length: int) -> bytes:
        """Everything of the frame before its payload."""
        meta = b"%b%d%b" % (self._prefix, sequence, self._suffixes[is_final])
        return b"%b%b%b" % (
            _HEAD.pack(MAGIC, FrameType.STREAMING_CHUNK, 0, len(meta)),
            meta,
            _LENGTH.pack(payload_length),
        )


def decode_frame(data: bytes | bytearray | memoryview) -> AudioFrame:
    """Parse one whole frame, refusing anything malformed or trailing."""
    view = memoryview(data)
    if len(view) < _HEAD.size + _LENGTH.size:
        raise FrameError(f"frame is {len(view)} bytes, shorter than any header")
    magic, type_byte, reserved, meta_len = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic).hex()}, expected aa55")
    try:
        frame_type = FrameType(type_byte)
    except ValueError:
        raise FrameError(f"unknown frame type 0x{type_byte:02x}") from None
    if reserved != 0:
        raise FrameError(f"reserved byte is 0x{reserved:02x}, expected 00")
    if meta_len > MAX_METADATA_BYTES:
        raise FrameError(f"metadata length {meta_len} is over {MAX_METADATA_BYTES}")
    meta_end = _HEAD.size + meta_len
    if len(view) < meta_end + _LENGTH.size:
        raise FrameError("frame ends inside its metadata")
    try:
        metadata = json.loads(bytes(view[_HEAD.size : meta_end]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"metadata is not JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise FrameError("metadata is not a JSON object")
    (payload_len,) = _LENGTH.unpack_from(view, meta_end)
    payload_start = meta_end + _LENGTH.size
    if len(view) != payload_start + payload_len:
        raise FrameError(
            f"payload length says {payload_len} bytes, frame carries {len(view) - payload_start}"
        )
    return AudioFrame(frame_type, metadata, bytes(view[payload_start:]))
