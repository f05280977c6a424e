"""Wiring: settings -> engine replicas -> server, with an orderly start and stop."""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import structlog
import trio

from ._config import Settings
from ._engine import Engine, EngineFactory
from ._replicas import ReplicaPool
from ._server import ServerHandle, TtsServer

log = structlog.get_logger("voxtrio.app")


def engine_factory_for(settings: Settings) -> EngineFactory:
    """The engine `settings.engine` names, built lazily on its replica thread."""
    if settings.engine == "synthetic":
        from ._synthetic import SyntheticEngine

        return partial(SyntheticEngine, rtf=settings.synthetic_rtf)

    from ._voxcpm_engine import VoxCPMEngine, VoxCPMOptions

    options = VoxCPMOptions(
        model=settings.model,
        device=settings.device,
        optimize=settings.optimize,
        denoiser_path=settings.denoiser_path,
    )

    def load() -> Engine:
        return VoxCPMEngine.load(options)

    return load


async def run_server(
    settings: Settings,
    *,
    engine_factory: EngineFactory | None = None,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load and warm the model, then serve until cancelled (`nursery.start`-able)."""
    pool = ReplicaPool(
        engine_factory or engine_factory_for(settings),
        workers=settings.workers,
        max_admitted=settings.max_concurrent,
        queue_timeout=settings.queue_timeout,
        stop_timeout=settings.stop_timeout,
        chunk_buffer=settings.chunk_buffer,
    )
    try:
        log.info("engine_starting", engine=settings.engine, workers=settings.workers)
        await pool.start(load_timeout=settings.load_timeout)
        log.info("engine_ready", sample_rate=pool.sample_rate)
        server = TtsServer(settings, pool)
        async with trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(server.serve)
            if settings.ready_file:
                _write_atomically(Path(settings.ready_file), handle.url + "\n")
            task_status.started(handle)
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose(join_timeout=settings.stop_timeout)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def serve_until_signalled(settings: Settings) -> int:
    """`voxtrio serve`: serve until SIGINT/SIGTERM, then drain; a second signal stops at once.

    Returns the exit status: 0 after a graceful drain, 1 when a second signal cut it short.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(partial(run_server, settings))
            signum = await signals.__anext__()
            log.info("signal_received", signal=signal.Signals(signum).name, action="drain")
            forced = False
            with trio.CancelScope() as drain_scope:

                async def second_signal() -> None:
                    nonlocal forced
                    signum = await signals.__anext__()
                    log.warning(
                        "signal_received", signal=signal.Signals(signum).name, action="exit"
                    )
                    forced = True
                    drain_scope.cancel()

                async with trio.open_nursery() as drain:
                    drain.start_soon(second_signal)
                    await handle.server.shutdown(settings.drain_timeout)
                    drain.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    return 1 if forced else 0
