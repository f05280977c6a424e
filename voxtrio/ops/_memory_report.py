"""Where this process's memory is: a debug report written on SIGUSR2.

Off unless `VOXTRIO_MEMORY_REPORTS=DIR` is set in the server's environment; then each
SIGUSR2 writes `DIR/memory-<pid>-<n>.txt`: resident memory by kind of mapping (glibc's
main heap, other anonymous memory, thread stacks, files), pymalloc's arenas
(`sys._debugmallocstats`), live objects by type, with
`VOXTRIO_MEMORY_REPORTS_SURVIVORS=1` the objects that pin new arenas, and, when the
server runs under `PYTHONTRACEMALLOC=1`, the Python allocations that grew since the
first report. It walks every object on the event loop, so it is for diagnosis
(docs/DEPLOY.md, 11a), never for a server in service.
"""

from __future__ import annotations

import collections
import gc
import os
import re
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path

import attrs
import structlog
import trio

log = structlog.get_logger("voxtrio.memory")

ENVIRONMENT = "VOXTRIO_MEMORY_REPORTS"
# Also set (=1): from the second report on, the small objects in pools that were empty
# at the first, by type (and allocation site under tracemalloc): what pins arenas.
SURVIVORS = "VOXTRIO_MEMORY_REPORTS_SURVIVORS"
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


@attrs.frozen
class Mapping:
    start: int
    end: int
    perms: str
    name: str
    rss_kb: int

    @property
    def size_kb(self) -> int:
        return (self.end - self.start) // 1024


def parse_smaps(smaps: str) -> list[Mapping]:
    """The mappings of a /proc/PID/smaps text with their resident kB."""
    out: list[Mapping] = []
    head: tuple[int, int, str, str] | None = None
    for line in smaps.splitlines():
        match = _MAPPING.match(line)
        if match is not None:
            start, end, perms, name = match.groups()
            head = (int(start, 16), int(end, 16), perms, name.strip())
        elif line.startswith("Rss:") and head is not None:
            out.append(Mapping(*head, rss_kb=int(line.split()[1])))
    return out


def mapping_kinds(mappings: list[Mapping]) -> dict[str, int]:
    """Resident kB per kind of mapping: glibc's heaps, thread stacks, other anonymous, files."""
    totals: collections.Counter[str] = collections.Counter()
    previous_guard = False
    for m in mappings:
        if m.name == "[heap]":
            kind = "heap (glibc main arena)"
        elif m.name.startswith("["):
            kind = m.name
        elif m.name:
            kind = "files (code, shared libraries)"
        elif previous_guard and m.size_kb in (8192, 8188):
            kind = "thread stacks"  # 8 MiB above a guard page: pthread's default stack
        elif m.start % (64 << 20) == 0:
            kind = "glibc thread arenas"  # their heaps are 64 MiB-aligned
        else:
            kind = "anonymous (pymalloc arenas, mmap'd blocks)"
        totals[kind] += m.rss_kb
        previous_guard = m.perms == "---p" and not m.name
    return dict(totals)


def pymalloc_summary() -> str:
    """The totals of `sys._debugmallocstats()` (it writes to C's stderr, so via a file)."""
    with tempfile.TemporaryFile(mode="w+") as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().splitlines()
    keep = ("# arenas", "# bytes in", "Total", "bytes in allocated", "free pools")
    return "\n".join(line for line in lines if line.startswith(keep) or "free blocks" in line)


def object_counts(top: int = 25) -> list[tuple[str, int]]:
    """The most numerous types among the objects the garbage collector tracks."""
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return counts.most_common(top)


_POOL = ~(16 * 1024 - 1)  # pymalloc's pools are 16 KiB, aligned


def live_objects() -> list[object]:
    """Every object reachable from those the collector tracks (strings and numbers too)."""
    seen: dict[int, object] = {}
    for container in gc.get_objects():
        seen[id(container)] = container
        for referent in gc.get_referents(container):
            seen.setdefault(id(referent), referent)
    return list(seen.values())


def survivors(fresh_pools: set[int], top: int = 30) -> list[str]:
    """Small objects now in pools that held nothing at the first report, by type and origin.

    Each pins its pymalloc arena (1 MiB): an arena goes back to the system only when
    every object in it is gone.
    """
    found = [
        o for o in live_objects() if id(o) & _POOL not in fresh_pools and sys.getsizeof(o) <= 512
    ]
    arenas = {id(o) >> 20 for o in found}
    out = [f"{len(found)} small objects in new pools, spread over {len(arenas)} MiB"]
    by_origin: collections.Counter[str] = collections.Counter()
    for o in found:
        traceback = tracemalloc.get_object_traceback(o)
        where = " < ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in traceback or ())
        by_origin[f"{type(o).__qualname__} @ {where or '?'}"] += 1
    return out + [f"{n:>7} {what}" for what, n in by_origin.most_common(top)]


class MemoryReporter:
    """Writes numbered reports; remembers the first tracemalloc snapshot to diff against."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written = 0
        self._first: tracemalloc.Snapshot | None = None
        self._fresh_pools: set[int] | None = None

    def write(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.written += 1
        path = self.directory / f"memory-{os.getpid()}-{self.written}.txt"
        path.write_text("\n".join(self._sections()) + "\n")
        return path

    def _sections(self) -> list[str]:
        out = [Path("/proc/self/smaps_rollup").read_text(), "## resident kB by mapping"]
        mappings = parse_smaps(Path("/proc/self/smaps").read_text())
        kinds = mapping_kinds(mappings)
        out += [f"{kb:>9} {kind}" for kind, kb in sorted(kinds.items(), key=lambda i: -i[1])]
        out += ["## anonymous mappings over 1 MB resident"]
        out += [
            f"{m.start:x}-{m.end:x} {m.name or 'anonymous'}: {m.size_kb} kB, {m.rss_kb} kB resident"
            for m in mappings
            if m.rss_kb > 1024 and (not m.name or m.name == "[heap]")
        ]
        out += ["## threads", str(len(os.listdir("/proc/self/task")))]
        out += ["## gc", f"counts {gc.get_count()} garbage {len(gc.garbage)}"]
        out += ["## pymalloc", pymalloc_summary()]
        if not os.environ.get(SURVIVORS):
            pass
        elif self._fresh_pools is None:
            self._fresh_pools = {id(o) & _POOL for o in live_objects()}
        elif len(gc.get_objects()) < 300_000:  # under a load it would take minutes
            out += ["## survivors in new pools", *survivors(self._fresh_pools)]
        out += ["## objects by type"]
        out += [f"{n:>9} {name}" for name, n in object_counts()]
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            traced = sum(s.size for s in snapshot.statistics("filename"))
            out += [f"## tracemalloc: {traced / 2**20:.1f} MB traced"]
            if self._first is None:
                self._first = snapshot
            else:
                diff = snapshot.compare_to(self._first, "lineno")
                out += ["growth since the first report:", *(str(s) for s in diff[:30])]
        return out


async def report_on_signal(
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Forever, when VOXTRIO_MEMORY_REPORTS is set: a report per SIGUSR2.

    Started (`nursery.start`) once SIGUSR2 is caught: before that, the signal's default
    action would end the server, so it must be caught before the server says it is ready.
    """
    directory = os.environ.get(ENVIRONMENT)
    if not directory:
        task_status.started()
        return
    reporter = MemoryReporter(Path(directory))
    with trio.open_signal_receiver(signal.SIGUSR2) as signals:
        task_status.started()
        async for _ in signals:
            path = reporter.write()
            log.info("memory_report_written", path=str(path))
