"""The memory debug report: resident memory by kind of mapping, written on SIGUSR2."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

import voxtrio._app
from voxtrio.ops._memory_report import ENVIRONMENT, mapping_kinds, parse_smaps, report_on_signal
from voxtrio.voices._audio import write_bytes_atomic

SMAPS = """\
55a2b6484000-55a2b6584000 rw-p 00000000 00:00 0                          [heap]
Rss:                 1000 kB
7fdf7c000000-7fdf7c400000 rw-p 00000000 00:00 0
Rss:                 3000 kB
7fdf81bff000-7fdf81c00000 ---p 00000000 00:00 0
Rss:                    0 kB
7fdf81c00000-7fdf82400000 rw-p 00000000 00:00 0
Rss:                   60 kB
7fdf90100000-7fdf90300000 rw-p 00000000 00:00 0
Rss:                 2048 kB
7fdfa0000000-7fdfa0100000 r-xp 00000000 08:01 42                         /usr/lib/libc.so.6
Rss:                  900 kB
"""


def test_resident_memory_is_split_by_kind_of_mapping() -> None:
    """Main heap, 64 MiB-aligned thread arenas, stacks above guard pages, other anonymous, files."""
    kinds = mapping_kinds(parse_smaps(SMAPS))
    assert kinds == {
        "heap (glibc main arena)": 1000,
        "glibc thread arenas": 3000,
        "thread stacks": 60,
        "anonymous (pymalloc arenas, mmap'd blocks)": 2048,
        "files (code, shared libraries)": 900,
    }


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
async def test_sigusr2_writes_a_report_when_the_environment_names_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With VOXTRIO_MEMORY_REPORTS set, each SIGUSR2 writes one numbered report there."""
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(report_on_signal)  # SIGUSR2 is caught once it has started
        os.kill(os.getpid(), signal.SIGUSR2)
        first = trio.Path(tmp_path / f"memory-{os.getpid()}-1.txt")
        with trio.fail_after(30):
            while not await first.exists():
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    report = await first.read_text()
    for section in ("## resident kB by mapping", "## pymalloc", "## objects by type"):
        assert section in report


async def test_without_the_environment_no_signal_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, the hook returns at once and leaves SIGUSR2 alone."""
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    with trio.fail_after(1):
        await report_on_signal()


async def test_a_server_catches_sigusr2_before_it_says_it_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_server: Any
) -> None:
    """With reports on, SIGUSR2 is caught before the ready file is written: a bench that
    signals once the file appears gets a report, not a dead server (the signal's default)."""
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path))
    handlers_when_ready: list[object] = []

    def write_ready_file(path: Path, data: bytes) -> None:
        handlers_when_ready.append(signal.getsignal(signal.SIGUSR2))
        write_bytes_atomic(path, data)

    monkeypatch.setattr(voxtrio._app, "write_bytes_atomic", write_ready_file)
    await start_server(ready_file=str(tmp_path / "ready"))
    assert len(handlers_when_ready) == 1
    assert handlers_when_ready[0] not in (signal.SIG_DFL, None)
