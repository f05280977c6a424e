"""structlog set-up: JSON lines for machines, a console renderer for people.

Everything the process logs goes through one renderer: structlog's own events, the
standard library's loggers (trio-websocket, h11, transformers), `warnings`, and the
lines voxcpm prints while it loads a model (`capture_prints`). So with
`LOG_FORMAT=json` every line on stderr is one JSON object.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import TextIO

import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog, stdlib logging and warnings to `stream` in the chosen format.

    `auto` is console on a terminal, JSON otherwise (systemd, containers, files).
    Context bound with `structlog.contextvars` (connection_id, request_id) is
    merged into every line.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger


class _LineLogger(io.TextIOBase):
    """A text stream that logs each complete line written to it (from any thread)."""

    def __init__(self, logger: structlog.typing.FilteringBoundLogger) -> None:
        self._logger = logger
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._pending + text).split("\n")
            self._pending = lines.pop()
        for line in lines:
            if line.strip():
                self._logger.info("library_output", line=line.rstrip())
        return len(text)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, ""
        if pending.strip():
            self._logger.info("library_output", line=pending.rstrip())


def capture_prints() -> None:
    """Log what libraries print to stdout and stderr (voxcpm's load-time lines) as events.

    For `voxtrio serve`, which writes nothing there itself: its own events go to the
    stream `configure_logging` was given, held before this swap, so nothing loops.
    """
    sys.stdout = _LineLogger(structlog.get_logger("voxtrio.stdout"))
    sys.stderr = _LineLogger(structlog.get_logger("voxtrio.stderr"))
