"""What a server sends a client, decoded into typed values or refused as a violation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voxtrio.protocol._client_errors import ProtocolViolation
from voxtrio.protocol._client_incoming import (
    SERVER_MESSAGE_TYPES,
    AudioChunk,
    IncomingAudio,
    StreamingChunkMetadata,
    WholeAudioMetadata,
    decode_audio_frame,
    decode_server_text,
)
from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._frames import FrameType, encode_frame
from voxtrio.protocol._messages import (
    CancelledResult,
    Complete,
    Error,
    ErrorBody,
    Pong,
    Progress,
    ServerMessage,
    SynthesisResult,
    Timings,
    Words,
    WordTime,
    dump_message,
)
from voxtrio.protocol._voice_messages import Voices

RESULT = SynthesisResult(1.0, 16000, 16000, 4, 7, Timings(1.0, 50.0, 900.0, 0.9))
WORDS = {
    "type": "words",
    "request_id": "r",
    "sentence": 0,
    "words": [{"text": "Hi.", "start": 0.0, "end": 0.3}],
    "estimated": False,
}


def decode(payload: Any) -> ServerMessage:
    return decode_server_text(json.dumps(payload), SERVER_MESSAGE_TYPES)


@pytest.mark.parametrize(
    "message",
    [
        Progress("r", "generating", 0.5),
        Complete("r", RESULT),
        Complete("r", CancelledResult()),
        Error("r", ErrorBody(ErrorCode.RATE_LIMITED, "full"), terminal=True),
        Error(None, ErrorBody(ErrorCode.INVALID_JSON, "not JSON")),
        Pong(5, 6),
        Words("r", 0, [WordTime("Hi.", 0.0, 0.3)], estimated=False),
        Voices("r", []),
    ],
)
def test_what_the_server_encodes_decodes_to_the_same_message(message: ServerMessage) -> None:
    """Every server message round-trips through the server's encoder and this decoder."""
    assert decode_server_text(dump_message(message), SERVER_MESSAGE_TYPES) == message


def test_a_words_message_decodes_into_its_word_times() -> None:
    """`words`: one sentence's words, each with its start and end in seconds."""
    message = decode(WORDS)
    assert isinstance(message, Words)
    assert message.words == [WordTime("Hi.", 0.0, 0.3)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not an object"),
        ('{"type": "shout"}', "unknown type 'shout'"),
        ('{"request_id": "r"}', "unknown type None"),
        ('{"type": "progress", "request_id": "r"}', "invalid progress message"),
    ],
)
def test_text_that_is_no_server_message_is_a_violation(text: str, problem: str) -> None:
    """Each refusal says what was wrong with the text."""
    with pytest.raises(ProtocolViolation, match=problem):
        decode_server_text(text, SERVER_MESSAGE_TYPES)


def test_an_invalid_field_is_named_in_the_violations_details() -> None:
    """The converter's per-field problems come along as `details`."""
    with pytest.raises(ProtocolViolation) as caught:
        decode({"type": "pong", "timestamp": "soon", "server_time": 1})
    assert "timestamp" in caught.value.details


def test_a_type_the_client_does_not_handle_is_a_violation() -> None:
    """A client passing part of the types refuses the rest instead of dropping them."""
    handled = {"progress": SERVER_MESSAGE_TYPES["progress"]}
    with pytest.raises(ProtocolViolation, match="unknown type 'voices'"):
        decode_server_text(dump_message(Voices("r", [])), handled)


def test_a_complete_with_an_empty_result_is_a_violation() -> None:
    """`"result": {}` is neither a result nor a cancellation."""
    with pytest.raises(ProtocolViolation, match="empty result"):
        decode({"type": "complete", "request_id": "r", "result": {}})


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_progress_outside_zero_to_one_is_a_violation(value: float) -> None:
    """Progress is a fraction of the request."""
    with pytest.raises(ProtocolViolation, match=r"outside 0\.\.1"):
        decode({"type": "progress", "request_id": "r", "state": "generating", "progress": value})


def test_a_word_that_ends_before_it_starts_is_a_violation() -> None:
    """Within one word, time runs forward."""
    bad = {**WORDS, "words": [{"text": "Hi.", "start": 0.5, "end": 0.3}]}
    with pytest.raises(ProtocolViolation, match="ends before it starts"):
        decode(bad)


def test_a_streaming_frame_decodes_with_its_chunk_metadata() -> None:
    """A 0x01 frame: the request, the sequence, the rate, whether it is the last."""
    meta = {"request_id": "r", "sequence": 3, "sample_rate": 24000, "is_final": False}
    frame = decode_audio_frame(encode_frame(FrameType.STREAMING_CHUNK, meta, b"\x01\x00"))
    assert frame == IncomingAudio(
        FrameType.STREAMING_CHUNK, StreamingChunkMetadata("r", 3, 24000, False), b"\x01\x00"
    )


def test_a_whole_audio_frame_decodes_with_its_duration() -> None:
    """A 0x02 frame: the request, the rate, the duration, the format."""
    meta = {"request_id": "r", "sample_rate": 16000, "duration": 0.5, "format": "wav"}
    frame = decode_audio_frame(encode_frame(FrameType.NON_STREAMING, meta, b"RIFF"))
    assert frame.metadata == WholeAudioMetadata("r", 16000, 0.5, "wav")


def test_a_malformed_frame_is_a_violation() -> None:
    """Bytes that are no frame at all."""
    with pytest.raises(ProtocolViolation, match="malformed audio frame"):
        decode_audio_frame(b"\x00\x01\x02")


def test_frame_metadata_missing_a_field_is_a_violation() -> None:
    """A streaming frame without its sequence cannot be checked, so it is refused."""
    meta = {"request_id": "r", "sample_rate": 24000, "is_final": False}
    with pytest.raises(ProtocolViolation, match="streaming frame's metadata") as caught:
        decode_audio_frame(encode_frame(FrameType.STREAMING_CHUNK, meta, b""))
    assert "sequence" in caught.value.details


def test_a_pcm_chunk_knows_its_samples_and_duration() -> None:
    """16-bit mono: two bytes a sample."""
    chunk = AudioChunk(b"\x00" * 3200, 16000, 0)
    assert (chunk.samples, chunk.duration) == (1600, 0.1)


def test_an_encoded_chunk_does_not_guess_its_samples() -> None:
    """An mp3 chunk's length says nothing about its samples."""
    chunk = AudioChunk(b"\x00" * 3200, 16000, 0, "mp3")
    assert (chunk.samples, chunk.duration) == (None, None)
