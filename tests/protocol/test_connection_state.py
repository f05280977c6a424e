"""What a connection does with each message, decided without sockets."""

from __future__ import annotations

import json
from typing import Any

from voxtrio.protocol._connection_state import (
    DENOISE_UNAVAILABLE,
    Capabilities,
    ConnectionState,
    Reply,
    StartRequest,
    StopRequest,
    VoiceCommand,
)
from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._messages import Error, Pong


def tts(request_id: str = "r1", **params: Any) -> str:
    return json.dumps(
        {"type": "tts_request", "request_id": request_id, "params": {"text": "hi", **params}}
    )


def cancel(request_id: str) -> str:
    return json.dumps({"type": "cancel", "request_id": request_id})


def error_of(action: object) -> Error:
    assert isinstance(action, Reply)
    assert isinstance(action.message, Error)
    return action.message


def test_request_starts_and_becomes_active() -> None:
    """A valid request is admitted and its id is active."""
    state = ConnectionState()
    action = state.receive_text(tts("a"))
    assert isinstance(action, StartRequest)
    assert action.request.request_id == "a"
    assert "a" in state.active


def test_duplicate_active_id_is_refused() -> None:
    """An id already active on this connection is DUPLICATE_REQUEST_ID."""
    state = ConnectionState()
    state.receive_text(tts("a"))
    error = error_of(state.receive_text(tts("a")))
    assert (error.error.code, error.request_id) == (ErrorCode.DUPLICATE_REQUEST_ID, "a")


def test_id_is_reusable_after_its_terminal_message() -> None:
    """Once a request finished, its id may be used again."""
    state = ConnectionState()
    state.receive_text(tts("a"))
    state.request_finished("a")
    assert isinstance(state.receive_text(tts("a")), StartRequest)


def test_cancel_of_active_request_stops_it() -> None:
    """cancel of an active id asks the I/O layer to stop that request."""
    state = ConnectionState()
    state.receive_text(tts("a"))
    assert state.receive_text(cancel("a")) == StopRequest("a")


def test_repeated_cancel_is_ignored() -> None:
    """A second cancel while the first is in progress changes nothing."""
    state = ConnectionState()
    state.receive_text(tts("a"))
    state.receive_text(cancel("a"))
    assert state.receive_text(cancel("a")) is None


def test_cancel_of_unknown_id() -> None:
    """cancel of an id that is not active is UNKNOWN_REQUEST."""
    error = error_of(ConnectionState().receive_text(cancel("nope")))
    assert (error.error.code, error.request_id) == (ErrorCode.UNKNOWN_REQUEST, "nope")


def test_per_connection_limit() -> None:
    """Past max_requests active requests, a new one is RATE_LIMITED with the limit."""
    state = ConnectionState(max_requests=2)
    state.receive_text(tts("a"))
    state.receive_text(tts("b"))
    error = error_of(state.receive_text(tts("c")))
    assert error.error.code is ErrorCode.RATE_LIMITED
    assert error.error.details == {"scope": "connection", "limit": 2}
    assert "c" not in state.active


def test_ping_is_answered_with_pong() -> None:
    """ping echoes its timestamp with the server's time."""
    action = ConnectionState().receive_text('{"type":"ping","timestamp":99}')
    assert isinstance(action, Reply)
    assert isinstance(action.message, Pong)
    assert action.message.timestamp == 99
    assert action.message.server_time > 0


def test_binary_from_client_is_unsupported() -> None:
    """Binary frames from a client are UNSUPPORTED_FORMAT."""
    error = error_of(ConnectionState().receive_bytes(b"\x00\x01"))
    assert error.error.code is ErrorCode.UNSUPPORTED_FORMAT


def test_bad_message_does_not_touch_active_requests() -> None:
    """Garbage gets an error and leaves the active set alone."""
    state = ConnectionState()
    state.receive_text(tts("a"))
    assert error_of(state.receive_text("{oops")).error.code is ErrorCode.INVALID_JSON
    assert list(state.active) == ["a"]


def test_denoise_true_is_invalid_params() -> None:
    """denoise: true is refused, naming params.denoise and saying no denoiser is configured."""
    error = error_of(ConnectionState().receive_text(tts(denoise=True)))
    assert error.error.code is ErrorCode.INVALID_PARAMS
    assert error.error.details == {"params.denoise": DENOISE_UNAVAILABLE}
    assert "no denoiser is configured" in DENOISE_UNAVAILABLE


def test_denoise_false_is_accepted() -> None:
    """denoise: false (the default) starts the request as usual."""
    assert isinstance(ConnectionState().receive_text(tts(denoise=False)), StartRequest)


def test_voice_messages_become_voice_commands() -> None:
    """voice_list is handed to the I/O layer as a VoiceCommand, outside the active set."""
    state = ConnectionState()
    action = state.receive_text('{"type":"voice_list","request_id":"v"}')
    assert isinstance(action, VoiceCommand)
    assert state.active == {}


def test_server_text_limit_applies() -> None:
    """The operator's max text length is enforced with the limit named."""
    state = ConnectionState(capabilities=Capabilities(max_text_chars=10))
    error = error_of(
        state.receive_text(
            json.dumps({"type": "tts_request", "request_id": "a", "params": {"text": "x" * 11}})
        )
    )
    assert "at most 10" in error.error.details["params.text"]


def test_whitespace_only_text_is_invalid() -> None:
    """Text with nothing to speak is refused up front."""
    error = error_of(
        ConnectionState().receive_text(
            json.dumps({"type": "tts_request", "request_id": "a", "params": {"text": " \n\t"}})
        )
    )
    assert "only whitespace" in error.error.details["params.text"]


def test_refused_new_request_error_is_terminal() -> None:
    """An invalid tts_request is refused with an error marked terminal for that id."""
    error = error_of(ConnectionState().receive_text(tts("a", cfg_value=99)))
    assert error.terminal is True


def test_duplicate_id_error_is_not_terminal() -> None:
    """DUPLICATE_REQUEST_ID names a request that goes on: not terminal."""
    state = ConnectionState()
    state.receive_text(tts("a"))
    assert error_of(state.receive_text(tts("a"))).terminal is False


def test_bad_cancel_of_a_running_request_is_not_terminal() -> None:
    """A malformed message naming a running id does not end that request."""
    state = ConnectionState()
    state.receive_text(tts("a"))
    error = error_of(state.receive_text('{"type":"cancel","request_id":"a","x":1}'))
    assert (error.error.code, error.terminal) == (ErrorCode.INVALID_PARAMS, False)
