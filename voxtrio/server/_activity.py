"""When a peer last showed it is alive, and write deadlines that count its progress.

Two deadlines judge a peer, and both must judge the peer rather than the server:

- the write timeout drops a client that *stopped reading*: a send is cut once the
  peer has accepted no bytes for `write_timeout`, however long the whole message
  takes to deliver (a client on a slow link reading a large non-streaming message
  is reading; nginx's `send_timeout` has the same meaning);
- the keepalive drops a peer that *went silent*: no pong, no frame from it and no
  drain of what the server queued for it, for `ping_timeout`. A pong queued behind
  the peer's own messages, which a busy server has not read yet, is the server's
  delay; a ping queued behind megabytes of audio that a client reads at its own pace
  reaches it late, while the kernel's send queue to it keeps draining (TCP's own
  keepalive, likewise, probes only a connection with nothing in flight). Bytes from
  the peer still unread when the deadline comes mean the server stalled, not the peer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

_ioctl: Callable[[int, int, bytes], bytes] | None
try:  # bytes in a socket's send queue (unsent or unacknowledged), and unread ones
    import fcntl
    import termios

    _ioctl = fcntl.ioctl
    _FIONREAD, _TIOCOUTQ = termios.FIONREAD, termios.TIOCOUTQ
except ImportError:  # elsewhere the keepalive judges pongs and frames only
    _ioctl = None
    _FIONREAD = _TIOCOUTQ = 0


class PeerActivity:
    """Timestamps (trio clock) of the last frame heard and the last drain seen."""

    def __init__(self, fd: int | None = None) -> None:
        self.heard_at = trio.current_time()
        self.drained_at = self.heard_at
        self._fd = fd  # the socket's, to read its send queue
        self._queued: int | None = None  # in the kernel at the last look
        self._accepted_bytes = 0  # handed to the kernel, all told
        self._accepted_then = 0  # ... at the last look
        self._write_scope: trio.CancelScope | None = None
        self._write_timeout = 0.0

    @property
    def last_sign(self) -> float:
        """When the peer last showed it is there: a frame, or its queue draining."""
        return max(self.heard_at, self.drained_at)

    def _ioctl_int(self, request: int) -> int | None:
        if self._fd is None or _ioctl is None:
            return None
        try:
            value: int = struct.unpack("i", _ioctl(self._fd, request, b"\0\0\0\0"))[0]
        except OSError:
            return None
        return value

    def unread_bytes_waiting(self) -> bool:
        """Bytes from the peer wait in the kernel: the server, not the peer, is behind."""
        return bool(self._ioctl_int(_FIONREAD))

    def look_at_send_queue(self) -> None:
        """Note a drain if the peer took bytes from the kernel's queue since the last look.

        Taken = queued then + handed over since - queued now: a writer topping the
        queue up as the peer reads keeps it full, yet the peer is reading. (A peer
        whose host is gone takes nothing; one whose program froze takes bytes only
        until its receive window closes.)
        """
        queued = self._ioctl_int(_TIOCOUTQ)
        if queued is None:
            return
        handed = self._accepted_bytes - self._accepted_then
        if self._queued is not None and self._queued + handed > queued:
            self.drained_at = trio.current_time()
        self._queued, self._accepted_then = queued, self._accepted_bytes

    def heard(self) -> None:
        """A frame (message, ping, pong, close) from the peer was read."""
        self.heard_at = trio.current_time()

    def accepted(self, size: int) -> None:
        """The transport took `size` more bytes: a guarded write goes on."""
        now = trio.current_time()
        self._accepted_bytes += size
        if self._write_scope is not None:
            self._write_scope.deadline = now + self._write_timeout

    @contextmanager
    def write_deadline(self, timeout: float) -> Iterator[trio.CancelScope]:
        """A shielded scope, cancelled once the peer has accepted no bytes for `timeout`.

        Shielded so a cancelled request cannot tear a frame half-way; the deadline
        moves forward each time the transport takes bytes (`accepted`).
        """
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
            self._write_scope, self._write_timeout = scope, timeout
            try:
                yield scope
            finally:
                self._write_scope = None
