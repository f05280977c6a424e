"""Built cloning prompts: how one is built from a WAV, and the bounded LRU that keeps them.

A prompt is voxcpm's ``build_prompt_cache`` dict (CPU tensors, never mutated by
generation). The LRU is bounded by count and approximate bytes; concurrent misses on
one key build once, the other callers wait for that build.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import attrs

from voxtrio.protocol._voice_rules import VoiceMode

PromptCache = dict[str, Any]
"""voxcpm's prompt cache: its own dict of tensors (opaque here, only sized)."""


class PromptBuilder(Protocol):
    """Build voxcpm's prompt cache for a WAV file (runs on the calling instance's thread)."""

    def __call__(self, mode: VoiceMode, wav_path: str, prompt_text: str | None) -> PromptCache: ...


class _AudioVAE(Protocol):
    @property
    def sample_rate(self) -> int: ...


class PromptModel(Protocol):
    """What of voxcpm's TTS model (VoxCPM2 or 1.x `tts_model`) builds and sizes prompts."""

    @property
    def audio_vae(self) -> _AudioVAE: ...

    def build_prompt_cache(
        self,
        prompt_text: str | None = None,
        prompt_wav_path: str | None = None,
        reference_wav_path: str | None = None,
    ) -> PromptCache: ...


def voxcpm_prompt_builder(tts_model: PromptModel) -> PromptBuilder:
    """A PromptBuilder calling voxcpm's `tts_model.build_prompt_cache` (VoxCPM2 or 1.x)."""

    def build(mode: VoiceMode, wav_path: str, prompt_text: str | None) -> PromptCache:
        if mode == "reference":
            return tts_model.build_prompt_cache(reference_wav_path=wav_path)
        if mode == "continuation":
            return tts_model.build_prompt_cache(prompt_text=prompt_text, prompt_wav_path=wav_path)
        return tts_model.build_prompt_cache(
            prompt_text=prompt_text, prompt_wav_path=wav_path, reference_wav_path=wav_path
        )

    return build


def prompt_sample_rate(tts_model: PromptModel) -> int:
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


def build_from_wav(
    wav: bytes, mode: VoiceMode, prompt_text: str | None, build: PromptBuilder
) -> PromptCache:
    """`build` on a private temporary copy of `wav`."""
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
