"""One client connection's protocol state: the text it sends, and where each message goes."""

from __future__ import annotations

import pytest

from voxtrio.protocol._client_connection import (
    AudioFor,
    ClientConnectionState,
    Ended,
    Reply,
    ServerNotice,
    WordsFor,
)
from voxtrio.protocol._client_errors import ConnectionLost, ProtocolViolation, SynthesisError
from voxtrio.protocol._client_incoming import SERVER_MESSAGE_TYPES, AudioChunk
from voxtrio.protocol._client_requests import ClientRequest
from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._frames import FrameType, encode_frame
from voxtrio.protocol._messages import (
    Cancel,
    CancelledResult,
    Complete,
    Error,
    ErrorBody,
    Ping,
    Pong,
    Progress,
    SynthesisResult,
    Timings,
    TtsRequest,
    Words,
    WordTime,
    dump_message,
    parse_client_message,
)
from voxtrio.protocol._voice_messages import Voices

State = ClientConnectionState[ClientRequest]


def connection() -> State:
    return ClientConnectionState(SERVER_MESSAGE_TYPES)


def opened(state: State, request_id: str = "r") -> ClientRequest:
    request = ClientRequest(
        request_id=state.requests.reserve(request_id),
        mode="streaming",
        format="pcm16",
        last_activity=0.0,
    )
    state.open_request(request, "tts_request", {"text": "Hi."})
    return request


def frame(sequence: int, pcm: bytes, *, final: bool = False, request_id: str = "r") -> bytes:
    meta = {"request_id": request_id, "sequence": sequence, "sample_rate": 16000}
    return encode_frame(FrameType.STREAMING_CHUNK, {**meta, "is_final": final}, pcm)


def error(request_id: str | None, code: ErrorCode = ErrorCode.RATE_LIMITED) -> str:
    return dump_message(Error(request_id, ErrorBody(code, "no"), terminal=True))


def test_opening_a_request_registers_it_and_gives_the_text_the_server_parses() -> None:
    """The opening message names the request's id; the id is busy from then on."""
    state = connection()
    request = ClientRequest(request_id="r", mode="streaming", format="pcm16", last_activity=0.0)
    text = state.open_request(request, "tts_request", {"text": "Hi.", "seed": 7})
    parsed = parse_client_message(text)
    assert isinstance(parsed, TtsRequest)
    assert (parsed.request_id, parsed.params.seed) == ("r", 7)
    assert state.requests.get("r") is request


def test_a_cancel_is_sent_once() -> None:
    """The first call gives the cancel's text, later ones nothing."""
    state = connection()
    request = opened(state)
    text = state.cancel(request)
    assert text is not None
    assert parse_client_message(text) == Cancel("r")
    assert state.cancel(request) is None


def test_pings_carry_the_timestamp_their_pong_comes_back_under() -> None:
    """Each ping's key is its own timestamp; the pong echoing it is the reply to that key."""
    state = connection()
    timestamp, text = state.ping()
    assert parse_client_message(text) == Ping(timestamp)
    pong = Pong(timestamp, 1)
    assert state.text_received(dump_message(pong), now=0.0) == Reply(timestamp, pong)


def test_progress_is_kept_on_the_request_and_counts_as_activity() -> None:
    """Nothing to hand on: the request keeps the latest progress."""
    state = connection()
    request = opened(state)
    progress = Progress("r", "generating", 0.5)
    assert state.text_received(dump_message(progress), now=3.0) is None
    assert (request.progress, request.last_activity) == (progress, 3.0)


def test_audio_frames_come_back_as_chunks_for_their_request() -> None:
    """A checked chunk to deliver; the final frame delivers nothing."""
    state = connection()
    request = opened(state)
    assert state.frame_received(frame(0, b"\x01\x00"), now=1.0) == AudioFor(
        request, AudioChunk(b"\x01\x00", 16000, 0)
    )
    assert state.frame_received(frame(1, b"", final=True), now=1.0) is None
    assert request.audio_done


def test_word_times_come_back_for_their_request_after_the_check() -> None:
    """Words that run forward are handed on; a step back is a violation."""
    state = connection()
    request = opened(state)
    first = Words("r", 0, [WordTime("One.", 0.0, 1.0)], estimated=False)
    assert state.text_received(dump_message(first), now=0.0) == WordsFor(request, first)
    back = Words("r", 1, [WordTime("Two.", 0.2, 1.5)], estimated=False)
    with pytest.raises(ProtocolViolation, match="before"):
        state.text_received(dump_message(back), now=0.0)


def test_a_complete_that_matches_the_audio_ends_the_request_and_frees_its_id() -> None:
    """The terminal message goes to the request; the id is free for a new one."""
    state = connection()
    request = opened(state)
    state.frame_received(frame(0, b"\x00\x00" * 8), now=0.0)
    state.frame_received(frame(1, b"", final=True), now=0.0)
    result = SynthesisResult(0.0005, 16000, 8, 1, 7, Timings(1.0, 2.0, 3.0, None))
    complete = Complete("r", result)
    assert state.text_received(dump_message(complete), now=0.0) == Ended(request, complete)
    assert request.terminal_received
    assert state.requests.ids == frozenset()


def test_a_complete_that_miscounts_the_audio_is_a_violation() -> None:
    """The result must describe the audio that arrived."""
    state = connection()
    opened(state)
    state.frame_received(frame(0, b"", final=True), now=0.0)
    result = SynthesisResult(1.0, 16000, 16000, 1, 7, Timings(1.0, 2.0, 3.0, None))
    with pytest.raises(ProtocolViolation, match="samples 16000 != 0 received"):
        state.text_received(dump_message(Complete("r", result)), now=0.0)


def test_a_cancelled_complete_ends_the_request_without_a_result_check() -> None:
    """A cancelled request may end at any point of its audio."""
    state = connection()
    request = opened(state)
    complete = Complete("r", CancelledResult())
    assert state.text_received(dump_message(complete), now=0.0) == Ended(request, complete)


def test_an_error_for_a_request_ends_it() -> None:
    """A request's `error` is its terminal message."""
    state = connection()
    request = opened(state)
    event = state.text_received(error("r"), now=0.0)
    assert isinstance(event, Ended)
    assert (event.request, event.message.error.code) == (request, ErrorCode.RATE_LIMITED)


def test_an_error_about_no_request_is_a_notice() -> None:
    """The server could not place a message of ours: a SynthesisError to log, not to raise."""
    event = connection().text_received(error(None, ErrorCode.INVALID_JSON), now=0.0)
    assert isinstance(event, ServerNotice)
    assert event.error.code is ErrorCode.INVALID_JSON


def test_an_error_naming_an_awaited_exchange_is_its_reply() -> None:
    """voice_list refused: the SynthesisError goes to whoever waits for the reply."""
    state = connection()
    state.await_reply("v1")
    event = state.text_received(error("v1", ErrorCode.FORBIDDEN), now=0.0)
    assert isinstance(event, Reply)
    assert event.key == "v1"
    assert isinstance(event.value, SynthesisError)
    assert event.value.code is ErrorCode.FORBIDDEN


def test_an_error_for_an_exchange_no_longer_awaited_is_a_violation() -> None:
    """Once the caller stopped waiting, the id is unknown like any other."""
    state = connection()
    state.await_reply("v1")
    state.stop_awaiting("v1")
    with pytest.raises(ProtocolViolation, match="unknown request 'v1'"):
        state.text_received(error("v1"), now=0.0)


def test_a_voice_reply_comes_back_under_its_request_id() -> None:
    """voice_list's answer is matched by the id the client chose."""
    voices = Voices("v1", [])
    assert connection().text_received(dump_message(voices), now=0.0) == Reply("v1", voices)


def test_unknown_request_for_a_cancel_that_crossed_the_end_is_harmless() -> None:
    """The server answers a late cancel with UNKNOWN_REQUEST: nothing to do."""
    assert connection().text_received(error("gone", ErrorCode.UNKNOWN_REQUEST), now=0.0) is None


def test_messages_for_an_abandoned_request_are_dropped_until_its_end() -> None:
    """Given up on after the cancel deadline: its late audio and end are dropped quietly."""
    state = connection()
    request = opened(state)
    state.requests.abandon(request)
    assert state.frame_received(frame(0, b"\x00\x00"), now=0.0) is None
    assert state.text_received(error("r"), now=0.0) is None
    with pytest.raises(ProtocolViolation, match="unknown request 'r'"):
        state.frame_received(frame(1, b"\x00\x00"), now=0.0)


def test_a_message_type_outside_the_handled_ones_is_a_violation() -> None:
    """A client without voice calls refuses a voice reply instead of dropping it."""
    handled = {kind: SERVER_MESSAGE_TYPES[kind] for kind in ("progress", "complete", "error")}
    state = ClientConnectionState[ClientRequest](handled)
    with pytest.raises(ProtocolViolation, match="unknown type 'voices'"):
        state.text_received(dump_message(Voices("v1", [])), now=0.0)


def test_the_first_failure_wins_and_every_request_is_handed_back_once() -> None:
    """After a failure nothing more is sent; each call raises a copy of the first one."""
    state = connection()
    first, second = opened(state, "a"), opened(state, "b")
    lost = ConnectionLost("the server closed the connection", code=1001)
    assert state.fail(lost) == [first, second]
    assert state.fail(ConnectionLost("later")) == []
    assert state.closed
    assert state.cancel(first) is None
    with pytest.raises(ConnectionLost, match="the server closed") as caught:
        state.check_usable()
    assert caught.value is not lost
    assert caught.value.__cause__ is lost
    assert caught.value.code == 1001


def test_raising_without_a_failure_says_the_request_ended_without_its_end() -> None:
    """A stream whose channel closed with no failure recorded still raises something clear."""
    with pytest.raises(ConnectionLost, match="without a terminal message"):
        connection().raise_failure()


def test_a_timeout_names_the_request_whose_unread_audio_pauses_the_reader() -> None:
    """The hint appears only while the reader waits on another request's full buffer."""
    state = connection()
    assert "nobody reads" not in state.timeout_message("a", 5.0)
    state.reader_blocked_on = "b"
    assert "nobody reads request 'b'" in state.timeout_message("a", 5.0)
