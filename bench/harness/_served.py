"""`serving()`: the harness's `voxtrio serve` for scenarios that are not Trio code.

Scenarios written against asyncio clients (the framework plugins) or that drive
several servers from plain threads need the server without a Trio nursery. This is
`ServerProcess` blocking: the same command line (`server_command`), the same
ready file and log, the same SIGTERM-then-SIGKILL stop.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

from ._procs import ProcessFailed, _tail, child_env, server_command


@attrs.frozen
class RunningServer:
    """A warm `voxtrio serve`: its WebSocket URL, side-port base URL and log."""

    process: subprocess.Popen[bytes]
    url: str
    side_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        """The one port that serves WebSocket and HTTP."""
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def http_base(self) -> str:
        """`http://127.0.0.1:PORT` on the main port (the OpenAI routes, the page)."""
        return self.url.replace("ws://", "http://").removesuffix("/tts")

    def log_tail(self) -> str:
        return _tail(self.log_path)


@contextmanager
def serving(
    args: Sequence[str],
    *,
    torch_threads: int | None = None,
    env: Mapping[str, str | None] | None = None,
    ready_timeout: float = 120.0,
    stop_grace: float = 30.0,
    workdir: Path | None = None,
    name: str = "server",
    launcher: Sequence[str] | None = None,
) -> Iterator[RunningServer]:
    """Start `voxtrio serve <args>`, yield it once warm, stop it on the way out.

    `env` entries override the inherited environment; a value of None removes the
    variable (e.g. an operator's TTS_API_KEYS that would lock the bench out).
    """
    workdir = workdir or Path(tempfile.mkdtemp(prefix="voxtrio-bench-"))
    ready = workdir / f"{name}.ready"
    log_path = workdir / f"{name}.log"
    ready.unlink(missing_ok=True)
    child = child_env(torch_threads)
    for key, value in (env or {}).items():
        if value is None:
            child.pop(key, None)
        else:
            child[key] = value
    command = server_command(ready, args, launcher or (sys.executable, "-m", "voxtrio"))
    with log_path.open("wb") as log:  # the child holds its own copy of the descriptor
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while not ready.exists() or len(ready.read_text().split()) < 2:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ProcessFailed(f"voxtrio serve ({name}) did not start:\n{_tail(log_path)}")
            time.sleep(0.05)
        url, side_url = ready.read_text().split()[:2]
        yield RunningServer(process, url, side_url, log_path)
    finally:
        _stop(process, stop_grace)


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
