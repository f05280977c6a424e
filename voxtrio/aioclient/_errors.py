"""What the asyncio client raises: one base class, one subclass per way a call can fail.

The same family as `voxtrio.client`'s (that package is Trio's and importing it pulls
Trio in, so the classes are this package's own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from voxtrio.protocol._errors import ErrorCode


class VoxtrioClientError(Exception):
    """Base class of everything this client raises about the server or the connection."""


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


class ResponseTimeout(VoxtrioClientError, TimeoutError):
    """The server sent nothing about a request (or a ping) within the named deadline."""


class SynthesisError(VoxtrioClientError):
    """The server ended a request with an `error` message (`code`, `message`, `details`)."""

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


def known_code(code: str) -> ErrorCode | str:
    # A newer server may send codes this client does not know: keep them as text.
    try:
        return ErrorCode(code)
    except ValueError:
        return code
