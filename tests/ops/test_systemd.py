"""sd_notify datagrams read from a socket the test binds, and the watchdog loop."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from voxtrio.ops._systemd import notify, watchdog_interval, watchdog_loop


def drain(sock: socket.socket) -> list[str]:
    """Every datagram queued on `sock`, decoded."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path and named by $NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 107 bytes"
    with bound(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock


def test_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $NOTIFY_SOCKET nothing is sent and the call says so."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_ready_and_status_travel_in_one_datagram(notify_socket: socket.socket) -> None:
    """Lines given together arrive as one newline-separated datagram."""
    assert notify("READY=1", "STATUS=serving on ws://0.0.0.0:8765/tts")
    assert drain(notify_socket) == ["READY=1\nSTATUS=serving on ws://0.0.0.0:8765/tts"]


def test_each_call_is_its_own_datagram(notify_socket: socket.socket) -> None:
    """Separate calls give separate datagrams, in order."""
    notify("STATUS=loading model")
    notify("WATCHDOG=1")
    notify("STOPPING=1")
    assert drain(notify_socket) == ["STATUS=loading model", "WATCHDOG=1", "STOPPING=1"]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """`@name` addresses a socket in the abstract namespace."""
    name = f"voxtrio-test-{os.getpid()}-{os.urandom(4).hex()}"
    with bound("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert drain(sock) == ["READY=1"]


def test_newlines_inside_a_line_are_flattened(notify_socket: socket.socket) -> None:
    """A value with a newline cannot inject a second assignment."""
    notify("STATUS=bad\nREADY=1")
    assert drain(notify_socket) == ["STATUS=bad READY=1"]


def test_explicit_environ_overrides_the_process_environment(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `environ` mapping is used instead of os.environ."""
    path = os.environ["NOTIFY_SOCKET"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1", environ={"NOTIFY_SOCKET": path})
    assert drain(notify_socket) == ["READY=1"]


def test_unreachable_socket_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that is gone makes notify return False with a warning."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with capture_logs() as logs:
        assert notify("READY=1") is False
    assert [entry["event"] for entry in logs] == ["notify_failed"]


def test_unsupported_address_kind_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vsock address (systemd in a VM) is not supported: False, with a warning."""
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with capture_logs() as logs:
        assert notify("READY=1") is False
    assert [entry["event"] for entry in logs] == ["notify_socket_unsupported"]


def test_notify_without_lines_sends_nothing(notify_socket: socket.socket) -> None:
    """Nothing to say, nothing sent."""
    assert notify() is False
    assert drain(notify_socket) == []


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
    ids=["unset", "usec", "our-pid", "other-pid", "zero", "invalid"],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    """WATCHDOG_USEC gives the timeout in seconds, only for the process WATCHDOG_PID names."""
    with capture_logs():
        assert watchdog_interval(environ) == expected


async def test_watchdog_pings_every_half_interval_while_healthy(
    notify_socket: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    """A healthy engine gets WATCHDOG=1 at t = 0, 1, 2 ... for a 2 s watchdog."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog_loop, lambda: True, 2.0)
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    assert drain(notify_socket) == ["WATCHDOG=1"] * 4


async def test_watchdog_withholds_pings_while_stalled_and_resumes(
    notify_socket: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    """Unhealthy: no pings (a STATUS line instead) until the engine recovers."""
    healthy = [False]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog_loop, lambda: healthy[0], 2.0)
        await trio.sleep(2.5)  # checks at t = 0, 1, 2: all stalled
        stalled = drain(notify_socket)
        healthy[0] = True
        await trio.sleep(1.0)  # check at t = 3: recovered
        nursery.cancel_scope.cancel()
    assert stalled == ["STATUS=engine stalled; withholding the watchdog ping"]
    assert drain(notify_socket) == ["WATCHDOG=1", "STATUS=serving (engine progressing again)"]
