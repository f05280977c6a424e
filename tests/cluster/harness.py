"""A real cluster on 127.0.0.1: N `voxtrio serve` instances behind HAProxy.

HAProxy runs deploy/haproxy.cfg itself, with only its addresses rewritten: the
frontend's bind and each `server` line point at the free ports the instances
picked. Instances share one voice library directory, as they would share a
network file system in production.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import trio

from ..support import http_get

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
START_TIMEOUT_S = 120.0
HAPROXY_UP_TIMEOUT_S = 20.0


@attrs.define(eq=False)
class Instance:
    name: str
    process: trio.Process
    url: str  # ws://127.0.0.1:PORT/tts
    metrics_url: str  # http://127.0.0.1:PORT

    @property
    def port(self) -> int:
        return int(self.url.removeprefix("ws://").split("/")[0].rsplit(":", 1)[1])

    @property
    def metrics_port(self) -> int:
        return int(self.metrics_url.rsplit(":", 1)[1].split("/")[0])


@attrs.define(eq=False)
class Cluster:
    instances: list[Instance]
    haproxy: trio.Process
    frontend_port: int
    stats_socket: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.frontend_port}/tts"

    def instance(self, name: str) -> Instance:
        return next(i for i in self.instances if i.name == name)

    async def server_states(self) -> dict[str, str]:
        """HAProxy's view: server name -> UP / DOWN / MAINT / ... (from its stats socket)."""
        reply = await trio.to_thread.run_sync(_stats_command, self.stats_socket, "show stat")
        states = {}
        for line in reply.splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "voxtrio" and fields[1] not in ("BACKEND",):
                states[fields[1]] = fields[17]
        return states

    async def until_states(self, wanted: dict[str, str], timeout: float) -> float:
        """Wait until HAProxy sees each named server in the wanted state; seconds taken."""
        start = trio.current_time()
        with trio.fail_after(timeout):
            while True:
                states = await self.server_states()
                if all(states.get(name, "").startswith(w) for name, w in wanted.items()):
                    return trio.current_time() - start
                await trio.sleep(0.1)


def _stats_command(path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_config(instances: Sequence[Instance], frontend_port: int, stats: Path) -> str:
    """deploy/haproxy.cfg with the frontend and servers moved to this cluster's ports."""
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"(?m)^(\s*bind )\S+", rf"\g<1>127.0.0.1:{frontend_port}", text)
    text = re.sub(r"(?m)^\s*server .*\n", "", text)
    servers = "".join(
        f"    server {i.name} 127.0.0.1:{i.port} check port {i.metrics_port}\n" for i in instances
    )
    text = text.rstrip("\n") + "\n" + servers
    # The test reads server states from the runtime API; production may add it too.
    return text.replace("global\n", f"global\n    stats socket {stats} mode 600 level admin\n", 1)


async def start_instance(
    name: str, workdir: Path, flags: Sequence[str], env: dict[str, str]
) -> Instance:
    ready = workdir / f"{name}.ready"
    log = (workdir / f"{name}.log").open("wb")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "voxtrio", "serve", "--port", "0", "--metrics-port", "0",
         "--ready-file", str(ready), "--log-format", "json", *flags],
        stdout=log, stderr=log, env={**os.environ, **env},
    )  # fmt: skip
    log.close()
    with trio.fail_after(START_TIMEOUT_S):
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited early; see {workdir / (name + '.log')}")
            await trio.sleep(0.05)
    url, metrics = ready.read_text().split()[:2]
    return Instance(name, process, url, metrics)


@asynccontextmanager
async def cluster(
    workdir: Path, size: int, flags: Sequence[str], env: dict[str, str] | None = None
) -> AsyncIterator[Cluster]:
    """Start `size` instances and HAProxy; stop everything (kill what is left) at the end."""
    binary = haproxy_binary()
    assert binary, "haproxy is not installed (Debian: apt-get install haproxy)"
    async with AsyncExitStack() as stack:
        instances: list[Instance] = []
        stack.push_async_callback(_kill_all, instances)
        async with trio.open_nursery() as nursery:
            for index in range(size):
                nursery.start_soon(_start_into, instances, f"voxtrio{index}", workdir, flags, env)
        instances.sort(key=lambda i: i.name)
        frontend_port = free_port()
        stats = workdir / "haproxy.sock"
        config = workdir / "haproxy.cfg"
        config.write_text(render_config(instances, frontend_port, stats))
        haproxy_log = (workdir / "haproxy.log").open("wb")
        haproxy = await trio.lowlevel.open_process(
            [binary, "-db", "-f", str(config)], stdout=haproxy_log, stderr=haproxy_log
        )
        haproxy_log.close()
        stack.push_async_callback(_kill, haproxy)
        result = Cluster(instances, haproxy, frontend_port, stats)
        with trio.fail_after(HAPROXY_UP_TIMEOUT_S):
            while not stats.exists():
                await trio.sleep(0.05)
        await result.until_states({i.name: "UP" for i in instances}, HAPROXY_UP_TIMEOUT_S)
        yield result


async def _start_into(
    into: list[Instance], name: str, workdir: Path, flags: Sequence[str], env: dict[str, str] | None
) -> None:
    into.append(await start_instance(name, workdir, flags, env or {}))


async def _kill(process: trio.Process) -> None:
    if process.poll() is None:
        process.kill()
    with trio.move_on_after(10):
        await process.wait()


async def _kill_all(instances: list[Instance]) -> None:
    for instance in instances:
        await _kill(instance.process)


async def requests_served(instance: Instance) -> float:
    """The instance's completed-request count, from its /metrics."""
    status, body = await http_get(f"{instance.metrics_url}/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("voxcpm_tts_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def terminate(instance: Instance) -> None:
    instance.process.send_signal(signal.SIGTERM)
