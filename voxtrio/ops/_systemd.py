"""systemd integration without libsystemd: sd_notify datagrams and the watchdog.

The protocol is one AF_UNIX datagram of newline-separated `KEY=VALUE` lines to
the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace). Outside systemd the variable is unset and every call is a no-op.

Lines the server sends (see deploy/voxtrio.service, Type=notify):
  STATUS=loading model ...        while starting
  READY=1 / STATUS=serving ...    once the model is warm and the port listens
  WATCHDOG=1                      every WatchdogSec/2 while the engine progresses
  STOPPING=1 / STATUS=draining    on SIGTERM
  RELOADING=1 ... READY=1         around a SIGHUP key reload (optional)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

import structlog
import trio

log = structlog.get_logger("voxtrio.systemd")


def _address(value: str) -> str | None:
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the "@".
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. vsock: addresses (VMs), which this server does not need


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `lines` as one datagram to `$NOTIFY_SOCKET`; False when unset or unsent.

    Never raises and never blocks: a failed notification is logged, not fatal
    (systemd drains its socket continuously; a full queue means it is not
    listening anyway).
    """
    env = os.environ if environ is None else environ
    value = env.get("NOTIFY_SOCKET")
    if not value or not lines:
        return False
    address = _address(value)
    if address is None:
        log.warning("notify_socket_unsupported", notify_socket=value)
        return False
    # A newline inside a value would start a new (bogus) assignment.
    message = "\n".join(" ".join(line.splitlines()) for line in lines).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("notify_failed", error=str(exc))
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds from `$WATCHDOG_USEC`, or None when not for us.

    `$WATCHDOG_PID`, when set, must be this process (a child that inherited the
    variables must not ping on the service's behalf).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        log.warning("watchdog_env_invalid", watchdog_usec=usec, watchdog_pid=pid)
        return None
    return value / 1_000_000 if value > 0 else None


async def watchdog_loop(
    is_healthy: Callable[[], bool],
    interval: float,
    *,
    send: Callable[..., bool] = notify,
) -> None:
    """Send WATCHDOG=1 every `interval`/2 while `is_healthy()`; runs until cancelled.

    Pings stop while the engine is stalled, so systemd kills and restarts the
    service once `interval` passes without one (WatchdogSec=, Restart=on-failure).
    Pings resume if it recovers first. A blocked event loop stops them too.
    """
    period = interval / 2
    healthy = True
    while True:
        now_healthy = is_healthy()
        if now_healthy:
            send("WATCHDOG=1")
        if now_healthy != healthy:
            healthy = now_healthy
            if healthy:
                log.info("watchdog_resumed")
                send("STATUS=serving (engine progressing again)")
            else:
                log.error("watchdog_withheld", reason="engine stalled", timeout_s=interval)
                send("STATUS=engine stalled; withholding the watchdog ping")
        await trio.sleep(period)
