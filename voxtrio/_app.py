"""Wiring: settings -> model instances -> servers, with an orderly start and stop."""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import attrs
import structlog
import trio

from voxtrio import __version__
from voxtrio._config import ConfigError, Settings
from voxtrio.ops._auth import KeyStore, check_exposure
from voxtrio.ops._collector import settle_after_start
from voxtrio.ops._health import HealthChecks, snapshot
from voxtrio.ops._http import HttpRequest, Route, RouteResult, protect, serve_http
from voxtrio.ops._memory import trim_after_load
from voxtrio.ops._memory_report import report_on_signal
from voxtrio.ops._metrics import Metrics
from voxtrio.ops._systemd import notify, watchdog_interval, watchdog_loop
from voxtrio.protocol._voice_rules import supported_modes
from voxtrio.server._listener import ServerHandle, TtsServer
from voxtrio.speech._engine import Engine, EngineFactory
from voxtrio.speech._pool import InstancePool
from voxtrio.speech.batched._factory import model_instances
from voxtrio.voices._aliases import AliasFileError, CosyVoiceAliases
from voxtrio.voices._audio import write_bytes_atomic
from voxtrio.voices._fetch import FetchPolicy
from voxtrio.voices._prompts import prompt_sample_rate
from voxtrio.voices._service import VoiceService
from voxtrio.voices._store import VoiceStore

log = structlog.get_logger("voxtrio.app")


def engine_factory_for(settings: Settings) -> EngineFactory:
    """The engine `settings.engine` names, built lazily on its instance's thread."""
    if settings.engine == "synthetic":
        from voxtrio.speech._synthetic import SyntheticEngine

        return partial(SyntheticEngine, rtf=settings.synthetic_rtf)

    from voxtrio.speech._voxcpm_engine import VoxCPMEngine, VoxCPMOptions

    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // (settings.workers + 1))
    options = VoxCPMOptions(
        model=settings.model,
        device=settings.device,
        # voxcpm's own torch.compile serves its batch-1 `generate` only, which the
        # server never calls: the batched model compiles its own steps (`--compile`).
        optimize=False,
        denoiser_path=settings.denoiser_path,
        torch_threads=threads,
    )

    def load() -> Engine:
        return VoxCPMEngine.load(options)

    return load


def check_settings_exposure(settings: Settings, keys: KeyStore) -> None:
    """Nothing listens beyond loopback without keys unless the operator says so."""
    check_exposure(
        settings.host,
        what="the WebSocket port (TTS_HOST/--host)",
        authenticated=keys.enabled,
        allow_unauthenticated=settings.allow_unauthenticated,
    )
    if settings.metrics_enabled:
        check_exposure(
            settings.metrics_host or settings.host,
            what="the metrics port (METRICS_HOST/--metrics-host)",
            authenticated=keys.enabled,
            allow_unauthenticated=settings.allow_unauthenticated,
        )


def _side_routes(metrics: Metrics, checks: HealthChecks, keys: KeyStore) -> dict[str, Route]:
    def metrics_route(request: HttpRequest) -> RouteResult:
        body, content_type = metrics.render(request.header("accept"))
        return 200, [("content-type", content_type)], body

    def authorized(request: HttpRequest) -> bool:
        return keys.authorize(request.headers, request.target)

    # /health and /ready stay open: many load balancers cannot send headers.
    return {
        "/metrics": protect(metrics_route, authorized),
        "/health": checks.health_route,
        "/ready": checks.ready_route,
    }


async def run_server(
    settings: Settings,
    *,
    engine_factory: EngineFactory | None = None,
    keys: KeyStore | None = None,
    task_status: trio.TaskStatus[ServerHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load and warm the model, then serve until cancelled (`nursery.start`-able).

    The side port (/health, /ready, /metrics) comes up first, so a load balancer
    sees "loading" while the model loads.
    """
    keys = keys if keys is not None else KeyStore()
    check_settings_exposure(settings, keys)
    factory = engine_factory or engine_factory_for(settings)
    instances = model_instances(
        factory,
        workers=settings.workers,
        max_batch=settings.max_batch,
        compile=settings.compile,
        prefill_group=settings.prefill_group,
        join_steps=settings.join_steps,
        credit_timeout=settings.write_timeout,
    )
    pool = InstancePool(
        instances,
        max_admitted=settings.max_concurrent,
        queue_timeout=settings.queue_timeout,
        stop_timeout=settings.stop_timeout,
        chunk_buffer=settings.chunk_buffer,
    )
    metrics = Metrics(engine=settings.engine, model=settings.model)
    for instance in instances:
        instance.stats.on_step = metrics.step_observed
        instance.stats.on_prefill = metrics.prefill_observed
    server = TtsServer(settings, pool, keys=keys, metrics=metrics)
    checks = HealthChecks(
        lambda: snapshot(pool, draining=server.draining), stall_timeout=settings.stall_timeout
    )
    metrics.bind_live_state(
        active_connections=lambda: server.open_connections,
        queue_length=lambda: pool.waiting,
        running_tasks=lambda: pool.admitted - pool.waiting,
        slots_busy=lambda: pool.slots_busy,
        slots=lambda: pool.slots,
        instances=lambda: len(pool.instances),
        ready=lambda: checks.readiness()[0] == 200,
    )
    try:
        async with trio.open_nursery() as nursery:
            # SIGUSR2 is caught before anyone can be told the server is up (health, ready
            # file, READY=1): uncaught, it would end the process.
            await nursery.start(report_on_signal)
            metrics_port: int | None = None
            if settings.metrics_enabled:
                metrics_port = await nursery.start(
                    partial(
                        serve_http,
                        settings.metrics_host or settings.host,
                        settings.metrics_port,
                        _side_routes(metrics, checks, keys),
                        on_shed=metrics.http_connection_shed,
                    )
                )
            notify(f"STATUS=loading model {settings.model}")
            log.info("engine_starting", engine=settings.engine, workers=settings.workers)
            await pool.start(load_timeout=settings.load_timeout)
            log.info("engine_ready", sample_rate=pool.sample_rate, version=__version__)
            server.voices = await open_voice_library(settings, pool)
            handle: ServerHandle = await nursery.start(server.serve)
            handle = attrs.evolve(handle, metrics_port=metrics_port)
            if settings.ready_file:
                # Line 1: the WebSocket URL; line 2: the side port's base URL, if any.
                lines = [handle.url]
                if metrics_port is not None:
                    lines.append(
                        f"http://{_url_host(settings.metrics_host or settings.host)}:{metrics_port}"
                    )
                write_bytes_atomic(Path(settings.ready_file), ("\n".join(lines) + "\n").encode())
            _log_addresses(settings, handle, metrics_port)
            notify("READY=1", f"STATUS=serving on {handle.url}")
            if (interval := watchdog_interval()) is not None:
                nursery.start_soon(watchdog_loop, checks.is_healthy, interval)
            nursery.start_soon(trim_after_load, settings.memory_trim_interval)
            task_status.started(handle)
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose(join_timeout=settings.stop_timeout)


async def open_voice_library(settings: Settings, pool: InstancePool) -> VoiceService:
    """The voice library, loaded from --voices-dir, handed to every instance's engine."""
    engine = pool.instances[0].engine
    architecture = getattr(engine, "architecture", "voxcpm2")
    tts = getattr(engine, "tts_model", None)
    store = VoiceStore(
        Path(settings.voices_dir) if settings.voices_dir else None,
        max_cached_prompts=settings.max_cached_prompts,
        modes=supported_modes(architecture),
    )
    loaded = await trio.to_thread.run_sync(store.load_all)
    for instance in pool.instances:
        if instance.engine is not None and hasattr(instance.engine, "voices"):
            instance.engine.voices = store
    hosts = settings.prompt_url_hosts
    policy = (
        FetchPolicy(
            allowed_hosts=frozenset(h.strip() for h in hosts.split(",") if h.strip()),
            max_bytes=settings.max_prompt_bytes,
            timeout=settings.prompt_url_timeout,
            allow_private=settings.prompt_url_allow_private,
        )
        if hosts
        else None
    )
    directory = Path(settings.voices_dir) if settings.voices_dir else None
    try:
        aliases = CosyVoiceAliases(directory, architecture=architecture)
    except AliasFileError as exc:
        raise ConfigError(str(exc)) from None
    log.info("voices_loaded", voices=len(loaded), directory=settings.voices_dir)
    return VoiceService(
        store,
        architecture=architecture,
        prompt_rate=prompt_sample_rate(tts) if tts is not None else 16000,
        allow_upload=settings.allow_voice_upload,
        max_prompt_seconds=settings.max_prompt_seconds,
        max_prompt_bytes=settings.max_prompt_bytes,
        fetch_policy=policy,
        aliases=aliases,
    )


def _log_addresses(settings: Settings, handle: ServerHandle, metrics_port: int | None) -> None:
    """One line with every address a newcomer looks for: the APIs, the page, /health."""
    http = handle.url.removeprefix("ws://").removesuffix("/tts")
    side = _url_host(settings.metrics_host or settings.host)
    log.info(
        "serving",
        websocket=handle.url,
        openai=f"http://{http}/v1/audio/speech",
        page=f"http://{http}/" if settings.web_page_enabled else "off (--web-page)",
        health=f"http://{side}:{metrics_port}/health" if metrics_port is not None else "off",
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve_until_signalled(settings: Settings, keys: KeyStore) -> int:
    """`voxtrio serve`: serve until SIGINT/SIGTERM, then drain; a second signal stops at once.

    SIGHUP reloads the API key file. Returns the exit status: 0 after a graceful
    drain, 1 when a second signal cut it short.
    """
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    with trio.open_signal_receiver(*stop_signals, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            handle: ServerHandle = await nursery.start(partial(run_server, settings, keys=keys))
            # The process is the server's alone (not so where tests run `run_server`).
            settle_after_start()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    changed = keys.reload()
                    log.info("api_keys_reloaded", changed=changed, keys=len(keys))
                    voices = handle.server.voices
                    if voices is not None and voices.aliases is not None:
                        voices.aliases.reload()
                    continue
                break
            log.info("signal_received", signal=signal.Signals(signum).name, action="drain")
            notify("STOPPING=1", "STATUS=draining")
            forced = False
            with trio.CancelScope() as drain_scope:

                async def second_signal() -> None:
                    nonlocal forced
                    async for signum in signals:
                        if signum in stop_signals:
                            name = signal.Signals(signum).name
                            log.warning("signal_received", signal=name, action="exit")
                            forced = True
                            drain_scope.cancel()
                            return

                async with trio.open_nursery() as drain:
                    drain.start_soon(second_signal)
                    await handle.server.shutdown(settings.drain_timeout)
                    drain.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    return 1 if forced else 0
