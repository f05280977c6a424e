"""The one place speech-layer errors become native-protocol errors (docs/PROTOCOL.md)."""

from __future__ import annotations

from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.speech._errors import (
    EngineUnavailable,
    GenerationFailed,
    InvalidOutput,
    InvalidText,
    Overloaded,
    QueueTimeout,
    SpeechError,
)

RETRY_AFTER_MS = 1000


def native_error(exc: SpeechError, request_id: str) -> ProtocolError:
    """The `error` a native client gets for `exc`."""
    code: ErrorCode
    details: dict[str, object] = {}
    match exc:
        case EngineUnavailable():
            code = ErrorCode.MODEL_NOT_LOADED
        case Overloaded(limit=limit):
            code = ErrorCode.RATE_LIMITED
            details = {"scope": "server", "limit": limit, "retry_after_ms": RETRY_AFTER_MS}
        case QueueTimeout():
            code = ErrorCode.RATE_LIMITED
            details = {"scope": "queue", "retry_after_ms": RETRY_AFTER_MS}
        case InvalidOutput(setting=setting, reason=reason):
            code = ErrorCode.INVALID_PARAMS
            # Only the rate, bit rate and speed are the client's to choose here.
            field = setting if setting in ("bit_rate", "speed") else "sample_rate"
            details = {f"params.{field}": reason}
        case InvalidText(reason=reason):
            code = ErrorCode.INVALID_PARAMS
            details = {"params.text": reason}
        case GenerationFailed():
            code = ErrorCode.GENERATION_FAILED
        case _:
            code = ErrorCode.INTERNAL_ERROR
    return ProtocolError(code, exc.message, details=details, request_id=request_id)
