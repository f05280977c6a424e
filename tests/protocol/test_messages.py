"""Parsing client messages: strict types, unknown keys, ranges, per-field errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._messages import (
    CancelledResult,
    Complete,
    Ping,
    Progress,
    TtsRequest,
    dump_message,
    parse_client_message,
)


def tts(params: dict[str, Any], request_id: Any = "r1") -> str:
    return json.dumps({"type": "tts_request", "request_id": request_id, "params": params})


def refused(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    return info.value


def test_defaults_follow_seed_000() -> None:
    """A bare text gets the seed's defaults."""
    message = parse_client_message(tts({"text": "hi"}))
    assert isinstance(message, TtsRequest)
    p = message.params
    assert (p.mode, p.cfg_value, p.inference_timesteps) == ("streaming", 2.0, 10)
    assert (p.normalize, p.denoise, p.retry_badcase) == (False, False, True)
    assert (p.retry_badcase_max_times, p.retry_badcase_ratio_threshold) == (3, 6.0)
    assert (p.seed, p.max_len) == (None, None)


def test_every_parameter_is_read() -> None:
    """All parameters of §3.1 plus seed and max_len are taken as sent."""
    params = {
        "text": "hi",
        "mode": "non_streaming",
        "cfg_value": 3.5,
        "inference_timesteps": 20,
        "normalize": True,
        "denoise": True,
        "retry_badcase": False,
        "retry_badcase_max_times": 0,
        "retry_badcase_ratio_threshold": 1,
        "seed": 42,
        "max_len": 100,
    }
    message = parse_client_message(tts(params))
    assert isinstance(message, TtsRequest)
    assert message.params.retry_badcase_ratio_threshold == 1.0
    assert message.params.seed == 42
    assert message.params.mode == "non_streaming"


@pytest.mark.parametrize(
    ("params", "field", "problem"),
    [
        ({"text": "hi", "inference_timesteps": "7"}, "params.inference_timesteps", "integer"),
        ({"text": "hi", "inference_timesteps": 7.0}, "params.inference_timesteps", "integer"),
        ({"text": "hi", "cfg_value": "2"}, "params.cfg_value", "number"),
        ({"text": "hi", "cfg_value": True}, "params.cfg_value", "number"),
        ({"text": "hi", "normalize": 1}, "params.normalize", "boolean"),
        ({"text": 5}, "params.text", "string"),
        ({"text": "hi", "seed": True}, "params.seed", "integer"),
        ({"text": "hi", "mode": "fast"}, "params.mode", "one of"),
    ],
)
def test_types_are_strict(params: dict[str, Any], field: str, problem: str) -> None:
    """No coercion: "7" is not 7, 1 is not true, 7.0 is not an integer."""
    error = refused(tts(params))
    assert error.code is ErrorCode.INVALID_PARAMS
    assert problem in error.details[field]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cfg_value", 0.05),
        ("cfg_value", 10.5),
        ("inference_timesteps", 0),
        ("inference_timesteps", 51),
        ("retry_badcase_max_times", 11),
        ("retry_badcase_ratio_threshold", 0.5),
        ("retry_badcase_ratio_threshold", 21),
        ("seed", -1),
        ("max_len", 0),
        ("max_len", 5000),
    ],
)
def test_ranges_are_enforced(field: str, value: float) -> None:
    """Values outside seed 000's ranges are refused, naming the field and range."""
    error = refused(tts({"text": "hi", field: value}))
    assert error.code is ErrorCode.INVALID_PARAMS
    assert "between" in error.details[f"params.{field}"]


def test_text_length_limits() -> None:
    """Text must be 1 to 5000 characters."""
    assert "empty" in refused(tts({"text": ""})).details["params.text"]
    assert "5001" in refused(tts({"text": "a" * 5001})).details["params.text"]


def test_unknown_key_is_named() -> None:
    """A typo is caught: the unknown key is named."""
    error = refused(tts({"text": "hi", "cfg": 2.0}))
    assert error.details == {"params.cfg": "unknown key"}


def test_every_bad_field_is_reported_at_once() -> None:
    """Several bad fields give one error with one entry each."""
    error = refused(tts({"text": 1, "mode": "x", "extra": 1}))
    assert set(error.details) == {"params.text", "params.mode", "params.extra"}


def test_missing_fields_are_required() -> None:
    """A request without params or text says what is missing."""
    assert refused(tts({})).details == {"params.text": "is required"}
    error = refused(json.dumps({"type": "tts_request", "request_id": "x"}))
    assert error.details == {"params": "is required"}


def test_error_carries_the_request_id_when_readable() -> None:
    """The error names the request it is about, or null if the id is unreadable."""
    assert refused(tts({"text": 1}, request_id="abc")).request_id == "abc"
    assert refused(tts({"text": 1}, request_id=7)).request_id is None


def test_request_id_bounds() -> None:
    """Request ids are 1 to 128 characters."""
    assert "empty" in refused(tts({"text": "hi"}, request_id="")).details["request_id"]
    assert "too long" in refused(tts({"text": "hi"}, request_id="x" * 129)).details["request_id"]


@pytest.mark.parametrize("text", ["{", "nul", '{"type": "ping",}', "\ud800"])
def test_invalid_json(text: str) -> None:
    """Text that is not JSON is INVALID_JSON."""
    assert refused(text).code is ErrorCode.INVALID_JSON


@pytest.mark.parametrize("text", ["[]", "3", '"tts_request"', "null"])
def test_json_that_is_not_an_object(text: str) -> None:
    """A message must be a JSON object."""
    assert refused(text).code is ErrorCode.INVALID_JSON


def test_deeply_nested_json_is_refused_cleanly() -> None:
    """Pathological nesting is an error, not a crash."""
    error = refused("[" * 100_000 + "]" * 100_000)
    assert error.code is ErrorCode.INVALID_JSON


@pytest.mark.parametrize(
    "payload", [{"request_id": "x"}, {"type": 3}, {"type": "speak", "request_id": "x"}]
)
def test_unknown_or_missing_type(payload: dict[str, Any]) -> None:
    """A missing or unknown `type` is UNKNOWN_MESSAGE_TYPE listing the known ones."""
    error = refused(json.dumps(payload))
    assert error.code is ErrorCode.UNKNOWN_MESSAGE_TYPE
    assert {"cancel", "ping", "tts_request", "text_delta"} <= set(error.details["known_types"])


def test_ping_needs_an_integer_timestamp() -> None:
    """ping carries an integer timestamp."""
    assert parse_client_message('{"type":"ping","timestamp":12}') == Ping(12)
    assert refused('{"type":"ping","timestamp":"12"}').code is ErrorCode.INVALID_PARAMS


def test_server_messages_serialise_with_their_type() -> None:
    """Server messages carry `type` and their fields as the protocol names them."""
    assert json.loads(dump_message(Progress("r", "generating", 0.5))) == {
        "type": "progress",
        "request_id": "r",
        "state": "generating",
        "progress": 0.5,
        "message": "",
    }
    assert json.loads(dump_message(Complete("r", CancelledResult()))) == {
        "type": "complete",
        "request_id": "r",
        "result": {"cancelled": True},
    }
