"""Server settings: defaults, then environment variables (seed 000 §7), then CLI flags.

Every setting has one row in `OPTIONS`; an invalid value fails at start-up with a
message that names the variable or flag it came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
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
    # `batched=False` runs the one-generation-per-replica path instead.
    max_batch: int = 0
    batched: bool = True
    prefill_group: int = 2
    engine: Literal["voxcpm", "synthetic"] = "voxcpm"
    synthetic_rtf: float = 0.1
    model: str = "openbmb/VoxCPM-0.5B"
    device: str = "auto"
    optimize: bool | None = None
    torch_threads: int = 0  # 0: auto
    denoiser_path: str | None = None
    max_text_chars: int = 5000
    max_message_bytes: int = 1024 * 1024
    # Unfinished messages of all connections together (uploads are the large ones).
    partial_message_budget_bytes: int = 64 * 1024 * 1024
    max_stream_buffer_chars: int = 20_000
    chunk_buffer: int = 2
    queue_timeout: float = 30.0
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
    Option("port", "TTS_PORT", _port, "WebSocket port (0 picks a free one)"),
    Option("max_connections", "TTS_MAX_CONNECTIONS", _positive_int, "open connections at most"),
    Option(
        "max_concurrent",
        "TTS_MAX_CONCURRENT",
        _positive_int,
        "requests admitted at once server-wide (generating + waiting for a replica)",
    ),
    Option(
        "max_requests_per_connection",
        "TTS_MAX_REQUESTS_PER_CONNECTION",
        _positive_int,
        "active requests on one connection at most",
    ),
    Option("workers", "TTS_WORKERS", _positive_int, "model instances (each steps a batch)"),
    Option(
        "max_batch",
        "TTS_MAX_BATCH",
        _non_negative_int,
        "generations one instance steps at once; 0 = auto (16 on CPU, 64 on CUDA)",
    ),
    Option(
        "batched",
        "TTS_BATCHED",
        _bool,
        "continuous batching (false: one generation per instance, the old path)",
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
        "optimize",
        "TTS_OPTIMIZE",
        _optional_bool,
        "torch.compile + CUDA graphs: auto (on for CUDA), true or false",
        default_help="auto",
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
        _text,
        "local ZipEnhancer model directory; enables `denoise`",
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
    Option("queue_timeout", "TTS_QUEUE_TIMEOUT", _positive_float, "wait for a replica, s"),
    Option(
        "stop_timeout", "TTS_STOP_TIMEOUT", _positive_float, "wait for a cancelled generation, s"
    ),
    Option("load_timeout", "TTS_LOAD_TIMEOUT", _positive_float, "model load + warm-up, s"),
    Option("handshake_timeout", "TTS_HANDSHAKE_TIMEOUT", _positive_float, "WebSocket handshake, s"),
    Option(
        "write_timeout",
        "TTS_WRITE_TIMEOUT",
        _positive_float,
        "one frame to a client that does not read, s",
    ),
    Option("ping_interval", "TTS_PING_INTERVAL", _positive_float, "server keepalive ping, s"),
    Option("ping_timeout", "TTS_PING_TIMEOUT", _positive_float, "wait for the pong, s"),
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
    Option("metrics_enabled", "METRICS_ENABLED", _bool, "serve /metrics, /health, /ready"),
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
    Option("ready_file", None, _text, "write the server's URL to this file once it is ready"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option; the help shows the environment variable."""
    defaults = Settings()
    for option in OPTIONS:
        env = f" [env {option.env}]" if option.env else ""
        default = option.default_help or getattr(defaults, option.name)
        # None means "not set"; the option's own help says what that does.
        shown = "" if default is None else f" (default: {default})"
        help_text = f"{option.help}{shown}{env}"
        if option.flag_only_bool:
            parser.add_argument(
                option.flag, dest=option.name, action="store_const", const="true", help=help_text
            )
        else:
            parser.add_argument(option.flag, dest=option.name, metavar="VALUE", help=help_text)


def load_settings(args: argparse.Namespace | None, environ: Mapping[str, str]) -> Settings:
    """Defaults < environment < flags; raise ConfigError naming the bad source."""
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
            f"--workers ({settings.workers}): replicas would sit idle"
        )


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings(None, os.environ if environ is None else environ)
