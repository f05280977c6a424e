"""The voice library on disk: its layout, atomic writes, crash recovery and the shared lock.

One directory per voice (``--voices-dir``)::

    <dir>/<voice_id>/audio.wav   16-bit mono WAV at the model's prompt rate
    <dir>/<voice_id>/meta.json   {"format": 1, "voice_id", "mode", "prompt_text", "duration",
                                  "sample_rate", "created_at", "sha256"}  (sha256 of audio.wav)

Writes never leave half a voice: a voice is built in ``<dir>/.tmp-<uuid>/`` and renamed
into place; a replaced voice is first renamed to ``.old-<uuid>`` and a deleted one to
``.del-<uuid>``. :meth:`VoiceDirectory.recover` finishes or undoes whatever a crash
interrupted (``.tmp-*`` removed, ``.old-*`` removed if its successor is in place, else
renamed back, ``.del-*`` removed). Every change, and recovery, holds an exclusive
``flock`` on ``<dir>/.lock`` (:meth:`VoiceDirectory.lock`), so instances sharing the
directory never mistake another's write in progress for a crash's leftovers.
All of it is blocking I/O: callers run it in worker threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs
import soundfile
import structlog

from voxtrio.protocol._converter import converter
from voxtrio.protocol._voice_rules import VOICE_ID_PATTERN, VoiceError, VoiceMode, check_voice_id
from voxtrio.voices._audio import fsync_dir
from voxtrio.voices._voice import Voice

log = structlog.get_logger("voxtrio.voices")

FORMAT_VERSION: Final = 1

# How long a change waits for another instance's change to the shared directory.
DIRECTORY_LOCK_TIMEOUT_S: Final = 30.0
LOCK_FILE: Final = ".lock"

AUDIO_FILE: Final = "audio.wav"
META_FILE: Final = "meta.json"

Stamp = tuple[int, int, int]
"""(inode, mtime_ns, size) of a persisted voice's meta.json: changes with every write."""


@attrs.frozen(kw_only=True)
class _Meta:
    format: int
    voice_id: str
    mode: VoiceMode
    prompt_text: str | None
    duration: float
    sample_rate: int
    created_at: str
    sha256: str


@attrs.frozen
class VoiceDirectory:
    """The persisted voices under one directory (see the module docstring)."""

    path: Path

    def exists(self, voice_id: str) -> bool:
        return (self.path / voice_id).exists()

    def voice_ids(self) -> set[str]:
        """Names on disk that can be voice ids (leftovers and the lock file excluded)."""
        if not self.path.is_dir():
            return set()
        return {p.name for p in self.path.iterdir() if VOICE_ID_PATTERN.fullmatch(p.name)}

    def stamp(self, voice_id: str) -> Stamp | None:
        try:
            st = os.stat(self.path / voice_id / META_FILE)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read_audio(self, voice_id: str) -> bytes:
        return (self.path / voice_id / AUDIO_FILE).read_bytes()

    def read_voice(self, voice_id: str) -> Voice:
        """A persisted voice, checked (meta format, id, audio hash and shape); ValueError if bad."""
        path = self.path / voice_id
        check_voice_id(path.name)
        raw = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        meta = converter.structure(raw, _Meta)
        if meta.format != FORMAT_VERSION:
            raise ValueError(f"unknown format {meta.format}")
        if meta.voice_id != path.name:
            raise ValueError(f"meta.json names {meta.voice_id!r}")
        wav = (path / AUDIO_FILE).read_bytes()
        if hashlib.sha256(wav).hexdigest() != meta.sha256:
            raise ValueError("audio.wav does not match its sha256")
        info = soundfile.info(path / AUDIO_FILE)
        if info.samplerate != meta.sample_rate or info.channels != 1:
            raise ValueError("audio.wav is not mono at the recorded sample rate")
        return Voice(persisted=True, **attrs.asdict(meta, filter=lambda a, _: a.name != "format"))

    def write_voice(self, voice: Voice, wav: bytes) -> None:
        """Write a persisted voice: build it beside its place, then rename it in."""
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / voice.voice_id
        tmp = self.path / f".tmp-{uuid.uuid4().hex}"
        old: Path | None = None
        try:
            tmp.mkdir()
            _write_files(tmp, voice, wav)
            fsync_dir(tmp)
            if target.exists():
                old = self.path / f".old-{uuid.uuid4().hex}"
                os.rename(target, old)
            os.rename(tmp, target)
            fsync_dir(self.path)
        except BaseException:
            if old is not None and not target.exists():
                os.rename(old, target)  # put the previous voice back
                old = None
            _rmtree(tmp)
            raise
        finally:
            if old is not None:
                _rmtree(old)

    def remove(self, voice_id: str) -> None:
        """Remove a voice's directory (rename away, then delete); nothing if it is absent."""
        doomed = self.path / f".del-{uuid.uuid4().hex}"
        try:
            os.rename(self.path / voice_id, doomed)
        except FileNotFoundError:
            return
        fsync_dir(self.path)
        _rmtree(doomed)

    def recover(self) -> None:
        """Finish or undo what a crash interrupted (hold :meth:`lock`)."""
        for path in sorted(self.path.iterdir()):
            name = path.name
            if name.startswith((".tmp-", ".del-")):
                log.info("voice_leftover_removed", path=str(path))
                _rmtree(path)
            elif name.startswith(".old-"):
                self._recover_replaced(path)

    def _recover_replaced(self, old: Path) -> None:
        # A crash between "rename the old voice away" and "rename the new one in".
        try:
            voice_id = check_voice_id(json.loads((old / META_FILE).read_text())["voice_id"])
        except Exception as exc:
            log.warning("voice_leftover_removed", path=str(old), reason=short_reason(exc))
            _rmtree(old)
            return
        target = self.path / voice_id
        if target.exists():
            _rmtree(old)
        else:
            log.warning("voice_replacement_undone", voice_id=voice_id)
            os.rename(old, target)
            fsync_dir(self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (and instances sharing the directory); bounded wait."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + DIRECTORY_LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise VoiceError(
                            "voice_id", "the voice library is busy (another instance); try again"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock


def _write_files(directory: Path, voice: Voice, wav: bytes) -> None:
    meta = _Meta(
        format=FORMAT_VERSION,
        **attrs.asdict(voice, filter=lambda a, _: a.name != "persisted"),
    )
    write_synced(directory / AUDIO_FILE, wav)
    text = json.dumps(attrs.asdict(meta), indent=2, ensure_ascii=False) + "\n"
    write_synced(directory / META_FILE, text.encode("utf-8"))


def write_synced(path: Path, data: bytes) -> None:
    """Write and fsync one file."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def short_reason(exc: BaseException) -> str:
    """An exception as one short log field."""
    text = str(exc) or type(exc).__name__
    return text[:200]
