"""ProtocolError -> OpenAI's JSON error body and the HTTP status it travels with."""

from __future__ import annotations

import math
from typing import Any, Final

from voxtrio.protocol._errors import ErrorCode, ProtocolError

_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.UNSUPPORTED_FORMAT: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.MODEL_NOT_LOADED: 503,
    ErrorCode.SHUTTING_DOWN: 503,
}


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def http_error(exc: ProtocolError) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    """Status, OpenAI-shaped body and extra headers (Retry-After) for `exc`."""
    status = _STATUS.get(exc.code, 500)
    headers: list[tuple[str, str]] = []
    retry_ms = exc.details.get("retry_after_ms")
    if status in (429, 503):
        seconds = math.ceil(retry_ms / 1000) if isinstance(retry_ms, int | float) else 1
        headers.append(("retry-after", str(max(seconds, 1))))
    kind = {400: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "server_error"
    )
    params = [key for key in exc.details if key not in ("retry_after_ms", "scope", "limit")]
    param = params[0] if len(params) == 1 else None
    return status, error_body(exc.message, kind, str(exc.code).lower(), param), headers
