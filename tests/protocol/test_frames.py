"""The binary audio frame (seed 000 §2.2), encoded and decoded without sockets."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxtrio.protocol._frames import (
    MAX_METADATA_BYTES,
    AudioFrame,
    FrameError,
    FrameType,
    StreamFrameHeads,
    decode_frame,
    encode_frame,
)

META = {"request_id": "r1", "sequence": 0, "sample_rate": 48000, "is_final": False}


def test_layout_is_byte_exact() -> None:
    """Magic, type, reserved zero, BE metadata length, metadata, BE payload length, payload."""
    frame = encode_frame(FrameType.STREAMING_CHUNK, {"a": 1}, b"\x01\x02")
    assert (
        frame
        == b"\xaa\x55\x01\x00" + b"\x00\x00\x00\x07" + b'{"a":1}' + b"\x00\x00\x00\x02\x01\x02"
    )


def test_round_trip_streaming_chunk() -> None:
    """A streaming chunk decodes to the metadata and payload it was built from."""
    payload = bytes(range(256)) * 3
    frame = decode_frame(encode_frame(FrameType.STREAMING_CHUNK, META, payload))
    assert frame == AudioFrame(FrameType.STREAMING_CHUNK, META, payload)


def test_round_trip_final_frame_has_empty_payload() -> None:
    """The end-of-stream frame carries is_final and no audio."""
    meta = {**META, "is_final": True}
    frame = decode_frame(encode_frame(FrameType.STREAMING_CHUNK, meta, b""))
    assert frame.metadata["is_final"] is True
    assert frame.payload == b""


def test_non_streaming_type_byte() -> None:
    """Whole audio of a non-streaming request is type 0x02."""
    frame = encode_frame(FrameType.NON_STREAMING, {"duration": 1.5}, b"\x00\x00")
    assert frame[2] == 0x02
    assert decode_frame(frame).type is FrameType.NON_STREAMING


def test_metadata_is_utf8_json() -> None:
    """Non-ASCII request ids survive as UTF-8 JSON."""
    frame = encode_frame(FrameType.STREAMING_CHUNK, {"request_id": "语音-1"}, b"")
    (length,) = struct.unpack_from(">I", frame, 4)
    assert json.loads(frame[8 : 8 + length].decode("utf-8")) == {"request_id": "语音-1"}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "shorter than any header"),
        (b"\xaa\x54\x01\x00\x00\x00\x00\x02{}\x00\x00\x00\x00", "bad magic"),
        (b"\xaa\x55\x07\x00\x00\x00\x00\x02{}\x00\x00\x00\x00", "unknown frame type"),
        (b"\xaa\x55\x01\x01\x00\x00\x00\x02{}\x00\x00\x00\x00", "reserved byte"),
        (b"\xaa\x55\x01\x00\x00\x00\x00\x09{}\x00\x00\x00\x00", "ends inside its metadata"),
        (b"\xaa\x55\x01\x00\x00\x00\x00\x02[]\x00\x00\x00\x00", "not a JSON object"),
        (b"\xaa\x55\x01\x00\x00\x00\x00\x02{x\x00\x00\x00\x00", "not JSON"),
        (b"\xaa\x55\x01\x00\x00\x00\x00\x02{}\x00\x00\x00\x05ab", "payload length"),
        (b"\xaa\x55\x01\x00\x00\x00\x00\x02{}\x00\x00\x00\x00extra", "payload length"),
        (b"\xaa\x55\x01\x00\xff\xff\xff\xff{}\x00\x00\x00\x00", "metadata length"),
    ],
)
def test_malformed_frames_are_refused(data: bytes, problem: str) -> None:
    """Every malformed frame raises FrameError saying what is wrong."""
    with pytest.raises(FrameError, match=problem):
        decode_frame(data)


def test_oversized_metadata_is_refused_on_encode() -> None:
    """The encoder will not build a frame the decoder would refuse."""
    with pytest.raises(FrameError, match="metadata"):
        encode_frame(FrameType.STREAMING_CHUNK, {"x": "a" * MAX_METADATA_BYTES}, b"")


@given(
    meta=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=5),
    payload=st.binary(max_size=2048),
    frame_type=st.sampled_from(FrameType),
)
def test_any_frame_round_trips(
    meta: dict[str, object], payload: bytes, frame_type: FrameType
) -> None:
    """encode then decode is the identity for any metadata and payload."""
    assert decode_frame(encode_frame(frame_type, meta, payload)) == AudioFrame(
        frame_type, meta, payload
    )


@given(data=st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    """Garbage either decodes or raises FrameError, nothing else."""
    with contextlib.suppress(FrameError):
        decode_frame(data)


@given(
    request_id=st.text(max_size=40),
    sequence=st.integers(min_value=0, max_value=10**9),
    is_final=st.booleans(),
    payload=st.binary(max_size=64),
    sample_rate=st.sampled_from([8000, 16000, 48000]),
    audio_format=st.sampled_from(["pcm16", "wav", "opus"]),
)
def test_stream_frame_head_is_encode_frames_prefix(
    request_id: str,
    sequence: int,
    is_final: bool,
    payload: bytes,
    sample_rate: int,
    audio_format: str,
) -> None:
    """A stream's prebuilt head plus the payload is byte for byte the frame encode_frame makes."""
    heads = StreamFrameHeads(request_id, sample_rate, audio_format)
    metadata = {
        "request_id": request_id,
        "sequence": sequence,
        "sample_rate": sample_rate,
        "is_final": is_final,
        "format": audio_format,
    }
    head = heads.head(sequence, is_final=is_final, payload_length=len(payload))
    assert head + payload == encode_frame(FrameType.STREAMING_CHUNK, metadata, payload)


def test_stream_frame_heads_refuse_oversized_metadata() -> None:
    """A request id that cannot fit a frame's metadata is refused when the heads are made."""
    with pytest.raises(FrameError, match="metadata"):
        StreamFrameHeads("r" * MAX_METADATA_BYTES, 48000, "pcm16")
