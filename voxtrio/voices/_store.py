"""The voice library: registered cloning prompts, on disk and in memory, and their built caches.

On disk (``--voices-dir``), one directory per voice::

    <dir>/<voice_id>/audio.wav   16-bit mono WAV at the model's prompt rate
    <dir>/<voice_id>/meta.json   {"format": 1, "voice_id", "mode", "prompt_text", "duration",
                                  "sample_rate", "created_at", "sha256"}  (sha256 of audio.wav)

Writes never leave half a voice: a voice is built in ``<dir>/.tmp-<uuid>/`` and renamed
into place; a replaced voice is first renamed to ``.old-<uuid>`` and a deleted one to
``.del-<uuid>``. :meth:`VoiceStore.load_all` finishes or undoes whatever a crash
interrupted (``.tmp-*`` removed, ``.old-*`` removed if its successor is in place, else
renamed back, ``.del-*`` removed) and skips, with a log line, any voice it cannot read.

Registering an id that exists is refused unless ``replace=True``; a replacement is
atomic on disk and in memory, and drops the old voice's built prompts.

Built prompts (voxcpm's ``build_prompt_cache`` dicts of CPU tensors, never mutated
by generation) live in one LRU bounded by count and approximate bytes, keyed by
``(voice_id, sha256 of the audio, mode, prompt_text)``: a replaced voice has another
key, so a stale prompt is never served. A miss rebuilds from disk.

Several instances may share one directory (a network file system behind a load
balancer): the directory, not memory, says which persisted voices exist. Each lookup
of a persisted voice compares one ``stat`` of its ``meta.json`` with what was read
(re-reading it if another instance replaced it, forgetting it if one deleted it), a
lookup that misses reads the voice from disk, and ``list`` rescans the directory. So
registering, replacing or deleting a voice on one instance is seen by the next request
on any other, without polling. Every change to the directory, and start-up recovery,
holds an exclusive ``flock`` on ``<dir>/.lock``, so one instance's recovery never
mistakes another's write in progress for a crash's leftovers.

Threads: metadata (``get``, ``list``) is for the Trio thread and takes a lock for a
few dict operations only. ``register``, ``delete`` and ``load_all`` do disk I/O: run
them with ``trio.to_thread.run_sync``; a second lock serialises them. ``prompt_for``
runs on a replica thread with that replica's builder (its model); builds run outside
every lock, and concurrent misses on one key build once (the others wait for it).
"""

from __future__ import annotations

import builtins
import collections
import concurrent.futures
import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
import soundfile
import structlog

from voxtrio.protocol._converter import converter
from voxtrio.protocol._limits import MAX_PROMPT_TEXT_CHARS
from voxtrio.protocol._voice_rules import (
    ALL_MODES,
    VOICE_ID_PATTERN,
    VoiceError,
    VoiceMode,
    check_voice_id,
    resolve_mode,
)
from voxtrio.voices._audio import PromptAudio, encode_wav, fsync_dir

log = structlog.get_logger("voxtrio.voices")

FORMAT_VERSION: Final = 1

# How long a change waits for another instance's change to the shared directory.
DIRECTORY_LOCK_TIMEOUT_S: Final = 30.0
LOCK_FILE: Final = ".lock"

AUDIO_FILE: Final = "audio.wav"
META_FILE: Final = "meta.json"

PromptCache = dict[str, Any]


class PromptBuilder(Protocol):
    """Build voxcpm's prompt cache for a WAV file (runs on the calling replica's thread)."""

    def __call__(self, mode: VoiceMode, wav_path: str, prompt_text: str | None) -> PromptCache: ...


class VoiceNotFound(VoiceError):
    """No voice has that id."""


class VoiceExists(VoiceError):
    """A voice with that id exists and `replace` was not asked for."""


@attrs.frozen(kw_only=True)
class Voice:
    """One registered voice (what `list` shows and what meta.json stores)."""

    voice_id: str
    mode: VoiceMode
    prompt_text: str | None
    duration: float
    sample_rate: int
    sha256: str
    created_at: str
    persisted: bool


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


_Stamp = tuple[int, int, int]
"""(inode, mtime_ns, size) of a persisted voice's meta.json: changes with every write."""


@attrs.frozen(eq=False)
class _Entry:
    voice: Voice
    wav: bytes | None  # in-memory voices only; persisted ones are read from disk
    stamp: _Stamp | None = None  # persisted voices: meta.json as it was read


def voxcpm_prompt_builder(tts_model: Any) -> PromptBuilder:
    """A PromptBuilder calling voxcpm's `tts_model.build_prompt_cache` (VoxCPM2 or 1.x)."""

    def build(mode: VoiceMode, wav_path: str, prompt_text: str | None) -> PromptCache:
        cache: PromptCache
        if mode == "reference":
            cache = tts_model.build_prompt_cache(reference_wav_path=wav_path)
        elif mode == "continuation":
            cache = tts_model.build_prompt_cache(prompt_text=prompt_text, prompt_wav_path=wav_path)
        else:
            cache = tts_model.build_prompt_cache(
                prompt_text=prompt_text, prompt_wav_path=wav_path, reference_wav_path=wav_path
            )
        return cache

    return build


def prompt_sample_rate(tts_model: Any) -> int:
    """The rate voxcpm encodes prompts at: the audio VAE's input rate (16 kHz for VoxCPM2)."""
    return int(tts_model.audio_vae.sample_rate)


def approximate_nbytes(value: Any) -> int:
    """Bytes held by a prompt cache: tensor and array storage, strings, containers."""
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(approximate_nbytes(k) + approximate_nbytes(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(approximate_nbytes(v) for v in value)
    return 64


@attrs.define
class LRUStats:
    hits: int = 0
    misses: int = 0
    builds: int = 0
    evictions: int = 0


class PromptLRU:
    """Built prompt caches, least recently used first out, with one build per key at a time."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("cache bounds must not be negative")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = LRUStats()
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[Hashable, tuple[PromptCache, int]] = (
            collections.OrderedDict()
        )
        self._building: dict[Hashable, concurrent.futures.Future[PromptCache]] = {}
        self._nbytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes

    def cached_keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    def get_or_build(
        self,
        key: Hashable,
        build: Callable[[], PromptCache],
        *,
        keep: Callable[[], bool] = lambda: True,
    ) -> PromptCache:
        """The cached value for `key`, or `build()`'s, kept if `keep()` says it is still current."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return found[0]
            future = self._building.get(key)
            owner = future is None
            if future is None:
                future = self._building[key] = concurrent.futures.Future()
                self.stats.misses += 1
            else:
                self.stats.hits += 1
        if not owner:
            return future.result()
        try:
            value = build()
        except BaseException as exc:
            with self._lock:
                del self._building[key]
            future.set_exception(exc)
            raise
        current = keep()  # asked outside our lock: it may take the caller's locks
        with self._lock:
            del self._building[key]
            self.stats.builds += 1
            if current:
                self._insert(key, value)
        future.set_result(value)
        return value

    def _insert(self, key: Hashable, value: PromptCache) -> None:
        size = approximate_nbytes(value)
        if self.max_entries == 0 or size > self.max_bytes:
            return  # would evict everything and still not fit: serve it uncached
        self._entries[key] = (value, size)
        self._nbytes += size
        while len(self._entries) > self.max_entries or self._nbytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._nbytes -= evicted
            self.stats.evictions += 1

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key matches; return how many."""
        with self._lock:
            doomed = [k for k in self._entries if predicate(k)]
            for key in doomed:
                self._nbytes -= self._entries.pop(key)[1]
            return len(doomed)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VoiceStore:
    """Registered voices plus the LRU of their built prompts (see the module docstring)."""

    def __init__(
        self,
        directory: Path | None,
        *,
        max_cached_prompts: int = 256,
        max_cached_bytes: int = 256 * 1024 * 1024,
        max_voices: int = 1000,
        max_memory_voices: int = 64,
        modes: frozenset[VoiceMode] = ALL_MODES,
        clock: Callable[[], str] = _utc_now,
    ) -> None:
        self.directory = directory
        self.max_voices = max_voices
        self.max_memory_voices = max_memory_voices
        self.modes = modes
        self.prompts = PromptLRU(max_entries=max_cached_prompts, max_bytes=max_cached_bytes)
        self._clock = clock
        self._lock = threading.Lock()  # guards _entries; never held across I/O or a build
        self._write_lock = threading.Lock()  # serialises register / delete / load_all
        self._entries: dict[str, _Entry] = {}

    # ------------------------------------------------------------ metadata (any thread)

    def list(self) -> list[Voice]:
        """Every voice, by id (the shared directory rescanned first)."""
        self._sync_all()
        with self._lock:
            return [self._entries[k].voice for k in sorted(self._entries)]

    def get(self, voice_id: str) -> Voice:
        """The voice with that id, or VoiceNotFound."""
        return self._entry(voice_id).voice

    def check_usable(self, voice_id: str, *, field: str = "voice_id") -> Voice:
        """The voice, if it exists and this model supports its mode (fail fast, Trio thread)."""
        voice = self._entry(voice_id, field).voice
        if voice.mode not in self.modes:
            raise VoiceError(
                field, f"voice {voice_id!r} uses mode {voice.mode!r}, which needs VoxCPM2"
            )
        return voice

    def __contains__(self, voice_id: object) -> bool:
        if not isinstance(voice_id, str):
            return False
        try:
            self._entry(voice_id)
        except VoiceNotFound:
            return False
        return True

    def _entry(self, voice_id: str, field: str = "voice_id") -> _Entry:
        with self._lock:
            entry = self._entries.get(voice_id)
        if entry is None or entry.voice.persisted:
            entry = self._sync_one(voice_id, entry)
        if entry is None:
            raise VoiceNotFound(field, f"no voice named {voice_id[:64]!r}")
        return entry

    # ------------------------------------------------------------ the shared directory

    def _stamp(self, voice_id: str) -> _Stamp | None:
        assert self.directory is not None
        try:
            st = os.stat(self.directory / voice_id / META_FILE)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _sync_one(self, voice_id: str, entry: _Entry | None) -> _Entry | None:
        """The entry for `voice_id` as the directory has it now (None: no such voice)."""
        if self.directory is None or VOICE_ID_PATTERN.fullmatch(voice_id) is None:
            return entry
        stamp = self._stamp(voice_id)
        if entry is not None and stamp == entry.stamp:
            return entry
        fresh: _Entry | None = None
        if stamp is not None:
            try:
                voice = self._read_voice(self.directory / voice_id)
            except Exception as exc:  # half-written by another instance, or damaged
                log.warning("voice_unreadable", voice_id=voice_id, reason=_reason(exc))
                return entry
            fresh = _Entry(voice, None, stamp)
        with self._lock:
            current = self._entries.get(voice_id)
            if current is not None and not current.voice.persisted:
                return current  # registered here in memory meanwhile: that one wins
            if fresh is None:
                self._entries.pop(voice_id, None)
            else:
                self._entries[voice_id] = fresh
        if current is not None and (fresh is None or fresh.voice != current.voice):
            self._forget_prompts(voice_id)
            log.info("voice_changed_elsewhere", voice_id=voice_id, deleted=fresh is None)
        return fresh

    def _sync_all(self) -> None:
        """Bring every persisted voice in line with the directory (``list``)."""
        if self.directory is None or not self.directory.is_dir():
            return
        on_disk = {p.name for p in self.directory.iterdir() if VOICE_ID_PATTERN.fullmatch(p.name)}
        with self._lock:
            known = {k for k, e in self._entries.items() if e.voice.persisted}
            entries = {k: self._entries.get(k) for k in on_disk | known}
        for voice_id, entry in sorted(entries.items()):
            self._sync_one(voice_id, entry)

    # ------------------------------------------------------------ prompts (replica threads)

    def prompt_for(
        self, voice_id: str, build: PromptBuilder, *, field: str = "voice_id"
    ) -> PromptCache:
        """The built prompt cache of a voice: from the LRU, or built now with `build`."""
        for _ in range(3):
            voice = self.check_usable(voice_id, field=field)
            key = (voice_id, voice.sha256, voice.mode, voice.prompt_text)
            try:
                return self.prompts.get_or_build(
                    key,
                    functools.partial(self._build_voice, voice, build),
                    keep=functools.partial(self._is_current, voice),
                )
            except _VoiceChanged:
                continue  # replaced or deleted while we read it: look it up again
        raise VoiceError(field, f"voice {voice_id!r} keeps changing; try again")

    def prompt_for_audio(
        self,
        audio: PromptAudio,
        prompt_text: str | None,
        mode: VoiceMode,
        build: PromptBuilder,
    ) -> PromptCache:
        """The built prompt cache of an ad-hoc prompt (prompt_wav_url), keyed by content hash."""
        if mode not in self.modes:
            raise VoiceError("mode", f"{mode!r} needs a VoxCPM2 model; this model is VoxCPM 1.x")
        key = ("", audio.sha256, audio.sample_rate, mode, prompt_text)

        def make() -> PromptCache:
            wav = encode_wav(audio.samples, audio.sample_rate)
            return _build_from_wav(wav, mode, prompt_text, build)

        return self.prompts.get_or_build(key, make)

    def prebuild(self, build: PromptBuilder, *, limit: int | None = None) -> int:
        """Build prompts for the newest voices, at most `limit` or what the LRU holds."""
        voices = sorted(self.list(), key=lambda v: v.created_at, reverse=True)
        count = self.prompts.max_entries if limit is None else min(limit, self.prompts.max_entries)
        built = 0
        for voice in voices[:count]:
            if voice.mode not in self.modes:
                continue
            try:
                self.prompt_for(voice.voice_id, build)
            except Exception as exc:  # one bad voice must not stop start-up
                log.warning("voice_prebuild_failed", voice_id=voice.voice_id, error=repr(exc))
            else:
                built += 1
        return built

    def _is_current(self, voice: Voice) -> bool:
        with self._lock:
            entry = self._entries.get(voice.voice_id)
        return entry is not None and entry.voice == voice

    def _build_voice(self, voice: Voice, build: PromptBuilder) -> PromptCache:
        entry = self._entry(voice.voice_id)
        if entry.voice != voice:
            raise _VoiceChanged
        if entry.wav is not None:
            wav = entry.wav
        else:
            assert self.directory is not None
            try:
                wav = (self.directory / voice.voice_id / AUDIO_FILE).read_bytes()
            except FileNotFoundError:
                raise _VoiceChanged from None
            if hashlib.sha256(wav).hexdigest() != voice.sha256:
                if not self._is_current(voice):
                    raise _VoiceChanged
                log.error("voice_audio_corrupt", voice_id=voice.voice_id)
                raise VoiceError("voice_id", f"voice {voice.voice_id!r} is damaged on disk")
        return _build_from_wav(wav, voice.mode, voice.prompt_text, build)

    # ------------------------------------------------------------ changes (worker threads)

    def register(
        self,
        voice_id: str,
        audio: PromptAudio,
        *,
        prompt_text: str | None = None,
        mode: VoiceMode | None = None,
        persist: bool = False,
        replace: bool = False,
    ) -> Voice:
        """Add a voice (or replace one, if `replace`); blocking disk I/O when `persist`."""
        check_voice_id(voice_id)
        if prompt_text is not None:
            # The whitespace clean-up voxcpm applies to target text.
            prompt_text = " ".join(prompt_text.split()) or None
            if prompt_text is not None and len(prompt_text) > MAX_PROMPT_TEXT_CHARS:
                raise VoiceError("prompt_text", f"at most {MAX_PROMPT_TEXT_CHARS} characters")
        mode = resolve_mode(mode, prompt_text, self.modes)
        if persist and self.directory is None:
            raise VoiceError("persist", "this server has no voices directory (--voices-dir)")
        wav = encode_wav(audio.samples, audio.sample_rate)
        voice = Voice(
            voice_id=voice_id,
            mode=mode,
            prompt_text=prompt_text,
            duration=audio.duration,
            sample_rate=audio.sample_rate,
            sha256=hashlib.sha256(wav).hexdigest(),
            created_at=self._clock(),
            persisted=persist,
        )
        with self._write_lock:
            old = self._check_can_add(voice, replace=replace)
            on_disk = self.directory is not None and (self.directory / voice_id).exists()
            if persist or on_disk:
                assert self.directory is not None
                self.directory.mkdir(parents=True, exist_ok=True)
                with _directory_lock(self.directory):
                    if persist:
                        self._write_voice(voice, wav)
                    else:
                        self._remove_voice_dir(voice_id)
            stamp = self._stamp(voice_id) if persist else None
            with self._lock:
                self._entries[voice_id] = _Entry(voice, None if persist else wav, stamp)
            if old is not None:
                self._forget_prompts(voice_id)
        log.info("voice_registered", voice_id=voice_id, mode=mode, persisted=persist)
        return voice

    def _check_can_add(self, voice: Voice, *, replace: bool) -> Voice | None:
        voice_id = voice.voice_id
        with self._lock:
            entry = self._entries.get(voice_id)
            folded = voice_id.casefold()
            twin = next(
                (k for k in self._entries if k.casefold() == folded and k != voice_id), None
            )
            persisted = sum(e.wav is None for e in self._entries.values())
            in_memory = len(self._entries) - persisted
        if twin is not None:
            # Case-insensitive file systems would put both in one directory.
            raise VoiceError("voice_id", f"clashes with voice {twin!r} (ids ignore case)")
        exists = entry is not None or (
            self.directory is not None and (self.directory / voice_id).exists()
        )
        if exists and not replace:
            raise VoiceExists("voice_id", f"voice {voice_id!r} exists; send replace: true")
        if entry is None and persisted + in_memory >= self.max_voices:
            raise VoiceError("voice_id", f"the library is full ({self.max_voices} voices)")
        was_in_memory = entry is not None and not entry.voice.persisted
        if not voice.persisted and not was_in_memory and in_memory >= self.max_memory_voices:
            raise VoiceError(
                "persist", f"at most {self.max_memory_voices} unpersisted voices; persist some"
            )
        return entry.voice if entry is not None else None

    def delete(self, voice_id: str) -> Voice:
        """Remove a voice, from disk too if it was persisted; VoiceNotFound if absent."""
        with self._write_lock:
            voice = self._entry(voice_id).voice
            if voice.persisted:
                assert self.directory is not None
                with _directory_lock(self.directory):
                    self._remove_voice_dir(voice_id)
            with self._lock:
                del self._entries[voice_id]
            self._forget_prompts(voice_id)
        log.info("voice_deleted", voice_id=voice_id)
        return voice

    def _forget_prompts(self, voice_id: str) -> None:
        self.prompts.discard(lambda key: isinstance(key, tuple) and key[0] == voice_id)

    # ------------------------------------------------------------ disk

    def load_all(self) -> builtins.list[Voice]:
        """Read every voice on disk (start-up): repair interrupted writes, skip broken voices."""
        if self.directory is None:
            return []
        with self._write_lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with _directory_lock(self.directory):
                self._recover()
            loaded: builtins.list[Voice] = []
            stamps: dict[str, _Stamp | None] = {}
            for path in sorted(self.directory.iterdir()):
                if path.name.startswith("."):
                    continue
                try:
                    stamps[path.name] = self._stamp(path.name)
                    loaded.append(self._read_voice(path))
                except Exception as exc:  # a broken voice is skipped, never fatal
                    log.warning("voice_skipped", path=str(path), reason=_reason(exc))
            for voice in loaded:
                if voice.mode not in self.modes:
                    log.warning("voice_needs_voxcpm2", voice_id=voice.voice_id, mode=voice.mode)
            with self._lock:
                for key in [k for k, e in self._entries.items() if e.voice.persisted]:
                    del self._entries[key]
                for voice in loaded:
                    self._entries[voice.voice_id] = _Entry(voice, None, stamps[voice.voice_id])
        log.info("voices_loaded", count=len(loaded), directory=str(self.directory))
        return loaded

    def _recover(self) -> None:
        assert self.directory is not None
        for path in sorted(self.directory.iterdir()):
            name = path.name
            if name.startswith((".tmp-", ".del-")):
                log.info("voice_leftover_removed", path=str(path))
                _rmtree(path)
            elif name.startswith(".old-"):
                self._recover_replaced(path)

    def _recover_replaced(self, old: Path) -> None:
        # A crash between "rename the old voice away" and "rename the new one in".
        assert self.directory is not None
        try:
            voice_id = check_voice_id(json.loads((old / META_FILE).read_text())["voice_id"])
        except Exception as exc:
            log.warning("voice_leftover_removed", path=str(old), reason=_reason(exc))
            _rmtree(old)
            return
        target = self.directory / voice_id
        if target.exists():
            _rmtree(old)
        else:
            log.warning("voice_replacement_undone", voice_id=voice_id)
            os.rename(old, target)
            fsync_dir(self.directory)

    def _read_voice(self, path: Path) -> Voice:
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

    def _write_voice(self, voice: Voice, wav: bytes) -> None:
        """Write a persisted voice: build it beside its place, then rename it in."""
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / voice.voice_id
        tmp = self.directory / f".tmp-{uuid.uuid4().hex}"
        old: Path | None = None
        try:
            tmp.mkdir()
            self._write_files(tmp, voice, wav)
            fsync_dir(tmp)
            if target.exists():
                old = self.directory / f".old-{uuid.uuid4().hex}"
                os.rename(target, old)
            os.rename(tmp, target)
            fsync_dir(self.directory)
        except BaseException:
            if old is not None and not target.exists():
                os.rename(old, target)  # put the previous voice back
                old = None
            _rmtree(tmp)
            raise
        finally:
            if old is not None:
                _rmtree(old)

    def _write_files(self, directory: Path, voice: Voice, wav: bytes) -> None:
        meta = _Meta(
            format=FORMAT_VERSION,
            **attrs.asdict(voice, filter=lambda a, _: a.name != "persisted"),
        )
        _write_synced(directory / AUDIO_FILE, wav)
        text = json.dumps(attrs.asdict(meta), indent=2, ensure_ascii=False) + "\n"
        _write_synced(directory / META_FILE, text.encode("utf-8"))

    def _remove_voice_dir(self, voice_id: str) -> None:
        assert self.directory is not None
        doomed = self.directory / f".del-{uuid.uuid4().hex}"
        try:
            os.rename(self.directory / voice_id, doomed)
        except FileNotFoundError:
            return
        fsync_dir(self.directory)
        _rmtree(doomed)


class _VoiceChanged(Exception):
    """The voice was replaced or deleted while its prompt was being built."""


def _build_from_wav(
    wav: bytes, mode: VoiceMode, prompt_text: str | None, build: PromptBuilder
) -> PromptCache:
    # voxcpm's build_prompt_cache reads a file path; give it a private copy, so a
    # concurrent replace or delete of the voice cannot change the file under it.
    fd, name = tempfile.mkstemp(prefix="voxtrio-prompt-", suffix=".wav")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(wav)
        return build(mode, name, prompt_text)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive across processes (and instances sharing the directory); bounded wait."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
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


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
