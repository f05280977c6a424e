"""The voice library: registration, persistence and crash safety, and the LRU of built prompts."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from structlog.testing import capture_logs

from voxtrio.protocol._voice_rules import V1_MODES, VoiceError, VoiceMode, check_voice_id
from voxtrio.voices import _disk
from voxtrio.voices._audio import PromptAudio
from voxtrio.voices._disk import LOCK_FILE
from voxtrio.voices._prompts import PromptLRU, voxcpm_prompt_builder
from voxtrio.voices._store import VoiceStore
from voxtrio.voices._voice import VoiceExists, VoiceNotFound

RATE = 16000


def listing(directory: Path) -> list[str]:
    """What the library directory holds, less its permanent lock file."""
    return sorted(p.name for p in directory.iterdir() if p.name != LOCK_FILE)


def audio(seed: int = 0, seconds: float = 1.5) -> PromptAudio:
    samples = (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).clip(-1, 1)
    return PromptAudio(
        samples=samples.astype(np.float32),
        sample_rate=RATE,
        duration=seconds,
        source_rate=RATE,
        format="wav",
        sha256=f"input-{seed}",
    )


class Builder:
    """A PromptBuilder that reads the WAV it is given, like voxcpm does, and counts calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[VoiceMode, str | None]] = []
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, mode: VoiceMode, wav_path: str, prompt_text: str | None) -> dict[str, Any]:
        samples, rate = soundfile.read(wav_path, dtype="float32")
        with self._lock:
            self.calls.append((mode, prompt_text))
        time.sleep(self.delay)
        return {"mode": mode, "audio_feat": samples, "rate": rate, "prompt_text": prompt_text}


@pytest.fixture
def store(tmp_path: Path) -> VoiceStore:
    return VoiceStore(tmp_path / "voices", max_cached_prompts=2)


def test_persisted_voice_is_a_directory_with_audio_and_meta(store: VoiceStore) -> None:
    """A persisted voice is <dir>/<id>/audio.wav plus meta.json."""
    voice = store.register("alice", audio(), prompt_text="Hello there.", persist=True)
    assert store.directory is not None
    meta = json.loads((store.directory / "alice" / "meta.json").read_text())
    assert meta == {
        "format": 1,
        "voice_id": "alice",
        "mode": "continuation",
        "prompt_text": "Hello there.",
        "duration": 1.5,
        "sample_rate": RATE,
        "created_at": voice.created_at,
        "sha256": voice.sha256,
    }
    info = soundfile.info(store.directory / "alice" / "audio.wav")
    assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16")
    assert listing(store.directory) == ["alice"]


def test_restart_serves_the_same_voices(store: VoiceStore) -> None:
    """A new store on the same directory lists the same voices and builds the same prompts."""
    store.register("alice", audio(1), prompt_text="Hi.", persist=True)
    store.register("bob", audio(2), persist=True)
    before = store.prompt_for("bob", Builder())
    restarted = VoiceStore(store.directory, max_cached_prompts=2)
    assert [v.voice_id for v in restarted.load_all()] == ["alice", "bob"]
    assert restarted.list() == store.list()
    after = restarted.prompt_for("bob", Builder())
    np.testing.assert_array_equal(after["audio_feat"], before["audio_feat"])


def test_unpersisted_voice_lives_in_memory_only(store: VoiceStore) -> None:
    """persist=false keeps the voice usable now but writes nothing and is gone after restart."""
    store.register("temp", audio(), persist=False)
    assert store.get("temp").persisted is False
    assert store.prompt_for("temp", Builder())["rate"] == RATE
    assert store.directory is not None
    assert not store.directory.exists() or not any(store.directory.iterdir())
    assert VoiceStore(store.directory, max_cached_prompts=2).load_all() == []


def test_persist_without_directory_is_refused() -> None:
    """persist=true on a server without --voices-dir names the persist field."""
    with pytest.raises(VoiceError) as info:
        VoiceStore(None, max_cached_prompts=2).register("alice", audio(), persist=True)
    assert info.value.field == "persist"


def test_existing_id_is_refused_without_replace(store: VoiceStore) -> None:
    """Registering an existing id fails unless replace is set."""
    store.register("alice", audio(1), persist=True)
    with pytest.raises(VoiceExists) as info:
        store.register("alice", audio(2), persist=True)
    assert info.value.field == "voice_id"
    assert store.get("alice").sha256 == store.list()[0].sha256


def test_replace_never_serves_the_old_prompt(store: VoiceStore) -> None:
    """After a replacement, prompt_for builds from the new audio even if the old one was cached."""
    builder = Builder()
    store.register("alice", audio(1), persist=True)
    old = store.prompt_for("alice", builder)
    store.register("alice", audio(2), persist=True, replace=True)
    new = store.prompt_for("alice", builder)
    assert len(builder.calls) == 2
    assert not np.array_equal(old["audio_feat"], new["audio_feat"])
    assert len(store.prompts) == 1


def test_crash_mid_write_leaves_no_half_voice(
    store: VoiceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error after the temporary directory exists leaves neither the voice nor the temp dir."""

    def crash(path: Path, data: bytes) -> None:
        path.write_bytes(data[:10])
        raise OSError("disk full")

    monkeypatch.setattr(_disk, "write_synced", crash)
    with pytest.raises(OSError, match="disk full"):
        store.register("alice", audio(), persist=True)
    assert store.directory is not None
    assert listing(store.directory) == []
    assert "alice" not in store


def test_crash_mid_replace_keeps_the_old_voice(
    store: VoiceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replacement that fails while writing leaves the previous voice on disk and in memory."""
    first = store.register("alice", audio(1), persist=True)
    monkeypatch.setattr(_disk, "write_synced", lambda path, data: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        store.register("alice", audio(2), persist=True, replace=True)
    assert store.get("alice") == first
    assert store.directory is not None
    assert listing(store.directory) == ["alice"]
    assert VoiceStore(store.directory, max_cached_prompts=2).load_all() == [first]


def test_leftover_temp_dir_is_ignored_and_removed(store: VoiceStore) -> None:
    """A .tmp-* directory left by a killed process is not loaded and is cleaned up."""
    store.register("alice", audio(), persist=True)
    assert store.directory is not None
    half = store.directory / ".tmp-0123"
    half.mkdir()
    (half / "audio.wav").write_bytes(b"RIFF")
    loaded = VoiceStore(store.directory, max_cached_prompts=2).load_all()
    assert [v.voice_id for v in loaded] == ["alice"]
    assert listing(store.directory) == ["alice"]


def test_interrupted_replace_is_undone_at_load(store: VoiceStore) -> None:
    """A voice renamed to .old-* whose successor never arrived is put back."""
    voice = store.register("alice", audio(), persist=True)
    assert store.directory is not None
    (store.directory / "alice").rename(store.directory / ".old-99")
    assert VoiceStore(store.directory, max_cached_prompts=2).load_all() == [voice]
    assert listing(store.directory) == ["alice"]


def test_finished_replace_drops_the_old_copy_at_load(store: VoiceStore) -> None:
    """An .old-* directory whose successor is in place is removed."""
    store.register("alice", audio(1), persist=True)
    assert store.directory is not None
    (store.directory / "alice").rename(store.directory / ".old-1")
    new = store.register("alice", audio(2), persist=True, replace=True)
    assert VoiceStore(store.directory, max_cached_prompts=2).load_all() == [new]
    assert listing(store.directory) == ["alice"]


def test_interrupted_delete_is_finished_at_load(store: VoiceStore) -> None:
    """A voice renamed to .del-* is gone after load."""
    store.register("alice", audio(), persist=True)
    assert store.directory is not None
    (store.directory / "alice").rename(store.directory / ".del-7")
    assert VoiceStore(store.directory, max_cached_prompts=2).load_all() == []
    assert listing(store.directory) == []


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (lambda d: (d / "meta.json").write_text("{not json"), "Expecting property name"),
        (lambda d: (d / "audio.wav").unlink(), "No such file"),
        (lambda d: (d / "audio.wav").write_bytes(b"RIFF changed"), "does not match its sha256"),
        (lambda d: d.rename(d.with_name("bob")), "meta.json names 'alice'"),
        (lambda d: d.rename(d.with_name("bad name")), "must be 1-64 characters"),
    ],
)
def test_broken_voice_is_skipped_with_a_log_line(
    store: VoiceStore, breakage: Any, reason: str
) -> None:
    """A voice that cannot be read is skipped and logged; the others still load."""
    store.register("alice", audio(1), persist=True)
    store.register("zoe", audio(2), persist=True)
    assert store.directory is not None
    breakage(store.directory / "alice")
    with capture_logs() as logs:
        loaded = VoiceStore(store.directory, max_cached_prompts=2).load_all()
    assert [v.voice_id for v in loaded] == ["zoe"]
    (skipped,) = [e for e in logs if e["event"] == "voice_skipped"]
    assert reason in skipped["reason"]


def test_delete_removes_the_voice_and_its_directory(store: VoiceStore) -> None:
    """delete forgets the voice, removes its files and its built prompts."""
    store.register("alice", audio(), persist=True)
    store.prompt_for("alice", Builder())
    store.delete("alice")
    assert store.list() == []
    assert len(store.prompts) == 0
    assert store.directory is not None
    assert listing(store.directory) == []


def test_delete_unknown_voice_is_not_found(store: VoiceStore) -> None:
    """Deleting an id that does not exist raises VoiceNotFound."""
    with pytest.raises(VoiceNotFound):
        store.delete("nobody")


@pytest.mark.parametrize(
    "voice_id",
    ["", "../etc", "a/b", "a\\b", ".hidden", "-dash", "x" * 65, "a..b", "default", "NONE", "a b"],
)
def test_unsafe_voice_ids_are_refused(voice_id: str) -> None:
    """Path separators, leading dots, '..', over 64 characters and reserved names are refused."""
    with pytest.raises(VoiceError) as info:
        check_voice_id(voice_id)
    assert info.value.field == "voice_id"


def test_voice_id_differing_only_in_case_is_refused(store: VoiceStore) -> None:
    """'Alice' clashes with 'alice' (case-insensitive file systems)."""
    store.register("alice", audio(), persist=False)
    with pytest.raises(VoiceError, match="clashes with voice 'alice'"):
        store.register("Alice", audio(), persist=False)


def test_mode_defaults_follow_the_transcript(store: VoiceStore) -> None:
    """With a transcript a voice defaults to continuation, without one to reference."""
    assert store.register("a", audio(), prompt_text="Hi.").mode == "continuation"
    assert store.register("b", audio()).mode == "reference"


def test_continuation_needs_a_transcript(store: VoiceStore) -> None:
    """continuation (and both) without prompt_text names prompt_text."""
    with pytest.raises(VoiceError) as info:
        store.register("a", audio(), mode="both", prompt_text="  ")
    assert (info.value.field, info.value.message) == (
        "prompt_text",
        "required for mode 'both' (the prompt's transcript)",
    )


def test_reference_mode_on_a_v1_model_is_refused(tmp_path: Path) -> None:
    """A VoxCPM2-only mode on a 1.x store is a clear error on the mode field."""
    with pytest.raises(VoiceError) as info:
        VoiceStore(tmp_path, modes=V1_MODES).register("a", audio(), mode="reference")
    assert (info.value.field, info.value.message) == (
        "mode",
        "'reference' needs a VoxCPM2 model; this model is VoxCPM 1.x",
    )


def test_v2_voice_loaded_by_a_v1_server_refuses_prompts(store: VoiceStore) -> None:
    """A reference voice on disk is listed by a 1.x server but its prompt is refused."""
    store.register("ref", audio(), persist=True)
    v1 = VoiceStore(store.directory, modes=V1_MODES)
    v1.load_all()
    with pytest.raises(VoiceError, match="needs VoxCPM2"):
        v1.prompt_for("ref", Builder())


def test_builder_gets_mode_transcript_and_a_wav_at_the_prompt_rate(store: VoiceStore) -> None:
    """The builder is handed the voice's mode, its transcript and a readable WAV file."""
    builder = Builder()
    store.register("a", audio(), prompt_text="Hello.", mode="both", persist=True)
    cache = store.prompt_for("a", builder)
    assert builder.calls == [("both", "Hello.")]
    assert cache["rate"] == RATE
    assert cache["audio_feat"].size == int(1.5 * RATE)


def test_lru_evicts_least_recent_and_rebuilds_on_miss(store: VoiceStore) -> None:
    """With room for 2 prompts, a third evicts the least recently used, rebuilt when asked again."""
    builder = Builder()
    for name in ("a", "b", "c"):
        store.register(name, audio(ord(name)), persist=True)
    store.prompt_for("a", builder)
    store.prompt_for("b", builder)
    store.prompt_for("a", builder)  # a is now the most recent
    store.prompt_for("c", builder)  # evicts b
    assert len(builder.calls) == 3
    store.prompt_for("a", builder)
    assert len(builder.calls) == 3
    store.prompt_for("b", builder)
    assert len(builder.calls) == 4
    assert store.prompts.stats.evictions == 2
    assert len(store.prompts) == 2


def test_lru_is_bounded_by_bytes() -> None:
    """Entries past max_bytes evict the oldest; one bigger than the whole budget is not kept."""
    lru = PromptLRU(max_entries=10, max_bytes=2500)
    for key in range(3):
        lru.get_or_build(key, lambda: {"feat": np.zeros(1000, np.uint8)})
    assert lru.cached_keys() == [1, 2]
    lru.get_or_build("big", lambda: {"feat": np.zeros(3000, np.uint8)})
    assert lru.cached_keys() == [1, 2]


def test_concurrent_misses_build_once() -> None:
    """Eight threads asking for one voice at once share a single build."""
    store = VoiceStore(None, max_cached_prompts=4)
    store.register("alice", audio(), persist=False)
    builder = Builder(delay=0.2)
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.prompt_for("alice", builder)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builder.calls) == 1
    assert len(results) == 8
    assert all(r is results[0] for r in results)


def test_concurrent_prompts_for_different_voices_build_in_parallel() -> None:
    """Builds of different voices run concurrently (no lock is held while building)."""
    store = VoiceStore(None, max_cached_prompts=4)
    for name in ("a", "b", "c", "d"):
        store.register(name, audio(ord(name)), persist=False)
    builder = Builder(delay=0.3)
    threads = [threading.Thread(target=store.prompt_for, args=(name, builder)) for name in "abcd"]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.perf_counter() - started < 1.0  # one after another would take 1.2 s
    assert len(builder.calls) == 4


def test_failed_build_is_not_cached(store: VoiceStore) -> None:
    """A build that raises reaches the caller, and the next call builds again."""
    store.register("alice", audio(), persist=False)

    def broken(mode: VoiceMode, wav_path: str, prompt_text: str | None) -> dict[str, Any]:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="model exploded"):
        store.prompt_for("alice", broken)
    assert store.prompt_for("alice", Builder())["mode"] == "reference"


def test_prompt_for_unknown_voice_names_the_field(store: VoiceStore) -> None:
    """An unknown voice_id raises VoiceNotFound on the field given."""
    with pytest.raises(VoiceNotFound) as info:
        store.prompt_for("nobody", Builder(), field="params.voice_id")
    assert (info.value.field, info.value.message) == ("params.voice_id", "no voice named 'nobody'")


def test_ad_hoc_prompts_are_cached_by_content_hash(store: VoiceStore) -> None:
    """The same fetched audio twice builds one prompt; other content builds another."""
    builder = Builder()
    store.prompt_for_audio(audio(1), "Hi.", "continuation", builder)
    store.prompt_for_audio(audio(1), "Hi.", "continuation", builder)
    store.prompt_for_audio(audio(2), "Hi.", "continuation", builder)
    assert len(builder.calls) == 2


def test_unpersisted_voices_are_bounded() -> None:
    """Past max_memory_voices, an unpersisted registration is refused on the persist field."""
    store = VoiceStore(None, max_memory_voices=1)
    store.register("a", audio(), persist=False)
    with pytest.raises(VoiceError) as info:
        store.register("b", audio(), persist=False)
    assert info.value.field == "persist"


def test_library_size_is_bounded(tmp_path: Path) -> None:
    """Past max_voices, a new voice is refused."""
    store = VoiceStore(tmp_path, max_voices=1)
    store.register("a", audio(), persist=True)
    with pytest.raises(VoiceError, match="library is full"):
        store.register("b", audio(), persist=True)


def test_prebuild_warms_up_to_the_cache_size(store: VoiceStore) -> None:
    """prebuild builds the newest voices, as many as the LRU holds."""
    for name in ("a", "b", "c"):
        store.register(name, audio(ord(name)), persist=True)
    builder = Builder()
    assert store.prebuild(builder) == 2
    assert len(builder.calls) == 2


def test_voxcpm_builder_maps_modes_to_build_prompt_cache() -> None:
    """The voxcpm builder passes the WAV as reference, continuation prompt, or both."""
    calls: list[dict[str, Any]] = []

    class FakeTts:
        def build_prompt_cache(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            return {}

    build = voxcpm_prompt_builder(FakeTts())
    build("reference", "/w.wav", None)
    build("continuation", "/w.wav", "Hi.")
    build("both", "/w.wav", "Hi.")
    assert calls == [
        {"reference_wav_path": "/w.wav"},
        {"prompt_text": "Hi.", "prompt_wav_path": "/w.wav"},
        {"prompt_text": "Hi.", "prompt_wav_path": "/w.wav", "reference_wav_path": "/w.wav"},
    ]


def test_check_usable_fails_fast_on_the_trio_side(store: VoiceStore) -> None:
    """check_usable names the field for an unknown voice and for a mode this model lacks."""
    store.register("ref", audio(), persist=True)
    v1 = VoiceStore(store.directory, modes=V1_MODES)
    v1.load_all()
    with pytest.raises(VoiceNotFound):
        v1.check_usable("nobody", field="params.voice_id")
    with pytest.raises(VoiceError) as info:
        v1.check_usable("ref", field="params.voice_id")
    assert info.value.field == "params.voice_id"


def test_prompt_text_whitespace_is_collapsed(store: VoiceStore) -> None:
    """The transcript gets voxcpm's whitespace clean-up (newlines and runs become one space)."""
    voice = store.register("a", audio(), prompt_text="  Hello\n  there.\t")
    assert voice.prompt_text == "Hello there."


def test_prebuild_limit(store: VoiceStore) -> None:
    """prebuild(limit=1) builds only the newest voice (start-up cost is bounded)."""
    for name in ("a", "b", "c"):
        store.register(name, audio(ord(name)), persist=True)
    builder = Builder()
    assert store.prebuild(builder, limit=1) == 1
    assert [key[0] for key in store.prompts.cached_keys()] == ["c"]  # type: ignore[index]


def test_ad_hoc_reference_prompt_on_v1_is_refused() -> None:
    """A VoxCPM2-only mode for a fetched prompt is refused on a 1.x store."""
    with pytest.raises(VoiceError) as info:
        VoiceStore(None, modes=V1_MODES).prompt_for_audio(audio(), None, "reference", Builder())
    assert info.value.field == "mode"
