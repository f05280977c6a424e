"""Speech errors become native wire errors in one place, with today's codes and details."""

from __future__ import annotations

from voxtrio.protocol._errors import ErrorCode
from voxtrio.server._native_errors import native_error
from voxtrio.speech._errors import (
    EngineUnavailable,
    GenerationFailed,
    InvalidOutput,
    NonFiniteOutput,
    Overloaded,
    QueueTimeout,
    StoppedEarly,
)


def test_overloaded_is_rate_limited_with_server_scope() -> None:
    """Overloaded: RATE_LIMITED, scope server, the limit and a retry hint."""
    error = native_error(Overloaded(7), "r")
    assert error.code is ErrorCode.RATE_LIMITED
    assert error.message == "the server is at its limit of 7 concurrent requests"
    assert list(error.details.items()) == [
        ("scope", "server"),
        ("limit", 7),
        ("retry_after_ms", 1000),
    ]
    assert error.request_id == "r"


def test_queue_timeout_is_rate_limited_with_queue_scope() -> None:
    """QueueTimeout: RATE_LIMITED, scope queue, the deadline in the message."""
    error = native_error(QueueTimeout(2.5), "r")
    assert error.code is ErrorCode.RATE_LIMITED
    assert error.message == "no generation slot became free within 2.5 s"
    assert error.details == {"scope": "queue", "retry_after_ms": 1000}


def test_engine_unavailable_is_model_not_loaded() -> None:
    """EngineUnavailable: MODEL_NOT_LOADED."""
    error = native_error(EngineUnavailable("the model is not loaded"), "r")
    assert (error.code, error.message) == (ErrorCode.MODEL_NOT_LOADED, "the model is not loaded")


def test_generation_failures_are_generation_failed() -> None:
    """Every GenerationFailed kind: GENERATION_FAILED with its own message."""
    for exc in (GenerationFailed("generation failed: X: y"), NonFiniteOutput(), StoppedEarly()):
        error = native_error(exc, "r")
        assert (error.code, error.message) == (ErrorCode.GENERATION_FAILED, exc.message)


def test_invalid_output_names_the_field_it_is_about() -> None:
    """InvalidOutput: INVALID_PARAMS with the offending params field as the detail key."""
    bit_rate = native_error(InvalidOutput("bit_rate", "bit_rate must be ..."), "r")
    assert bit_rate.code is ErrorCode.INVALID_PARAMS
    assert bit_rate.message == "invalid audio output: bit_rate must be ..."
    assert bit_rate.details == {"params.bit_rate": "bit_rate must be ..."}
    rate = native_error(InvalidOutput("sample_rate", "unsupported rate"), "r")
    assert rate.details == {"params.sample_rate": "unsupported rate"}
