"""Hostile messages on both endpoints: lone surrogates, floods of unknown keys, many bad
fields at once. Each gets a specific error whose reply encodes as UTF-8, at a bounded size."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voxtrio.protocol._connection_state import ConnectionState, Reply
from voxtrio.protocol._converter import MAX_REPORTED_KEYS
from voxtrio.protocol._dashscope import DashScopeTask, SendEvent
from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._messages import Error, dump_message

from .test_dashscope import TID, continue_task, run_task

LONE = "\ud800"  # json.dumps writes it as the legal escape "\ud800"


def tts(request_id: str = "r1", **params: Any) -> str:
    return json.dumps({"type": "tts_request", "request_id": request_id, "params": params})


def native_reply(text: str) -> tuple[Error, str]:
    """The error a fresh connection answers `text` with, and the frame that carries it."""
    action = ConnectionState().receive_text(text)
    assert isinstance(action, Reply)
    assert isinstance(action.message, Error)
    frame = dump_message(action.message)
    frame.encode("utf-8")  # what the WebSocket layer does; a lone surrogate raised here
    return action.message, frame


def dash_failure(task: DashScopeTask, text: str) -> tuple[dict[str, Any], str]:
    """The task-failed header `text` gets, and the frame that carries it."""
    (frame,) = [
        a.text for a in task.receive_text(text) if isinstance(a, SendEvent) and "failed" in a.event
    ]
    frame.encode("utf-8")
    header: dict[str, Any] = json.loads(frame)["header"]
    return header, frame


# ---------------------------------------------------------------- native: lone surrogates


@pytest.mark.parametrize(
    "text",
    [
        tts(LONE, text="Hi."),
        json.dumps({"type": "cancel", "request_id": LONE}),
        json.dumps({"type": "text_stream_start", "request_id": "a" + LONE}),
        tts("x" + LONE, text=5),
    ],
    ids=["tts_request", "cancel", "text_stream_start", "invalid_message"],
)
def test_lone_surrogate_request_id_is_refused_and_echoed_escaped(text: str) -> None:
    """An id with a lone surrogate is INVALID_PARAMS; the reply echoes it as a JSON escape."""
    error, frame = native_reply(text)
    assert error.error.code is ErrorCode.INVALID_PARAMS
    assert "lone surrogate (U+D800" in error.error.details["request_id"]
    sent_id = json.loads(text)["request_id"]
    assert json.loads(frame)["request_id"] == sent_id  # the client can match it up


def test_refused_start_with_a_surrogate_id_is_its_terminal_message() -> None:
    """A tts_request refused for its id still gets its one terminal message."""
    error, _ = native_reply(tts(LONE, text="Hi."))
    assert error.terminal


def test_lone_surrogate_key_is_named_escaped() -> None:
    """An unknown key holding a lone surrogate is named with a visible \\ud800 escape."""
    error, _ = native_reply(tts(text="Hi.", **{"cfg" + LONE: 1}))
    assert error.error.details == {"params.cfg\\ud800": "unknown key"}
    assert "params.cfg\\ud800: unknown key" in error.error.message


@pytest.mark.parametrize(
    "text",
    [
        tts(text="Hi " + LONE + " there."),
        json.dumps({"type": "text_delta", "request_id": "s", "text": LONE}),
        tts(text="Hi.", prompt_text="a" + LONE, prompt_wav_url="https://x/a.wav"),
    ],
    ids=["tts_text", "text_delta", "prompt_text"],
)
def test_text_with_a_lone_surrogate_is_invalid_params(text: str) -> None:
    """Text that is not valid Unicode never reaches the model: INVALID_PARAMS on its field."""
    error, _ = native_reply(text)
    assert error.error.code is ErrorCode.INVALID_PARAMS
    assert any("lone surrogate" in p for p in error.error.details.values())


def test_valid_astral_text_is_accepted() -> None:
    """A surrogate pair is one character (an emoji), not a lone surrogate."""
    action = ConnectionState().receive_text(tts(text="Hi 😀"))
    assert not isinstance(action, Reply)


# ---------------------------------------------------------------- native: every error at once


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        (
            {"inference_timesteps": 51, "retry_badcase_max_times": 11, "normalize": "yes"},
            {"inference_timesteps", "retry_badcase_max_times", "normalize"},
        ),
        ({"text": "a" * 5001, "normalize": "yes"}, {"text", "normalize"}),
        ({"cfg_value": 99, "cfg_valeu": 2}, {"cfg_value", "cfg_valeu"}),
        ({"sample_rate": 5, "seed": -1, "mode": "x"}, {"sample_rate", "seed", "mode"}),
        ({"voice_description": "", "format": 1}, {"voice_description", "format"}),
    ],
)
def test_range_length_type_and_key_errors_are_reported_together(
    params: dict[str, Any], fields: set[str]
) -> None:
    """Range and length checks do not wait for the other fields to structure."""
    error, _ = native_reply(tts(**{"text": "Hi.", **params}))
    assert set(error.error.details) == {f"params.{f}" for f in fields}
    for field in fields:
        assert f"params.{field}: " in error.error.message


def test_errors_of_nested_and_top_level_fields_come_together() -> None:
    """An empty request id and a mistyped parameter are one error with both."""
    error, _ = native_reply(tts("", text="Hi.", cfg_value="2"))
    assert set(error.error.details) == {"request_id", "params.cfg_value"}


# ---------------------------------------------------------------- native: unknown-key floods


def test_unknown_keys_are_named_up_to_a_cap_and_counted() -> None:
    """Thousands of unknown keys: a few named, the rest counted, the reply stays small."""
    flood = {f"n{i}": 0 for i in range(20_000)}
    error, frame = native_reply(tts(text="Hi.", cfg_value=99, **flood))
    details = error.error.details
    named = [k for k, v in details.items() if v == "unknown key"]
    assert len(named) == MAX_REPORTED_KEYS
    assert details["params.*"] == f"and {20_000 - MAX_REPORTED_KEYS} more unknown keys"
    assert "params.cfg_value" in details
    assert len(frame) < 2000


def test_a_huge_key_name_is_shortened_in_the_reply() -> None:
    """A megabyte-long key is quoted by its first 64 characters."""
    error, frame = native_reply(tts(text="Hi.", **{"k" * 1_000_000: 0}))
    assert error.error.details == {f"params.{'k' * 64}...": "unknown key"}
    assert len(frame) < 1000


def test_too_many_separators_is_invalid_json_at_once() -> None:
    """Past the key budget the message is not decoded at all."""
    flood = ",".join(f'"n{i}":0' for i in range(40_000))
    error, frame = native_reply('{"type":"ping","timestamp":1,' + flood + "}")
    assert error.error.code is ErrorCode.INVALID_JSON
    assert "at most 65536" in error.error.message
    assert len(frame) < 500


# ---------------------------------------------------------------- DashScope


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (run_task(LONE), "header.task_id: contains a lone surrogate"),
        (run_task("x" * 40 + LONE), "header.task_id: contains a lone surrogate"),
        (run_task(**{"hot" + LONE: 1}), "payload.parameters.hot\\ud800: unknown key"),
        (run_task(voice="a" + LONE), "payload.parameters.voice: contains a lone surrogate"),
    ],
    ids=["task_id", "long_task_id", "parameter_key", "voice"],
)
def test_dashscope_lone_surrogates_are_invalid_parameter(text: str, words: str) -> None:
    """task-failed InvalidParameter, valid UTF-8, the task id echoed as a JSON escape."""
    header, _ = dash_failure(DashScopeTask(), text)
    assert header["error_code"] == "InvalidParameter"
    assert words in header["error_message"]
    assert header["task_id"] == json.loads(text)["header"]["task_id"]


def test_dashscope_continue_text_with_a_lone_surrogate_fails_the_task() -> None:
    """The text is refused before the splitter: no sentence-begin could echo it."""
    task = DashScopeTask()
    task.receive_text(run_task())
    header, _ = dash_failure(task, continue_task("Hi " + LONE + " there."))
    assert (header["task_id"], header["error_code"]) == (TID, "InvalidParameter")
    assert "payload.input.text: contains a lone surrogate" in header["error_message"]


def test_dashscope_unknown_keys_are_named_up_to_a_cap_and_counted() -> None:
    """An unknown-key flood in run-task parameters: a short task-failed."""
    flood = {f"n{i}": 0 for i in range(20_000)}
    header, frame = dash_failure(DashScopeTask(), run_task(**flood))
    assert f"and {20_000 - MAX_REPORTED_KEYS} more unknown keys" in header["error_message"]
    assert len(frame) < 2000


def test_dashscope_reports_every_bad_field_at_once() -> None:
    """A range error and an unknown key in one run-task are both named."""
    header, _ = dash_failure(DashScopeTask(), run_task(volume=101, volumes=1))
    assert "payload.parameters.volume: must be between 0 and 100" in header["error_message"]
    assert "payload.parameters.volumes: unknown key" in header["error_message"]


def test_dashscope_break_time_with_400_digits_is_invalid_parameter() -> None:
    """A break longer than float's range is refused like any long break."""
    task = DashScopeTask()
    task.receive_text(run_task(enable_ssml=True))
    header, _ = dash_failure(task, continue_task(f'<speak>A<break time="{"9" * 400}s"/></speak>'))
    assert header["error_code"] == "InvalidParameter"
    assert "at most 10000 ms" in header["error_message"]
