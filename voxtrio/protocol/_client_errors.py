"""What the clients raise: one base class, one subclass per way a call can fail.

Both clients (`voxtrio.client` on Trio, `voxtrio.aioclient` on asyncio) raise these
same classes and re-export them under their own names, so `except
voxtrio.client.SynthesisError` and `except voxtrio.aioclient.SynthesisError` catch
the same thing. They hold no I/O: the clients build them from what the wire said.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._messages import Error


class VoxtrioClientError(Exception):
    """Base class of everything a client raises about the server or the connection."""


class ConnectError(VoxtrioClientError):
    """The connection could not be opened: refused, unreachable, rejected or too slow."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ConnectionLost(VoxtrioClientError):
    """The connection closed (or was closed) while something still needed it."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ProtocolViolation(VoxtrioClientError):
    """The server sent something the protocol does not allow; the connection is closed."""

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = dict(details or {})


class ResponseTimeout(VoxtrioClientError, TimeoutError):
    """The server sent nothing about a request (or a ping) within the named deadline."""


class SynthesisError(VoxtrioClientError):
    """The server ended a request with an `error` message.

    `code` is an `ErrorCode` when this client knows it, else the server's string.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        details: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.request_id = request_id

    def __repr__(self) -> str:
        return (
            f"SynthesisError({str(self.code)!r}, {self.message!r}, "
            f"details={self.details!r}, request_id={self.request_id!r})"
        )


class SynthesisCancelled(VoxtrioClientError):
    """`speak()` of a request that was cancelled before it finished."""


def known_code(code: str) -> ErrorCode | str:
    """`code` as an ErrorCode, or as the server's text when this client does not know it."""
    # A newer server may send codes this client does not know: keep them as text.
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def synthesis_error(message: Error) -> SynthesisError:
    """The SynthesisError a server `error` message stands for."""
    body = message.error
    return SynthesisError(known_code(body.code), body.message, body.details, message.request_id)


def clone_failure(exc: VoxtrioClientError) -> VoxtrioClientError:
    """A fresh copy of a connection's failure for each caller, caused by the original.

    One instance raised in many tasks tangles its traceback; the copy keeps the
    class (ProtocolViolation, else ConnectionLost) and its `details` or `code`.
    """
    copy: VoxtrioClientError
    if isinstance(exc, ProtocolViolation):
        copy = ProtocolViolation(str(exc), details=exc.details)
    elif isinstance(exc, ConnectionLost):
        copy = ConnectionLost(str(exc), code=exc.code)
    else:
        copy = ConnectionLost(str(exc))
    copy.__cause__ = exc
    return copy
