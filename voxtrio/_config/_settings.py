"""The server's settings, each declared once: default, flag, environment variable, help."""

from __future__ import annotations

import ipaddress
from typing import Literal

import attrs

from voxtrio._config import _parse as p
from voxtrio._config._option import setting, switch


@attrs.frozen
class ProgressIntervals:
    """How often `generating` progress goes out, in seconds.

    A non-streaming generation sends nothing until the end, so a timer reports it
    every `timer`. A streaming one reports right after an audio piece, at most every
    `streaming`: its audio frames already show it advancing, and on a busy server
    each progress message costs about as much as an audio frame.
    """

    timer: float = 0.25
    streaming: float = 1.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.frozen(kw_only=True)
class Settings:
    """Every setting; `voxtrio serve --help` lists them in this order."""

    host: str = setting(
        "127.0.0.1", "TTS_HOST", p.text, "address to listen on (loopback by default)",
        metavar="ADDRESS",
    )  # fmt: skip
    port: int = setting(
        8765, "TTS_PORT", p.port,
        "port of the WebSocket and HTTP APIs and the page (0 picks a free one)", metavar="PORT",
    )  # fmt: skip
    max_connections: int = setting(
        100, "TTS_MAX_CONNECTIONS", p.positive_int, "open connections at most", metavar="N"
    )
    max_concurrent: int = setting(
        10, "TTS_MAX_CONCURRENT", p.positive_int,
        "requests admitted at once server-wide (generating + waiting for a slot)", metavar="N",
    )  # fmt: skip
    max_requests_per_connection: int = setting(
        4, "TTS_MAX_REQUESTS_PER_CONNECTION", p.positive_int,
        "active requests on one connection at most", metavar="N",
    )  # fmt: skip
    workers: int = setting(
        1, "TTS_WORKERS", p.positive_int,
        "model instances, each a step loop on its own thread with --max-batch slots", metavar="N",
    )  # fmt: skip
    # Rows one model instance steps at once (0: auto, 16 on CPU, 64 on CUDA);
    # 1 runs one generation at a time per instance.
    max_batch: int = setting(
        0, "TTS_MAX_BATCH", p.non_negative_int,
        "slots per instance: generations its step loop advances at once; "
        "0 = auto (16 on CPU, 64 on CUDA); 1 = one at a time", metavar="N",
    )  # fmt: skip
    # Newly joined rows take their first step on their own while that pays.
    join_steps: bool = switch(
        True, "TTS_JOIN_STEPS",
        "new generations take their first step on their own before the next full step, "
        "while that pays: lower first audio under load for a few percent of throughput",
    )  # fmt: skip
    prefill_group: int = setting(
        2, "TTS_PREFILL_GROUP", p.positive_int,
        "new generations prefilled between two steps (bounds the stall of running ones)",
        metavar="N",
    )  # fmt: skip
    engine: Literal["voxcpm", "synthetic"] = setting(
        "voxcpm", "TTS_ENGINE", p.choice("voxcpm", "synthetic"),  # type: ignore[arg-type]
        "voxcpm, or synthetic (a test tone, no model)", metavar="{voxcpm,synthetic}",
    )  # fmt: skip
    synthetic_rtf: float = setting(
        0.1, "TTS_SYNTHETIC_RTF", p.non_negative_float,
        "real-time factor the synthetic engine paces chunks at", metavar="RTF",
    )  # fmt: skip
    model: str = setting(
        "openbmb/VoxCPM-0.5B", "TTS_MODEL_NAME", p.text, "hub id or local model directory",
        metavar="HUB_ID_OR_DIR",
    )  # fmt: skip
    device: str = setting(
        "auto", "TTS_DEVICE", p.text, "auto, cpu, cuda or cuda:N", metavar="DEVICE"
    )
    # How batched steps run: off (eager), on (CUDA graphs on CUDA, inductor on CPU),
    # auto (on CUDA whichever measures faster at warm-up; eager on CPU).
    compile: Literal["off", "auto", "on"] = setting(
        "auto", "TTS_COMPILE", p.choice("off", "auto", "on"),  # type: ignore[arg-type]
        "off|auto|on: steps as CUDA graphs per batch bucket (CUDA) or torch.compile "
        "(CPU); auto measures on CUDA at start-up and is off on CPU",
        metavar="{off,auto,on}",
    )  # fmt: skip
    torch_threads: int = setting(
        0, "TTS_TORCH_THREADS", p.non_negative_int,
        "torch CPU threads; 0 = auto (on CPU: cores / (workers + 1), at least 1)", metavar="N",
    )  # fmt: skip
    denoiser_path: str | None = setting(
        None, "TTS_DENOISER_PATH", p.no_denoiser,
        "not supported: prompt denoising is off (a request's `denoise: true` is "
        "INVALID_PARAMS); setting this is an error, not silently ignored", metavar="DIR",
    )  # fmt: skip
    max_text_chars: int = setting(
        5000, "TTS_MAX_TEXT_CHARS", p.positive_int, "longest text accepted", metavar="CHARS"
    )
    max_message_bytes: int = setting(
        1024 * 1024, "TTS_MAX_MESSAGE_SIZE", p.positive_int, "largest client message",
        metavar="BYTES",
    )  # fmt: skip
    # Unfinished messages of all connections together (uploads are the large ones).
    partial_message_budget_bytes: int = setting(
        64 * 1024 * 1024, "TTS_PARTIAL_MESSAGE_BUDGET", p.positive_int,
        "unfinished client messages of all connections together", metavar="BYTES",
    )  # fmt: skip
    max_stream_buffer_chars: int = setting(
        20_000, "TTS_MAX_STREAM_BUFFER_CHARS", p.positive_int,
        "text a text stream may have waiting to be spoken", metavar="CHARS",
    )  # fmt: skip
    chunk_buffer: int = setting(
        2, "TTS_CHUNK_BUFFER", p.positive_int, "chunks buffered per request", metavar="N"
    )
    queue_timeout: float = setting(
        30.0, "TTS_QUEUE_TIMEOUT", p.positive_float, "wait for a free generation slot, s",
        metavar="SECONDS",
    )  # fmt: skip
    # HTTP's wait for a slot: well under the clients' own read timeouts (LiveKit's
    # 30 s, often less behind proxies) so a saturated server answers 429 + Retry-After
    # before the client gives up on its own.
    http_queue_timeout: float = setting(
        10.0, "TTS_HTTP_QUEUE_TIMEOUT", p.positive_float,
        "wait for a free generation slot on the HTTP API before 429 + Retry-After, s "
        "(at most queue-timeout)",
        metavar="SECONDS",
    )  # fmt: skip
    # Idle wait for the next request on a kept-alive HTTP connection. Long enough to
    # span an agent's turn gap (the user speaks for some seconds between replies),
    # short enough that pooled sockets do not pile up; idle connections hold no
    # request capacity and are evicted first under a burst.
    http_keepalive_timeout: float = setting(
        15.0, "TTS_HTTP_KEEPALIVE_TIMEOUT", p.positive_float,
        "close a kept-alive HTTP connection idle between requests this long, s",
        metavar="SECONDS",
    )  # fmt: skip
    http_keepalive_requests: int = setting(
        1000, "TTS_HTTP_KEEPALIVE_REQUESTS", p.positive_int,
        "requests on one HTTP connection at most (then Connection: close)", metavar="N",
    )  # fmt: skip
    stop_timeout: float = setting(
        10.0, "TTS_STOP_TIMEOUT", p.positive_float, "wait for a cancelled generation, s",
        metavar="SECONDS",
    )  # fmt: skip
    load_timeout: float = setting(
        900.0, "TTS_LOAD_TIMEOUT", p.positive_float, "model load + warm-up, s", metavar="SECONDS"
    )
    handshake_timeout: float = setting(
        10.0, "TTS_HANDSHAKE_TIMEOUT", p.positive_float, "WebSocket handshake, s",
        metavar="SECONDS",
    )  # fmt: skip
    write_timeout: float = setting(
        30.0, "TTS_WRITE_TIMEOUT", p.positive_float,
        "drop a client that reads nothing for this long, s", metavar="SECONDS",
    )  # fmt: skip
    ping_interval: float = setting(
        30.0, "TTS_PING_INTERVAL", p.positive_float, "server keepalive ping, s", metavar="SECONDS"
    )
    ping_timeout: float = setting(
        10.0, "TTS_PING_TIMEOUT", p.positive_float,
        "drop a peer when neither the pong nor any frame comes for this long, s",
        metavar="SECONDS",
    )  # fmt: skip
    idle_timeout: float = setting(
        300.0, "TTS_IDLE_TIMEOUT", p.positive_float,
        "close a connection with no message and no request for this long, s", metavar="SECONDS",
    )  # fmt: skip
    drain_timeout: float = setting(
        30.0, "TTS_DRAIN_TIMEOUT", p.positive_float,
        "on SIGTERM, time for running requests to finish before SHUTTING_DOWN, s",
        metavar="SECONDS",
    )  # fmt: skip
    progress_interval: float = setting(
        0.25, "TTS_PROGRESS_INTERVAL", p.positive_float,
        "progress messages while a non-streaming request generates, s", metavar="SECONDS",
    )  # fmt: skip
    stream_progress_interval: float = setting(
        1.0, "TTS_STREAM_PROGRESS_INTERVAL", p.positive_float,
        "progress messages alongside a streaming request's audio, s", metavar="SECONDS",
    )  # fmt: skip
    # Hand freed memory back to the system (a full collection once the load has halved,
    # then malloc_trim) this often, s; 0: never.
    memory_trim_interval: float = setting(
        10.0, "TTS_MEMORY_TRIM_INTERVAL", p.non_negative_float,
        "return freed heap to the system this often once a load has gone, s (0: never)",
        metavar="SECONDS",
    )  # fmt: skip
    log_level: str = setting(
        "INFO", "LOG_LEVEL", p.log_level, "DEBUG, INFO, WARNING or ERROR", metavar="LEVEL"
    )
    log_format: Literal["auto", "json", "console"] = setting(
        "auto", "LOG_FORMAT", p.choice("auto", "json", "console"),  # type: ignore[arg-type]
        "auto (console on a terminal, else json), json or console",
        metavar="{auto,json,console}",
    )  # fmt: skip
    allow_unauthenticated: bool = switch(
        False, "TTS_ALLOW_UNAUTHENTICATED",
        "allow listening beyond loopback with no authentication", only_on=True,
    )  # fmt: skip
    api_key_file: str | None = setting(
        None, "TTS_API_KEY_FILE", p.text,
        "API keys, one per line (reloaded on SIGHUP); TTS_API_KEYS adds comma-separated keys",
        metavar="FILE",
    )  # fmt: skip
    metrics_enabled: bool = switch(
        True, "METRICS_ENABLED", "serve /metrics, /health, /ready on the side port"
    )
    web_page: bool | None = setting(
        None, "TTS_WEB_PAGE", p.optional_boolean,
        "the browser page at GET /: auto (on when listening on loopback), true or false",
        metavar="{auto,true,false}", default_help="auto",
    )  # fmt: skip
    metrics_host: str | None = setting(
        None, "METRICS_HOST", p.text, "side port address", metavar="ADDRESS", default_help="--host"
    )
    metrics_port: int = setting(
        9090, "METRICS_PORT", p.port, "side port for /metrics, /health, /ready", metavar="PORT"
    )
    stall_timeout: float = setting(
        60.0, "TTS_STALL_TIMEOUT", p.positive_float,
        "a generation with no progress for this long makes /health fail, s", metavar="SECONDS",
    )  # fmt: skip
    voices_dir: str | None = setting(
        None, "TTS_VOICES_DIR", p.text, "voice library directory (persisted voices)",
        metavar="DIR",
    )  # fmt: skip
    allow_voice_upload: bool = switch(
        False, "TTS_ALLOW_VOICE_UPLOAD", "let clients register and delete voices", only_on=True
    )
    max_cached_prompts: int = setting(
        256, "TTS_MAX_CACHED_PROMPTS", p.positive_int, "built prompts kept (LRU)", metavar="N"
    )
    max_prompt_seconds: float = setting(
        30.0, "TTS_MAX_PROMPT_SECONDS", p.positive_float, "longest prompt audio, s",
        metavar="SECONDS",
    )  # fmt: skip
    max_prompt_bytes: int = setting(
        10 * 1024 * 1024, "TTS_MAX_PROMPT_BYTES", p.positive_int, "largest prompt audio file",
        metavar="BYTES",
    )  # fmt: skip
    prompt_url_hosts: str | None = setting(
        None, "TTS_PROMPT_URL_HOSTS", p.text,
        "hosts prompt_wav_url may fetch from, comma-separated (unset: prompt_wav_url is off)",
        metavar="HOSTS",
    )  # fmt: skip
    prompt_url_allow_private: bool = switch(
        False, "TTS_PROMPT_URL_ALLOW_PRIVATE",
        "let prompt_wav_url reach loopback/private addresses (allow-listed hosts only)",
        only_on=True,
    )  # fmt: skip
    prompt_url_timeout: float = setting(
        10.0, "TTS_PROMPT_URL_TIMEOUT", p.positive_float, "one prompt fetch, s", metavar="SECONDS"
    )
    # Browser origins (scheme://host[:port]) allowed besides the server's own; ("*",): any.
    allowed_origins: tuple[str, ...] = setting(
        (), "TTS_ALLOWED_ORIGINS", p.origins,
        "browser origins (https://app.example.com) allowed to call this server besides its "
        "own page, comma-separated; * allows any",
        metavar="ORIGINS", default_help="the server's own origin",
    )  # fmt: skip
    ready_file: str | None = setting(
        None, None, p.text,
        "write the server's URL (then the side port's) to this file once it is ready",
        metavar="FILE",
    )  # fmt: skip

    @property
    def progress_intervals(self) -> ProgressIntervals:
        return ProgressIntervals(self.progress_interval, self.stream_progress_interval)

    @property
    def web_page_enabled(self) -> bool:
        return is_loopback(self.host) if self.web_page is None else self.web_page
