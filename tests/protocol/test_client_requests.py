"""A client's view of each request: the checks every frame and result pass, and the id table."""

from __future__ import annotations

import pytest

from voxtrio.protocol._client_errors import ProtocolViolation
from voxtrio.protocol._client_incoming import (
    AudioChunk,
    IncomingAudio,
    StreamingChunkMetadata,
    WholeAudioMetadata,
)
from voxtrio.protocol._client_requests import ClientRequest, RequestTable
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._frames import FrameType
from voxtrio.protocol._messages import Mode, SynthesisResult, Timings, Words, WordTime

TIMINGS = Timings(1.0, 50.0, 900.0, 0.9)


def request(
    mode: Mode = "streaming", audio_format: AudioFormat = "pcm16", request_id: str = "r"
) -> ClientRequest:
    return ClientRequest(request_id=request_id, mode=mode, format=audio_format, last_activity=0.0)


def chunk(
    sequence: int, pcm: bytes, *, final: bool = False, rate: int = 16000, fmt: AudioFormat = "pcm16"
) -> IncomingAudio:
    meta = StreamingChunkMetadata("r", sequence, rate, final, fmt)
    return IncomingAudio(FrameType.STREAMING_CHUNK, meta, pcm)


def whole(pcm: bytes, duration: float, rate: int = 16000) -> IncomingAudio:
    return IncomingAudio(FrameType.NON_STREAMING, WholeAudioMetadata("r", rate, duration), pcm)


def result(samples: int, rate: int = 16000, fmt: AudioFormat = "pcm16") -> SynthesisResult:
    return SynthesisResult(samples / rate, rate, samples, 1, 7, TIMINGS, fmt)


def test_streaming_chunks_in_sequence_are_handed_on_and_the_final_one_ends_the_audio() -> None:
    """Sequence 0, 1, ... then an empty final frame; the result must count every sample."""
    state = request()
    assert state.accept_audio(chunk(0, b"\x01\x00" * 10)) == AudioChunk(b"\x01\x00" * 10, 16000, 0)
    assert state.accept_audio(chunk(1, b"\x02\x00" * 6)) == AudioChunk(b"\x02\x00" * 6, 16000, 1)
    assert state.accept_audio(chunk(2, b"", final=True)) is None
    assert (state.audio_done, state.samples, state.sample_rate) == (True, 16, 16000)
    state.check_result(result(16))


def test_a_whole_audio_frame_is_one_chunk_with_sequence_zero() -> None:
    """A non-streaming request's audio arrives at once and ends its audio."""
    state = request("non_streaming")
    assert state.accept_audio(whole(b"\x00\x00" * 1600, 0.1)) == AudioChunk(
        b"\x00\x00" * 1600, 16000, 0
    )
    state.check_result(result(1600))


@pytest.mark.parametrize(
    ("frames", "problem"),
    [
        ([chunk(1, b"")], "frame sequence 1, expected 0"),
        ([chunk(0, b"\x00\x00"), chunk(0, b"\x00\x00")], "frame sequence 0, expected 1"),
        ([chunk(0, b"\x00\x00"), chunk(1, b"\x00\x00", rate=24000)], "sample_rate changed"),
        ([chunk(0, b"", rate=0)], "sample_rate 0"),
        ([chunk(0, b"\x00\x00", fmt="mp3")], "mp3 audio, pcm16 was asked for"),
        ([chunk(0, b"\x00\x00\x00")], "3 bytes of 16-bit audio"),
        ([chunk(0, b"\x00\x00", final=True)], "final frame carrying 2 bytes"),
        ([chunk(0, b"", final=True), chunk(1, b"")], "after its audio had ended"),
        ([whole(b"\x00\x00", 0.1)], "NON_STREAMING frame for a streaming request"),
    ],
)
def test_a_streaming_frame_that_breaks_the_protocol_is_a_violation(
    frames: list[IncomingAudio], problem: str
) -> None:
    """Each broken rule is named, with the request it concerns."""
    state = request()
    *good, bad = frames
    for frame in good:
        state.accept_audio(frame)
    with pytest.raises(ProtocolViolation, match=problem) as caught:
        state.accept_audio(bad)
    assert str(caught.value).startswith("request 'r': ")


def test_a_whole_audio_frame_whose_duration_is_not_its_samples_is_a_violation() -> None:
    """For pcm16 the duration must be the byte count's (1 ms slack)."""
    state = request("non_streaming")
    with pytest.raises(ProtocolViolation, match=r"duration 0\.5 does not match 1600 samples"):
        state.accept_audio(whole(b"\x00\x00" * 1600, 0.5))


def test_an_encoded_whole_audio_frame_is_not_held_to_its_byte_count() -> None:
    """An mp3's bytes are not samples."""
    state = request("non_streaming", "mp3")
    meta = WholeAudioMetadata("r", 16000, 2.0, "mp3")
    assert state.accept_audio(IncomingAudio(FrameType.NON_STREAMING, meta, b"ID3"))


def test_a_complete_before_the_end_of_the_audio_is_a_violation() -> None:
    """The final frame (or the whole audio) comes before the result."""
    state = request()
    state.accept_audio(chunk(0, b"\x00\x00"))
    with pytest.raises(ProtocolViolation, match="complete before the end of its audio"):
        state.check_result(result(1))


def test_a_result_that_miscounts_the_audio_is_a_violation_naming_each_mismatch() -> None:
    """Samples, rate and format of the result must be those of the frames."""
    state = request()
    state.accept_audio(chunk(0, b"\x00\x00" * 4))
    state.accept_audio(chunk(1, b"", final=True))
    with pytest.raises(ProtocolViolation) as caught:
        state.check_result(result(5, rate=24000))
    assert "samples 5 != 4 received" in str(caught.value)
    assert "sample_rate 24000 != frames' 16000" in str(caught.value)


def test_word_times_going_back_within_a_request_are_a_violation() -> None:
    """Times run forward through a request's sentences."""
    state = request()
    state.accept_words(Words("r", 0, [WordTime("One.", 0.0, 1.0)], estimated=True))
    with pytest.raises(ProtocolViolation, match=r"'Two\.' starts at 0\.5, before 1\.0"):
        state.accept_words(Words("r", 1, [WordTime("Two.", 0.5, 1.5)], estimated=True))


def test_a_cancel_is_claimed_once_and_never_after_the_end() -> None:
    """A second cancel, or one after the terminal message, is not sent."""
    state = request()
    assert state.claim_cancel() is True
    assert state.claim_cancel() is False
    ended = request()
    ended.terminal_received = True
    assert ended.claim_cancel() is False


def test_a_fresh_id_is_made_when_none_is_given_and_a_busy_one_is_refused() -> None:
    """Ids are unique on a connection until the server has ended them."""
    table = RequestTable[ClientRequest]()
    first, second = table.reserve(None), table.reserve(None)
    assert first != second
    table.add(request(request_id="r"))
    with pytest.raises(ValueError, match="'r' is still active"):
        table.reserve("r")
    assert table.ids == frozenset({"r"})


def test_a_message_names_an_active_request_and_refreshes_its_activity() -> None:
    """Any message about a request counts as the server being alive for it."""
    table = RequestTable[ClientRequest]()
    state = request()
    table.add(state)
    assert table.lookup("r", "progress", now=12.5) is state
    assert state.last_activity == 12.5


def test_a_message_for_an_unknown_request_is_a_violation() -> None:
    """The server talks about an id this client never opened (or already saw end)."""
    table = RequestTable[ClientRequest]()
    with pytest.raises(ProtocolViolation, match="progress for unknown request 'x'"):
        table.lookup("x", "progress", now=0.0)


def test_the_terminal_message_frees_the_id() -> None:
    """After `finish`, the id may be used again and is not looked up any more."""
    table = RequestTable[ClientRequest]()
    state = request()
    table.add(state)
    table.finish(state)
    assert state.terminal_received
    assert table.ids == frozenset()
    assert table.reserve("r") == "r"


def test_an_abandoned_request_drops_messages_until_its_end_arrives() -> None:
    """Given up on, its id stays busy; its terminal message frees it."""
    table = RequestTable[ClientRequest]()
    state = request()
    table.add(state)
    table.abandon(state)
    assert table.lookup("r", "audio frame", now=1.0) is None
    with pytest.raises(ValueError, match="still active"):
        table.reserve("r")
    assert table.lookup("r", "complete", now=2.0, terminal=True) is None
    assert table.reserve("r") == "r"
    with pytest.raises(ProtocolViolation):
        table.lookup("r", "complete", now=3.0, terminal=True)


def test_discarding_forgets_only_that_very_request() -> None:
    """A stale handle does not remove a newer request that reuses the id."""
    table = RequestTable[ClientRequest]()
    old, new = request(), request()
    table.add(old)
    table.discard(old)
    table.add(new)
    table.discard(old)
    assert table.get("r") is new


def test_draining_hands_over_every_active_request_and_empties_the_table() -> None:
    """When the connection fails, each active request is woken once."""
    table = RequestTable[ClientRequest]()
    states = [request(request_id=rid) for rid in ("a", "b")]
    for state in states:
        table.add(state)
    assert table.drain() == states
    assert table.ids == frozenset()
