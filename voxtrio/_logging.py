"""structlog set-up: JSON lines for machines, a console renderer for people.

Everything the process writes to stderr goes through the same renderer: structlog's
own events, stdlib loggers (trio-websocket, urllib3...) through
`structlog.stdlib.ProcessorFormatter`, warnings (`logging.captureWarnings`), and, with
`capture_stderr`, plain prints to `sys.stderr` (voxcpm's load-time lines, tracebacks),
one event per line. So `LOG_FORMAT=json` is one JSON object per line, all of it.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import warnings
from typing import TextIO

import structlog

# Longest printed line kept in one event; the rest is cut (a print is never unbounded).
MAX_CAPTURED_LINE = 8192


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    capture_stderr: bool = False,
) -> None:
    """Route structlog, stdlib logging and warnings to `stream` in the chosen format.

    `auto` is console on a terminal, JSON otherwise (systemd, containers, files).
    Context bound with `structlog.contextvars` (connection_id, request_id) is
    merged into every line. `capture_stderr` (the server) replaces `sys.stderr` with a
    writer that logs each printed line as a `stderr_output` event.
    """
    stream = stream or sys.stderr
    if isinstance(stream, StderrToLog):
        stream = stream.target  # configured twice: never log into ourselves
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    numeric = logging.getLevelName(level.upper())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
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
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # voxcpm's VAE builds its conv layers with torch's deprecated weight_norm: one
    # FutureWarning per layer at every model load, upstream's code, nothing to act on.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.nn\.utils\.weight_norm` is deprecated", category=FutureWarning
    )
    logging.captureWarnings(True)
    if capture_stderr:
        sys.stderr = StderrToLog(stream)


class StderrToLog(io.TextIOBase):
    """A `sys.stderr` that turns each printed line into a `stderr_output` event."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self._pending = ""
        self._lock = threading.Lock()  # model instance threads print too
        self._log = structlog.get_logger("voxtrio.stderr")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # faulthandler and subprocess need a real descriptor: the original stream's.
        return self.target.fileno()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            if len(self._pending) > MAX_CAPTURED_LINE:
                lines.append(self._pending)
                self._pending = ""
        for line in lines:
            if line.strip():
                self._log.info("stderr_output", line=line[:MAX_CAPTURED_LINE])
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._pending = self._pending, ""
        if line.strip():
            self._log.info("stderr_output", line=line[:MAX_CAPTURED_LINE])
