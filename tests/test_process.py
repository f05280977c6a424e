"""`voxtrio serve` as a real process: start-up, signals, graceful drain, exit codes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed

from .support import RawSession, handshake_status, host_port, serve_process, session

LONG_TEXT = "A sentence long enough to take many chunks. " * 4  # 45 chunks


async def drain_messages(s: RawSession) -> None:
    while True:
        await s.receive_one()


async def test_sigterm_drains_running_requests_then_exits_zero(tmp_path: Path) -> None:
    """SIGTERM: the running stream finishes, new connections are refused, exit 0."""
    async with serve_process(tmp_path, "--synthetic-rtf", "0.1") as served:
        async with session(served.url) as s:
            await s.request("r", text=LONG_TEXT)
            await s.until("r", "frame1")
            served.process.send_signal(signal.SIGTERM)
            await s.until_terminal("r")
            assert s.outcomes["r"].terminal["type"] == "complete"
            assert "final" in s.outcomes["r"].order
        with trio.fail_after(30):
            assert await served.process.wait() == 0


async def test_requests_after_sigterm_get_shutting_down(tmp_path: Path) -> None:
    """While draining, a new request on an open connection is refused with SHUTTING_DOWN."""
    async with serve_process(tmp_path, "--synthetic-rtf", "0.1") as served:
        async with session(served.url) as s:
            await s.request("running", text=LONG_TEXT)
            await s.until("running", "frame1")
            served.process.send_signal(signal.SIGTERM)
            await trio.sleep(0.3)
            await s.request("late", text="too late")
            await s.until_terminal("late", "running")
        assert s.outcomes["late"].terminal["error"]["code"] == "SHUTTING_DOWN"
        assert s.outcomes["running"].terminal["type"] == "complete"
        with trio.fail_after(30):
            assert await served.process.wait() == 0


async def test_drain_deadline_ends_requests_with_shutting_down(tmp_path: Path) -> None:
    """Past --drain-timeout, running requests end with SHUTTING_DOWN and 1001 closes."""
    async with serve_process(
        tmp_path, "--synthetic-rtf", "1.0", "--drain-timeout", "0.5"
    ) as served:
        async with session(served.url) as s:
            await s.request("slow", text=LONG_TEXT)
            await s.until("slow", "frame1")
            served.process.send_signal(signal.SIGTERM)
            await s.until_terminal("slow")
            assert s.outcomes["slow"].terminal["error"]["code"] == "SHUTTING_DOWN"
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                await drain_messages(s)
            assert closed.value.reason.code == 1001
        with trio.fail_after(30):
            assert await served.process.wait() == 0


async def test_listener_closes_when_draining(tmp_path: Path) -> None:
    """Once draining, the port no longer accepts new WebSocket connections."""
    async with serve_process(tmp_path, "--synthetic-rtf", "1.0", "--drain-timeout", "3") as served:
        host, port = host_port(served.url)
        async with session(served.url) as s:
            await s.request("slow", text=LONG_TEXT)
            await s.until("slow", "frame1")
            served.process.send_signal(signal.SIGTERM)
            await trio.sleep(0.5)
            with pytest.raises(OSError, match="onnect"):
                await handshake_status(host, port, "/tts")
        with trio.fail_after(30):
            await served.process.wait()


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    """A second SIGTERM during the drain stops the process straight away (exit 1)."""
    async with (
        serve_process(tmp_path, "--synthetic-rtf", "1.0", "--drain-timeout", "60") as served,
        session(served.url) as s,
    ):
        await s.request("slow", text=LONG_TEXT)
        await s.until("slow", "frame1")
        served.process.send_signal(signal.SIGTERM)
        await trio.sleep(0.3)
        served.process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await served.process.wait() == 1


async def test_invalid_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    """A bad environment variable stops start-up with a message naming it (exit 2)."""
    result = await trio.run_process(
        [sys.executable, "-m", "voxtrio", "serve", "--engine", "synthetic"],
        env={**os.environ, "TTS_PORT": "http"},
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"TTS_PORT" in result.stderr


async def test_non_loopback_host_needs_explicit_opt_in(tmp_path: Path) -> None:
    """Listening beyond loopback without authentication is refused at start-up."""
    result = await trio.run_process(
        [sys.executable, "-m", "voxtrio", "serve", "--engine", "synthetic", "--host", "0.0.0.0"],
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"--allow-unauthenticated" in result.stderr


async def test_idle_connection_is_closed(tmp_path: Path) -> None:
    """A connection with no message and no request for --idle-timeout is closed (1000)."""
    async with serve_process(tmp_path, "--idle-timeout", "0.5") as served, session(served.url) as s:
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            await s.receive_one()
    assert closed.value.reason.code == 1000


async def test_json_logs_are_one_object_per_line_at_debug(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """LOG_FORMAT=json at DEBUG: every stderr line (stdlib, warnings, voxcpm prints) is JSON."""
    import json

    stderr_path = tmp_path / "stderr.txt"
    ready = tmp_path / "ready"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [
                *(sys.executable, "-m", "voxtrio", "serve", "--engine", "voxcpm"),
                *("--model", str(tiny_model_dir), "--port", "0", "--metrics-port", "0"),
                *("--ready-file", str(ready)),
            ],
            stderr=stderr,
            env={**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"},
        )
        try:
            with trio.fail_after(120):
                while not ready.exists():
                    assert process.poll() is None, "voxtrio serve exited before it was ready"
                    await trio.sleep(0.05)
                async with session(ready.read_text().split()[0]) as s:
                    await s.request("r", text="Hi.")
                    await s.until_terminal("r")
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
        finally:
            if process.poll() is None:
                process.kill()
            await process.wait()
    lines = stderr_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # raises on the first line that is not JSON
    assert all(isinstance(e, dict) and "event" in e and "level" in e for e in events)
    assert any(e.get("logger") == "trio-websocket" for e in events)  # stdlib logging
    # voxcpm's weight_norm FutureWarning (one per layer at every load) is filtered out;
    # other warnings reach the log as py.warnings events (tests/test_logging.py).
    assert not any("weight_norm" in json.dumps(e) for e in events)
    printed = [e["line"] for e in events if e["event"] == "stderr_output"]
    assert "Loaded VoxCPM2Model" in printed  # voxcpm's print(..., file=sys.stderr)
