"""Server settings: defaults, then environment variables (seed 000 §7), then CLI flags.

Every setting has one row in `OPTIONS`; an invalid value fails at start-up with a
message that names the variable or flag it came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs


class ConfigError(ValueError):
    """A setting has an invalid value; the message names where it came from."""


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


@attrs.frozen(kw_only=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    max_connections: int = 100
    max_concurrent: int = 10
    max_requests_per_connection: int = 4
    workers: int = 1
    # Rows one model instance steps at once (0: auto, 16 on CPU, 64 on CUDA);
    # 1 runs one generation at a time per instance.
    max_batch: int = 0
    prefill_group: int = 2
    # Newly joined rows take their first step on their own while that pays.
    join_steps: bool = True
    engine: Literal["voxcpm", "synthetic"] = "voxcpm"
    synthetic_rtf: float = 0.1
    model: str = "openbmb/VoxCPM-0.5B"
    device: str = "auto"
    # How batched steps run: off (eager), on (CUDA graphs on CUDA, inductor on CPU),
    # auto (on CUDA whichever measures faster at warm-up; eager on CPU).
    compile: Literal["off", "auto", "on"] = "auto"
    torch_threads: int = 0  # 0: auto
    denoiser_path: str | None = None
    max_text_chars: int = 5000
    max_message_bytes: int = 1024 * 1024
    # Unfinished messages of all connections together (uploads are the large ones).
    partial_message_budget_bytes: int = 64 * 1024 * 1024
    max_stream_buffer_chars: int = 20_000
    chunk_buffer: int = 2
    queue_timeout: float = 30.0
    # HTTP's wait for a replica: well under the clients' own read timeouts (LiveKit's
    # 30 s, often less behind proxies) so a saturated server answers 429 + Retry-After
    # before the client gives up on its own.
    http_queue_timeout: float = 10.0
    # Idle wait for the next request on a kept-alive HTTP connection. Long enough to
    # span an agent's turn gap (the user speaks for some seconds between replies),
    # short enough that pooled sockets do not pile up; idle connections hold no
    # request capacity and are evicted first under a burst.
    http_keepalive_timeout: float = 15.0
    http_keepalive_requests: int = 1000  # requests on one HTTP connection at most
    stop_timeout: float = 10.0
    load_timeout: float = 900.0
    handshake_timeout: float = 10.0
    write_timeout: float = 30.0
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    idle_timeout: float = 300.0
    drain_timeout: float = 30.0
    progress_interval: float = 0.25
    stream_progress_interval: float = 1.0
    # Hand freed heap back to the system (malloc_trim) this often, s; 0: never.
    memory_trim_interval: float = 10.0
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    allow_unauthenticated: bool = False
    api_key_file: str | None = None
    metrics_enabled: bool = True
    web_page: bool | None = None  # None: on when listening on loopback only
    metrics_host: str | None = None  # None: the same as host
    metrics_port: int = 9090
    stall_timeout: float = 60.0
    voices_dir: str | None = None
    allow_voice_upload: bool = False
    max_cached_prompts: int = 256
    max_prompt_seconds: float = 30.0
    max_prompt_bytes: int = 10 * 1024 * 1024
    prompt_url_hosts: str | None = None
    prompt_url_allow_private: bool = False
    prompt_url_timeout: float = 10.0
    ready_file: str | None = None
    # Browser origins (scheme://host[:port]) allowed besides the server's own; ("*",): any.
    allowed_origins: tuple[str, ...] = ()

    @property
    def progress_intervals(self) -> ProgressIntervals:
        return ProgressIntervals(self.progress_interval, self.stream_progress_interval)

    @property
    def web_page_enabled(self) -> bool:
        return is_loopback(self.host) if self.web_page is None else self.web_page


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _optional_bool(text: str) -> bool | None:
    return None if text.strip().lower() in {"", "auto"} else _bool(text)


def _no_denoiser(text: str) -> str:
    # voxcpm's ZipEnhancer needs modelscope and a hub model; until a request's
    # `denoise` is wired to it, a configured denoiser would be loaded and never used.
    raise ValueError(
        "prompt denoising is not supported by this server (voxcpm's ZipEnhancer is not "
        "wired in; see issue #23): remove this setting"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0-65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be a positive number of seconds, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"must be zero or more, got {text}")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse


def _log_level(text: str) -> str:
    return _choice("DEBUG", "INFO", "WARNING", "ERROR")(text.upper())


def _origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins, each `http(s)://host[:port]` as a browser sends it, or `*`."""
    origins = []
    for raw in text.split(","):
        origin = raw.strip().rstrip("/").lower()
        if not origin:
            continue
        if origin != "*" and not re.fullmatch(
            r"https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?", origin
        ):
            raise ValueError(f"{raw.strip()!r} is not an origin like https://app.example.com:8443")
        origins.append(origin)
    return tuple(origins)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


@attrs.frozen
class Option:
    name: str
    env: str | None
    parse: Callable[[str], Any]
    help: str
    flag_only_bool: bool = False
    # What --help shows as the default when the value itself (often None) says nothing.
    default_help: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("host", "TTS_HOST", _text, "address to listen on (loopback by default)"),
    Option(
        "port",
        "TTS_PORT",
        _port,
        "port of the WebSocket and HTTP APIs and the page (0 picks a free one)",
    ),
    Option("max_connections", "TTS_MAX_CONNECTIONS", _positive_int, "open connections at most"),
    Option(
        "max_concurrent",
        "TTS_MAX_CONCURRENT",
        _positive_int,
        "requests admitted at once server-wide (generating + waiting for a slot)",
    ),
    Option(
        "max_requests_per_connection",
        "TTS_MAX_REQUESTS_PER_CONNECTION",
        _positive_int,
        "active requests on one connection at most",
    ),
    Option(
        "workers",
        "TTS_WORKERS",
        _positive_int,
        "model instances, each a step loop on its own thread with --max-batch slots",
    ),
    Option(
        "max_batch",
        "TTS_MAX_BATCH",
        _non_negative_int,
        "slots per instance: generations its step loop advances at once; "
        "0 = auto (16 on CPU, 64 on CUDA); 1 = one at a time",
    ),
    Option(
        "join_steps",
        "TTS_JOIN_STEPS",
        _bool,
        "new generations take their first step on their own before the next full step, "
        "while that pays: lower first audio under load for a few percent of throughput",
    ),
    Option(
        "prefill_group",
        "TTS_PREFILL_GROUP",
        _positive_int,
        "new generations prefilled between two steps (bounds the stall of running ones)",
    ),
    Option("engine", "TTS_ENGINE", _choice("voxcpm", "synthetic"), "voxcpm, or synthetic"),
    Option(
        "synthetic_rtf",
        "TTS_SYNTHETIC_RTF",
        _non_negative_float,
        "real-time factor the synthetic engine paces chunks at",
    ),
    Option("model", "TTS_MODEL_NAME", _text, "hub id or local model directory"),
    Option("device", "TTS_DEVICE", _text, "auto, cpu, cuda or cuda:N"),
    Option(
        "compile",
        "TTS_COMPILE",
        _choice("off", "auto", "on"),
        "off|auto|on: steps as CUDA graphs per batch bucket (CUDA) or torch.compile "
        "(CPU); auto measures on CUDA at start-up and is off on CPU",
    ),
    Option(
        "torch_threads",
        "TTS_TORCH_THREADS",
        _non_negative_int,
        "torch CPU threads; 0 = auto (on CPU: cores / (workers + 1), at least 1)",
    ),
    Option(
        "denoiser_path",
        "TTS_DENOISER_PATH",
        _no_denoiser,
        "not supported: prompt denoising is off (a request's `denoise: true` is "
        "INVALID_PARAMS); setting this is an error, not silently ignored",
    ),
    Option("max_text_chars", "TTS_MAX_TEXT_CHARS", _positive_int, "longest text accepted"),
    Option("max_message_bytes", "TTS_MAX_MESSAGE_SIZE", _positive_int, "largest client message"),
    Option(
        "partial_message_budget_bytes",
        "TTS_PARTIAL_MESSAGE_BUDGET",
        _positive_int,
        "unfinished client messages of all connections together",
    ),
    Option(
        "max_stream_buffer_chars",
        "TTS_MAX_STREAM_BUFFER_CHARS",
        _positive_int,
        "text a text stream may have waiting to be spoken",
    ),
    Option("chunk_buffer", "TTS_CHUNK_BUFFER", _positive_int, "chunks buffered per request"),
    Option(
        "queue_timeout", "TTS_QUEUE_TIMEOUT", _positive_float, "wait for a free generation slot, s"
    ),
    Option(
        "http_queue_timeout",
        "TTS_HTTP_QUEUE_TIMEOUT",
        _positive_float,
        "wait for a replica on the HTTP API before 429 + Retry-After, s (at most queue-timeout)",
    ),
    Option(
        "http_keepalive_timeout",
        "TTS_HTTP_KEEPALIVE_TIMEOUT",
        _positive_float,
        "close a kept-alive HTTP connection idle between requests this long, s",
    ),
    Option(
        "http_keepalive_requests",
        "TTS_HTTP_KEEPALIVE_REQUESTS",
        _positive_int,
        "requests on one HTTP connection at most (then Connection: close)",
    ),
    Option(
        "stop_timeout", "TTS_STOP_TIMEOUT", _positive_float, "wait for a cancelled generation, s"
    ),
    Option("load_timeout", "TTS_LOAD_TIMEOUT", _positive_float, "model load + warm-up, s"),
    Option("handshake_timeout", "TTS_HANDSHAKE_TIMEOUT", _positive_float, "WebSocket handshake, s"),
    Option(
        "write_timeout",
        "TTS_WRITE_TIMEOUT",
        _positive_float,
        "drop a client that reads nothing for this long, s",
    ),
    Option("ping_interval", "TTS_PING_INTERVAL", _positive_float, "server keepalive ping, s"),
    Option(
        "ping_timeout",
        "TTS_PING_TIMEOUT",
        _positive_float,
        "drop a peer when neither the pong nor any frame comes for this long, s",
    ),
    Option(
        "idle_timeout",
        "TTS_IDLE_TIMEOUT",
        _positive_float,
        "close a connection with no message and no request for this long, s",
    ),
    Option(
        "drain_timeout",
        "TTS_DRAIN_TIMEOUT",
        _positive_float,
        "on SIGTERM, time for running requests to finish before SHUTTING_DOWN, s",
    ),
    Option(
        "progress_interval",
        "TTS_PROGRESS_INTERVAL",
        _positive_float,
        "progress messages while a non-streaming request generates, s",
    ),
    Option(
        "stream_progress_interval",
        "TTS_STREAM_PROGRESS_INTERVAL",
        _positive_float,
        "progress messages alongside a streaming request's audio, s",
    ),
    Option(
        "memory_trim_interval",
        "TTS_MEMORY_TRIM_INTERVAL",
        _non_negative_float,
        "return freed heap to the system this often once a load has gone, s (0: never)",
    ),
    Option("log_level", "LOG_LEVEL", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    Option("log_format", "LOG_FORMAT", _choice("auto", "json", "console"), "auto|json|console"),
    Option(
        "allow_unauthenticated",
        "TTS_ALLOW_UNAUTHENTICATED",
        _bool,
        "allow listening beyond loopback with no authentication",
        flag_only_bool=True,
    ),
    Option(
        "api_key_file",
        "TTS_API_KEY_FILE",
        _text,
        "API keys, one per line (reloaded on SIGHUP); TTS_API_KEYS adds comma-separated keys",
    ),
    Option(
        "metrics_enabled",
        "METRICS_ENABLED",
        _bool,
        "serve /metrics, /health, /ready on the side port",
    ),
    Option(
        "web_page",
        "TTS_WEB_PAGE",
        _optional_bool,
        "the browser page at GET /: auto (on when listening on loopback), true or false",
        default_help="auto",
    ),
    Option("metrics_host", "METRICS_HOST", _text, "side port address", default_help="--host"),
    Option("metrics_port", "METRICS_PORT", _port, "side port for /metrics, /health, /ready"),
    Option(
        "stall_timeout",
        "TTS_STALL_TIMEOUT",
        _positive_float,
        "a generation with no progress for this long makes /health fail, s",
    ),
    Option("voices_dir", "TTS_VOICES_DIR", _text, "voice library directory (persisted voices)"),
    Option(
        "allow_voice_upload",
        "TTS_ALLOW_VOICE_UPLOAD",
        _bool,
        "let clients register and delete voices",
        flag_only_bool=True,
    ),
    Option(
        "max_cached_prompts", "TTS_MAX_CACHED_PROMPTS", _positive_int, "built prompts kept (LRU)"
    ),
    Option(
        "max_prompt_seconds", "TTS_MAX_PROMPT_SECONDS", _positive_float, "longest prompt audio, s"
    ),
    Option("max_prompt_bytes", "TTS_MAX_PROMPT_BYTES", _positive_int, "largest prompt audio file"),
    Option(
        "prompt_url_hosts",
        "TTS_PROMPT_URL_HOSTS",
        _text,
        "hosts prompt_wav_url may fetch from, comma-separated (unset: prompt_wav_url is off)",
    ),
    Option(
        "prompt_url_allow_private",
        "TTS_PROMPT_URL_ALLOW_PRIVATE",
        _bool,
        "let prompt_wav_url reach loopback/private addresses (allow-listed hosts only)",
        flag_only_bool=True,
    ),
    Option("prompt_url_timeout", "TTS_PROMPT_URL_TIMEOUT", _positive_float, "one prompt fetch, s"),
    Option(
        "allowed_origins",
        "TTS_ALLOWED_ORIGINS",
        _origins,
        "browser origins (https://app.example.com) allowed to call this server besides its "
        "own page, comma-separated; * allows any",
        default_help="the server's own origin",
    ),
    Option("ready_file", None, _text, "write the server's URL to this file once it is ready"),
)


# What --help shows in place of a flag's value; other options get one from their parser.
_METAVARS: dict[str, str] = {
    "host": "ADDRESS",
    "metrics_host": "ADDRESS",
    "model": "HUB_ID_OR_DIR",
    "device": "DEVICE",
    "denoiser_path": "DIR",
    "voices_dir": "DIR",
    "api_key_file": "FILE",
    "ready_file": "FILE",
    "prompt_url_hosts": "HOSTS",
    "synthetic_rtf": "RTF",
    "engine": "{voxcpm,synthetic}",
    "log_format": "{auto,json,console}",
}


def _metavar(option: Option) -> str:
    if option.name in _METAVARS:
        return _METAVARS[option.name]
    if option.parse is _port:
        return "PORT"
    if option.parse is _optional_bool:
        return "{auto,true,false}"
    if option.parse is _log_level:
        return "LEVEL"
    if option.parse in (_positive_float, _non_negative_float):
        return "SECONDS" if option.help.endswith(", s") else "X"
    if option.parse in (_positive_int, _non_negative_int):
        return "BYTES" if option.name.endswith("_bytes") else "N"
    return option.name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option; the help shows the environment variable.

    A true/false setting is a pair of flags, `--join-steps` / `--no-join-steps`
    (`--join-steps false` still works); a setting that can only be switched on is one flag.
    """
    defaults = Settings()
    for option in OPTIONS:
        env = f" [env {option.env}]" if option.env else ""
        default = option.default_help or getattr(defaults, option.name)
        if isinstance(default, bool):
            default = str(default).lower()
        # None means "not set"; the option's own help says what that does.
        shown = "" if default is None else f" (default: {default})"
        help_text = f"{option.help}{shown}{env}"
        if option.flag_only_bool:
            parser.add_argument(
                option.flag, dest=option.name, action="store_const", const="true", help=help_text
            )
        elif option.parse is _bool:
            parser.add_argument(
                option.flag,
                dest=option.name,
                nargs="?",
                const="true",
                metavar="true|false",
                help=help_text,
            )
            parser.add_argument(
                "--no-" + option.flag.removeprefix("--"),
                dest=option.name,
                action="store_const",
                const="false",
                help=f"same as {option.flag} false",
            )
        else:
            metavar = _metavar(option)
            parser.add_argument(option.flag, dest=option.name, metavar=metavar, help=help_text)


def load_settings(args: argparse.Namespace | None, environ: Mapping[str, str]) -> Settings:
    """Defaults < environment < flags; raise ConfigError naming the bad source."""
    if "TTS_OPTIMIZE" in environ:
        raise ConfigError("TTS_OPTIMIZE was replaced by TTS_COMPILE (off, auto or on)")
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw: str | None = None
        source = ""
        flag_value = getattr(args, option.name, None) if args is not None else None
        if flag_value is not None:
            raw, source = flag_value, option.flag
        elif option.env and option.env in environ:
            raw, source = environ[option.env], option.env
        if raw is None:
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {source}={raw!r}: {exc}") from None
    settings = Settings(**values)
    _check(settings)
    return settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check(settings: Settings) -> None:
    if settings.max_concurrent < settings.workers:
        raise ConfigError(
            f"TTS_MAX_CONCURRENT/--max-concurrent ({settings.max_concurrent}) is below "
            f"--workers ({settings.workers}): instances would sit idle"
        )


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings(None, os.environ if environ is None else environ)
