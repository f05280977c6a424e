"""Give freed heap back to the system once a load has gone (glibc `malloc_trim`).

A burst of connections or streams leaves the server's heap full of free chunks:
glibc returns only the top of an arena to the system by itself, so resident memory
stays at its peak long after the load has gone (docs/DEPLOY.md, "Memory"). Every
`interval` seconds, while resident memory is more than a tenth (at least 8 MB) above
what it was when serving began, this calls `malloc_trim(0)` on a worker thread: it walks
every arena and hands back their free pages, without the GIL, so the event loop goes
on meanwhile. Off where the C library has no `malloc_trim` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import structlog
import trio

log = structlog.get_logger("voxtrio.memory")

_PAGE = 4096
# Growth over the starting resident set below which no trim is tried.
_MIN_GROWTH = 8 * 2**20


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


_malloc_trim = _load_trim()


def resident_bytes() -> int:
    """This process's resident set (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def trim_now() -> bool:
    """Trim every arena (any thread; no GIL held meanwhile); False if unsupported."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


async def trim_after_load(interval: float) -> None:
    """Forever: trim while resident memory is well over the server's at start."""
    if _malloc_trim is None or interval <= 0:
        return
    floor = resident_bytes()
    threshold = max(_MIN_GROWTH, floor // 10)
    while True:
        await trio.sleep(interval)
        before = resident_bytes()
        if before - floor < threshold:
            continue
        await trio.to_thread.run_sync(trim_now)
        after = resident_bytes()
        if before - after < threshold // 4:
            continue  # in use, not free: nothing worth a log line
        log.info(
            "memory_trimmed",
            rss_before_mb=round(before / 2**20, 1),
            rss_after_mb=round(after / 2**20, 1),
        )
