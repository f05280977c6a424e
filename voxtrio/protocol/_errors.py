"""Error codes of the wire protocol and the exception that carries one."""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.StrEnum):
    """Every `error.code` the server sends (docs/PROTOCOL.md lists when)."""

    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_MESSAGE_TYPE = "UNKNOWN_MESSAGE_TYPE"
    INVALID_PARAMS = "INVALID_PARAMS"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    DUPLICATE_REQUEST_ID = "DUPLICATE_REQUEST_ID"
    UNKNOWN_REQUEST = "UNKNOWN_REQUEST"
    MODEL_NOT_LOADED = "MODEL_NOT_LOADED"
    GENERATION_FAILED = "GENERATION_FAILED"
    RATE_LIMITED = "RATE_LIMITED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    FORBIDDEN = "FORBIDDEN"


class ProtocolError(Exception):
    """A request or message the server refuses, with the error it answers with.

    `request_id` is the id the error is about, when the offending message had a
    readable one; the error message echoes it so the client can match it up.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.request_id = request_id
        # The `type` of the client message this answers, when it was readable.
        self.message_type: str | None = None

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!s}, {self.message!r}, details={self.details!r})"
