"""Instances sharing one voice library directory see each other's changes at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxtrio.protocol._voice_rules import VoiceError
from voxtrio.voices import _disk
from voxtrio.voices._disk import VoiceDirectory
from voxtrio.voices._store import VoiceStore
from voxtrio.voices._voice import VoiceNotFound

from .test_voices import Builder, audio


@pytest.fixture
def pair(tmp_path: Path) -> tuple[VoiceStore, VoiceStore]:
    """Two stores (two instances) over one directory, both loaded before any voice exists."""
    first, second = (VoiceStore(tmp_path / "voices", max_cached_prompts=4) for _ in range(2))
    first.load_all()
    second.load_all()
    return first, second


def test_a_voice_registered_on_one_is_found_on_the_other(
    pair: tuple[VoiceStore, VoiceStore],
) -> None:
    """get on the second instance reads a voice the first one persisted."""
    first, second = pair
    voice = first.register("alice", audio(), persist=True)
    assert second.get("alice") == voice
    assert "alice" in second


def test_list_rescans_the_directory(pair: tuple[VoiceStore, VoiceStore]) -> None:
    """list shows voices added and drops voices removed by another instance."""
    first, second = pair
    first.register("alice", audio(1), persist=True)
    first.register("bob", audio(2), persist=True)
    assert [v.voice_id for v in second.list()] == ["alice", "bob"]
    first.delete("alice")
    assert [v.voice_id for v in second.list()] == ["bob"]


def test_a_delete_elsewhere_is_seen_and_its_prompts_forgotten(
    pair: tuple[VoiceStore, VoiceStore],
) -> None:
    """After another instance deletes a voice, lookups fail and its built prompt is dropped."""
    first, second = pair
    first.register("alice", audio(), persist=True)
    second.prompt_for("alice", Builder())
    assert len(second.prompts) == 1
    first.delete("alice")
    with pytest.raises(VoiceNotFound):
        second.get("alice")
    assert len(second.prompts) == 0


def test_a_replace_elsewhere_serves_the_new_audio(pair: tuple[VoiceStore, VoiceStore]) -> None:
    """A voice replaced on another instance is re-read; the old prompt is never served."""
    first, second = pair
    first.register("alice", audio(1), persist=True)
    old = second.prompt_for("alice", Builder())
    new_voice = first.register("alice", audio(2), persist=True, replace=True)
    assert second.get("alice") == new_voice
    new = second.prompt_for("alice", Builder())
    assert not (new["audio_feat"] == old["audio_feat"]).all()


def test_in_memory_voices_stay_local(pair: tuple[VoiceStore, VoiceStore]) -> None:
    """An unpersisted voice exists only on the instance that registered it."""
    first, second = pair
    first.register("alice", audio(), persist=False)
    with pytest.raises(VoiceNotFound):
        second.get("alice")


def test_recovery_waits_for_another_instances_write(
    pair: tuple[VoiceStore, VoiceStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one instance holds the directory lock, another's load_all waits, then gives up."""
    first, second = pair
    monkeypatch.setattr(_disk, "DIRECTORY_LOCK_TIMEOUT_S", 0.2)
    assert first.directory is not None
    half = first.directory / ".tmp-inflight"
    half.mkdir()
    with VoiceDirectory(first.directory).lock():
        with pytest.raises(VoiceError, match="busy"):
            second.load_all()
        assert half.exists()  # not mistaken for a crash's leftover
    second.load_all()
    assert not half.exists()
