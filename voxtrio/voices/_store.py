"""The voice library: registered cloning prompts, in memory and on disk, and their built caches.

:class:`VoiceStore` is the index: which voices exist, in memory (unpersisted ones keep
their WAV bytes) and on disk (:mod:`._disk` owns the layout, atomic writes and
recovery), plus the LRU of built prompts (:mod:`._prompts`). Registering an id that
exists is refused unless ``replace=True``; a replacement is atomic on disk and in
memory, and drops the old voice's built prompts. Prompts are keyed by ``(voice_id,
sha256 of the audio, mode, prompt_text)``: a replaced voice has another key, so a
stale prompt is never served. A miss rebuilds from disk.

Several instances may share one directory (a network file system behind a load
balancer): the directory, not memory, says which persisted voices exist. Each lookup
of a persisted voice compares one ``stat`` of its ``meta.json`` with what was read
(re-reading it if another instance replaced it, forgetting it if one deleted it), a
lookup that misses reads the voice from disk, and ``list`` rescans the directory. So
registering, replacing or deleting a voice on one instance is seen by the next request
on any other, without polling.

Threads: metadata (``get``, ``list``) is for the Trio thread and takes a lock for a
few dict operations only. ``register``, ``delete`` and ``load_all`` do disk I/O: run
them with ``trio.to_thread.run_sync``; a second lock serialises them. ``prompt_for``
runs on a model instance's thread with that instance's builder (its model); builds run outside
every lock, and concurrent misses on one key build once (the others wait for it).
"""

from __future__ import annotations

import builtins
import datetime
import functools
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import attrs
import structlog

from voxtrio.protocol._limits import MAX_PROMPT_TEXT_CHARS
from voxtrio.protocol._voice_rules import (
    ALL_MODES,
    VOICE_ID_PATTERN,
    VoiceError,
    VoiceMode,
    check_voice_id,
    resolve_mode,
)
from voxtrio.voices._aliases import ALIAS_FILE
from voxtrio.voices._audio import PromptAudio, encode_wav
from voxtrio.voices._disk import Stamp, VoiceDirectory, short_reason
from voxtrio.voices._prompts import PromptBuilder, PromptCache, PromptLRU, build_from_wav
from voxtrio.voices._voice import Voice, VoiceExists, VoiceNotFound

log = structlog.get_logger("voxtrio.voices")


@attrs.frozen(eq=False)
class _Entry:
    voice: Voice
    wav: bytes | None  # in-memory voices only; persisted ones are read from disk
    stamp: Stamp | None = None  # persisted voices: meta.json as it was read


class _VoiceChanged(Exception):
    """The voice was replaced or deleted while its prompt was being built."""


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
        self._disk = VoiceDirectory(directory) if directory is not None else None
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

    def _sync_one(self, voice_id: str, entry: _Entry | None) -> _Entry | None:
        """The entry for `voice_id` as the directory has it now (None: no such voice)."""
        disk = self._disk
        if disk is None or VOICE_ID_PATTERN.fullmatch(voice_id) is None:
            return entry
        stamp = disk.stamp(voice_id)
        if entry is not None and stamp == entry.stamp:
            return entry
        fresh: _Entry | None = None
        if stamp is not None:
            try:
                voice = disk.read_voice(voice_id)
            except Exception as exc:  # half-written by another instance, or damaged
                log.warning("voice_unreadable", voice_id=voice_id, reason=short_reason(exc))
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
        if self._disk is None or not self._disk.path.is_dir():
            return
        on_disk = self._disk.voice_ids()
        with self._lock:
            known = {k for k, e in self._entries.items() if e.voice.persisted}
            entries = {k: self._entries.get(k) for k in on_disk | known}
        for voice_id, entry in sorted(entries.items()):
            self._sync_one(voice_id, entry)

    # ------------------------------------------------------------ prompts (instance threads)

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
            return build_from_wav(wav, mode, prompt_text, build)

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
            assert self._disk is not None
            try:
                wav = self._disk.read_audio(voice.voice_id)
            except FileNotFoundError:
                raise _VoiceChanged from None
            if hashlib.sha256(wav).hexdigest() != voice.sha256:
                if not self._is_current(voice):
                    raise _VoiceChanged
                log.error("voice_audio_corrupt", voice_id=voice.voice_id)
                raise VoiceError("voice_id", f"voice {voice.voice_id!r} is damaged on disk")
        return build_from_wav(wav, voice.mode, voice.prompt_text, build)

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
            disk = self._disk
            if disk is not None and (persist or disk.exists(voice_id)):
                with disk.lock():
                    if persist:
                        disk.write_voice(voice, wav)
                    else:
                        disk.remove(voice_id)
            stamp = disk.stamp(voice_id) if disk is not None and persist else None
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
        exists = entry is not None or (self._disk is not None and self._disk.exists(voice_id))
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
                assert self._disk is not None
                with self._disk.lock():
                    self._disk.remove(voice_id)
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
        disk = self._disk
        if disk is None:
            return []
        with self._write_lock:
            with disk.lock():
                disk.recover()
            loaded: builtins.list[Voice] = []
            stamps: dict[str, Stamp | None] = {}
            for path in sorted(disk.path.iterdir()):
                if path.name.startswith(".") or path.name == ALIAS_FILE:
                    continue
                try:
                    stamps[path.name] = disk.stamp(path.name)
                    loaded.append(disk.read_voice(path.name))
                except Exception as exc:  # a broken voice is skipped, never fatal
                    log.warning("voice_skipped", path=str(path), reason=short_reason(exc))
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
