"""The processes under test: `voxtrio serve` and the direct-engine baseline.

Each runs in its own process so that its CPU and memory are measured apart from
the load generator's. Both inherit the same torch thread count (OMP_NUM_THREADS)
and the raised open-files limit.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

import attrs
import trio

from ._client import RequestTiming
from ._load import LevelRun, monitored
from ._texts import Job


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def child_env(torch_threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["TQDM_DISABLE"] = "1"
    if torch_threads:
        env["OMP_NUM_THREADS"] = str(torch_threads)
        env["MKL_NUM_THREADS"] = str(torch_threads)
    return env


class ProcessFailed(RuntimeError):
    """A process under test exited or did not become ready."""


def server_command(
    ready: Path,
    args: Sequence[str],
    launcher: Sequence[str] = (sys.executable, "-m", "voxtrio"),
    *,
    port: int = 0,
    side_port: int = 0,
) -> list[str]:
    """`<launcher> serve` announcing its URLs in `ready`, logging JSON; ports 0 = free ones."""
    return [
        *launcher,
        "serve",
        "--port",
        str(port),
        "--ready-file",
        str(ready),
        "--log-format",
        "json",
        # A fixed side port (9090) would collide with any other server on the machine.
        "--metrics-port",
        str(side_port),
        *args,
    ]


@attrs.define
class ServerProcess:
    """`python -m voxtrio serve ... --port 0 --ready-file F`, stopped with SIGTERM."""

    process: trio.Process
    url: str
    log_path: Path
    args: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        args: Sequence[str],
        *,
        torch_threads: int | None,
        ready_timeout: float = 900.0,
        launcher: Sequence[str] = (sys.executable, "-m", "voxtrio"),
    ) -> ServerProcess:
        """Start `<launcher> serve --port 0 --ready-file F <args>`; return once it is warm."""
        workdir = Path(tempfile.mkdtemp(prefix="voxtrio-bench-"))
        ready = workdir / "ready"
        log_path = workdir / "server.log"
        command = server_command(ready, args, launcher)
        log = log_path.open("wb")  # handed to the child; closed here once it has it
        try:
            process: trio.Process = await nursery.start(
                _run_process, command, child_env(torch_threads), log
            )
        finally:
            log.close()
        deadline = perf_counter() + ready_timeout
        while not ready.exists():
            if process.returncode is not None or perf_counter() > deadline:
                process.kill()
                raise ProcessFailed(f"the server did not start:\n{_tail(log_path)}")
            await trio.sleep(0.05)
        # Line 1 is the WebSocket URL (line 2, the side port's, is not needed here).
        url = ready.read_text().splitlines()[0].strip()
        return cls(process, url, log_path, list(args))

    async def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, then wait for an orderly exit (SIGKILL after `grace` seconds)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode

    def log_tail(self) -> str:
        return _tail(self.log_path)


async def _run_process(
    command: list[str],
    env: dict[str, str],
    log: Any,
    *,
    stdin: int | None = subprocess.DEVNULL,
    stdout: Any = None,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.run_process(
        command,
        stdin=stdin,
        stdout=log if stdout is None else stdout,
        stderr=log,
        env=env,
        check=False,
        task_status=task_status,
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@attrs.define
class BaselineProcess:
    """`python -m bench.harness._baseline`: the engine in-process, driven by JSON lines."""

    process: trio.Process
    hello: dict[str, Any]
    log_path: Path
    _buffer: bytearray = attrs.Factory(bytearray)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        *,
        model: str,
        device: str,
        workers: int,
        torch_threads: int | None,
        ready_timeout: float = 900.0,
    ) -> BaselineProcess:
        workdir = Path(tempfile.mkdtemp(prefix="voxtrio-baseline-"))
        log_path = workdir / "baseline.log"
        command = [
            sys.executable,
            "-m",
            "bench.harness._baseline",
            "--model",
            model,
            "--device",
            device,
            "--workers",
            str(workers),
        ]
        if torch_threads:
            command += ["--torch-threads", str(torch_threads)]
        log = log_path.open("wb")
        try:
            process: trio.Process = await nursery.start(
                _with_pipes, command, child_env(torch_threads), log
            )
        finally:
            log.close()
        baseline = cls(process, {}, log_path)
        with trio.move_on_after(ready_timeout):
            baseline.hello = await baseline._receive()
        if not baseline.hello.get("ready"):
            process.kill()
            raise ProcessFailed(f"the baseline did not start:\n{_tail(log_path)}")
        return baseline

    async def _send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def _receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some(1 << 20)
            if not data:
                raise ProcessFailed(f"the baseline exited:\n{_tail(self.log_path)}")
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def run(
        self,
        jobs: Sequence[Job],
        *,
        concurrency: int | None = None,
        arrivals: Sequence[float] | None = None,
    ) -> LevelRun:
        """Replay a level in the baseline process; timings come back on this clock."""
        command: dict[str, Any] = {
            "op": "run",
            "jobs": [{"text": j.text, "seed": j.seed, "max_len": j.max_len} for j in jobs],
            "concurrency": concurrency,
            "arrivals": None if arrivals is None else list(arrivals),
        }
        async with monitored({"baseline": self.pid}) as measurement:
            started = perf_counter()  # the child's t=0 is a pipe hop later: ~0.1 ms
            await self._send(command)
            reply = await self._receive()
        rate = int(reply["sample_rate"])
        timings = []
        for item in reply["results"]:
            first = item["first"]
            timings.append(
                RequestTiming(
                    sent=started + item["sent"],
                    first_audio=None if first is None else started + first,
                    done=started + item["done"],
                    samples=item["samples"],
                    chunks=item["chunks"],
                    sample_rate=rate,
                    error=item["error"],
                )
            )
        return LevelRun(timings, started, measurement)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with trio.move_on_after(30):
                await self._send({"op": "quit"})
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


async def _with_pipes(
    command: list[str],
    env: dict[str, str],
    log: Any,
    *,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> None:
    await _run_process(
        command,
        env,
        log,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        task_status=task_status,
    )
