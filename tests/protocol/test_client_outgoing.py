"""What a client sends: parameters checked, messages built as the server parses them."""

from __future__ import annotations

import json

import pytest

from voxtrio.protocol._client_outgoing import (
    MAX_DELTA_CHARS,
    PARAM_NAMES,
    PingStamps,
    cancel_message,
    encode_message,
    opening_message,
    ping_message,
    request_params,
    text_delta,
    timeout_message,
)
from voxtrio.protocol._messages import (
    Cancel,
    Ping,
    TextDelta,
    TextStreamStart,
    TtsRequest,
    parse_client_message,
)


def test_the_parameter_names_are_the_protocols_options_without_text_and_mode() -> None:
    """Voices and word timings are parameters; the text and the mode are arguments."""
    assert {"cfg_value", "seed", "format", "voice_id", "word_timestamps"} <= PARAM_NAMES
    assert not {"text", "mode"} & PARAM_NAMES


def test_request_params_leave_out_what_is_none() -> None:
    """None means the server's default, so the key is not sent."""
    assert request_params({"seed": 7, "cfg_value": None}) == {"seed": 7}


def test_request_params_refuse_unknown_names_all_at_once() -> None:
    """A typo is a TypeError naming every unknown name, before anything is sent."""
    with pytest.raises(TypeError, match=r"unknown synthesis parameter\(s\): cfg_valeu, sed"):
        request_params({"sed": 1, "cfg_valeu": 2.0, "seed": 3})


def test_a_tts_request_is_what_the_server_parses() -> None:
    """The opening message round-trips through the server's own strict parser."""
    body = {"text": "Hello.", "mode": "non_streaming", **request_params({"seed": 7})}
    parsed = parse_client_message(encode_message(opening_message("tts_request", "r1", body)))
    assert isinstance(parsed, TtsRequest)
    assert (parsed.request_id, parsed.params.text, parsed.params.seed) == ("r1", "Hello.", 7)
    assert parsed.params.mode == "non_streaming"


def test_a_text_stream_start_is_what_the_server_parses() -> None:
    """Its params are options only: no text, no mode."""
    message = opening_message("text_stream_start", "r2", request_params({"word_timestamps": True}))
    parsed = parse_client_message(encode_message(message))
    assert isinstance(parsed, TextStreamStart)
    assert parsed.params.word_timestamps is True


def test_cancel_ping_and_text_delta_are_what_the_server_parses() -> None:
    """Each builder's message parses into the server's message of that type."""
    assert parse_client_message(encode_message(cancel_message("r1"))) == Cancel("r1")
    assert parse_client_message(encode_message(ping_message(123))) == Ping(123)
    delta = parse_client_message(encode_message({**text_delta("Hi"), "request_id": "r1"}))
    assert delta == TextDelta("r1", "Hi")


@pytest.mark.parametrize("length", [0, MAX_DELTA_CHARS + 1])
def test_a_text_piece_outside_its_length_bounds_is_refused(length: int) -> None:
    """Empty or over the server's limit: ValueError here, not an error from the server."""
    with pytest.raises(ValueError, match="characters"):
        text_delta("a" * length)


def test_a_text_piece_at_the_limit_is_accepted() -> None:
    """MAX_DELTA_CHARS characters is still one piece."""
    assert text_delta("a" * MAX_DELTA_CHARS)["text"] == "a" * MAX_DELTA_CHARS


def test_encoded_messages_are_compact_and_always_valid_utf8() -> None:
    """No spaces, non-ASCII kept, a lone surrogate escaped instead of breaking the send."""
    text = encode_message({"type": "text_delta", "text": "héllo \ud800"})
    assert text == '{"type":"text_delta","text":"héllo \\ud800"}'
    text.encode("utf-8")
    assert json.loads(text)["text"] == "héllo \ud800"


def test_ping_stamps_are_unique_even_within_one_millisecond() -> None:
    """The pong is matched to its ping by the echoed timestamp."""
    stamps = PingStamps()
    taken = [stamps.next() for _ in range(1000)]
    assert taken == sorted(set(taken))


def test_a_timeout_message_names_the_request_that_nobody_reads() -> None:
    """When another request's unread audio pauses the reader, the message says which."""
    plain = timeout_message("a", 60.0, None)
    assert plain == "no message about request 'a' for response_timeout=60 s"
    assert timeout_message("a", 60.0, "a") == plain
    blocked = timeout_message("a", 60.0, "b")
    assert blocked.startswith(plain)
    assert "nobody reads request 'b'" in blocked
