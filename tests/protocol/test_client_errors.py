"""The clients' error classes, and how a server `error` and a failure become them."""

from __future__ import annotations

import pytest

from voxtrio.protocol._client_errors import (
    ConnectError,
    ConnectionLost,
    ProtocolViolation,
    ResponseTimeout,
    SynthesisError,
    VoxtrioClientError,
    clone_failure,
    known_code,
    synthesis_error,
)
from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._messages import Error, ErrorBody


@pytest.mark.parametrize(
    "error",
    [
        ConnectError("refused", status_code=503),
        ConnectionLost("closed", code=1001),
        ProtocolViolation("bad frame"),
        ResponseTimeout("silent"),
        SynthesisError(ErrorCode.RATE_LIMITED, "full"),
    ],
)
def test_every_error_is_a_voxtrio_client_error(error: Exception) -> None:
    """One `except VoxtrioClientError` catches every way a call can fail."""
    assert isinstance(error, VoxtrioClientError)


def test_a_response_timeout_is_also_a_timeout_error() -> None:
    """Code that catches the built-in TimeoutError catches ResponseTimeout too."""
    assert isinstance(ResponseTimeout("silent"), TimeoutError)


def test_a_known_code_becomes_its_error_code_and_an_unknown_one_stays_text() -> None:
    """A newer server's code is kept as the server's string, not refused."""
    assert known_code("RATE_LIMITED") is ErrorCode.RATE_LIMITED
    assert known_code("SOMETHING_NEW") == "SOMETHING_NEW"


def test_a_server_error_message_becomes_a_synthesis_error_with_all_it_said() -> None:
    """Code, message, details and request id come over from the `error` message."""
    message = Error("r1", ErrorBody(ErrorCode.INVALID_PARAMS, "bad cfg", {"cfg_value": "range"}))
    error = synthesis_error(message)
    assert error.code is ErrorCode.INVALID_PARAMS
    assert (error.message, error.details, error.request_id) == (
        "bad cfg",
        {"cfg_value": "range"},
        "r1",
    )
    assert str(error) == "INVALID_PARAMS: bad cfg"
    assert repr(error) == (
        "SynthesisError('INVALID_PARAMS', 'bad cfg', details={'cfg_value': 'range'}, "
        "request_id='r1')"
    )


def test_a_cloned_protocol_violation_keeps_its_class_and_details() -> None:
    """Each waiter gets its own copy, caused by the connection's one failure."""
    failure = ProtocolViolation("bad frame", details={"sequence": "3 != 2"})
    copy = clone_failure(failure)
    assert type(copy) is ProtocolViolation
    assert copy is not failure
    assert copy.details == {"sequence": "3 != 2"}
    assert str(copy) == "bad frame"
    assert copy.__cause__ is failure


def test_a_cloned_lost_connection_keeps_its_close_code() -> None:
    """The close code (1001 going away, 1009 too big...) survives the copy."""
    copy = clone_failure(ConnectionLost("the server closed the connection", code=1001))
    assert type(copy) is ConnectionLost
    assert copy.code == 1001


def test_any_other_failure_is_cloned_as_a_lost_connection() -> None:
    """A failure that is neither kind still reaches the waiter as ConnectionLost."""
    failure = ResponseTimeout("no pong")
    copy = clone_failure(failure)
    assert type(copy) is ConnectionLost
    assert str(copy) == "no pong"
    assert copy.__cause__ is failure
