"""Voice prompts through voxcpm itself: tiny real checkpoints, voxcpm's loader and prompt cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from voxtrio.protocol._voice_rules import V1_MODES, VoiceError, VoiceMode, supported_modes
from voxtrio.tools._tiny_model import build_checkpoint
from voxtrio.voices._audio import decode_prompt_audio, encode_wav, write_wav_atomic
from voxtrio.voices._prompts import prompt_sample_rate, voxcpm_prompt_builder
from voxtrio.voices._store import VoiceStore

# librosa.load (voxcpm 2's prompt loader) imports audioread's backends on first use,
# which import the deprecated aifc/sunau modules.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread.*")

TEXT = "Hello from a cloned voice."
TRANSCRIPT = "This is the prompt."


def load(model_dir: Path) -> Any:
    from voxtrio.speech._voxcpm_import import import_voxcpm

    voxcpm = import_voxcpm()
    return voxcpm.VoxCPM.from_pretrained(
        str(model_dir), load_denoiser=False, optimize=False, device="cpu"
    ).tts_model


@pytest.fixture(scope="module")
def tts_v2(tiny_model_dir: Path) -> Any:
    return load(tiny_model_dir)


@pytest.fixture(scope="module")
def tts_v1(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load(build_checkpoint(tmp_path_factory.mktemp("models") / "tiny-v1", arch="voxcpm"))


def voice_like(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(
        np.float32
    )


def first_chunks(tts: Any, cache: Any, steps: int = 3) -> list[np.ndarray]:
    torch.manual_seed(0)
    stream = tts.generate_with_prompt_cache_streaming(
        target_text=TEXT, prompt_cache=cache, max_len=steps, retry_badcase=False
    )
    try:
        return [wav.squeeze(0).float().numpy() for wav, _tokens, _feats in stream]
    finally:
        stream.close()


def store_for(tmp_path: Path, architecture: str) -> VoiceStore:
    return VoiceStore(tmp_path / "voices", modes=supported_modes(architecture))


def upload(tts: Any) -> Any:
    """A 2 s FLAC at 44.1 kHz, decoded as an upload is."""
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, voice_like(2.0, 44100), 44100, format="FLAC")
    return decode_prompt_audio(buffer.getvalue(), target_rate=prompt_sample_rate(tts))


@pytest.mark.parametrize(
    ("mode", "cache_mode"),
    [("reference", "reference"), ("continuation", "continuation"), ("both", "ref_continuation")],
)
def test_v2_voice_prompt_generates(
    tts_v2: Any, tmp_path: Path, mode: VoiceMode, cache_mode: str
) -> None:
    """A persisted voice's cache, built by voxcpm from our WAV, drives VoxCPM2 streaming."""
    store = store_for(tmp_path, "voxcpm2")
    text = None if mode == "reference" else TRANSCRIPT
    store.register("alice", upload(tts_v2), prompt_text=text, mode=mode, persist=True)
    cache = store.prompt_for("alice", voxcpm_prompt_builder(tts_v2))
    assert cache["mode"] == cache_mode
    chunks = first_chunks(tts_v2, cache)
    assert [c.shape for c in chunks] == [(7680,)] * 3
    assert all(np.isfinite(c).all() for c in chunks)


def test_v2_cache_matches_voxcpm_reading_the_file_itself(tts_v2: Any, tmp_path: Path) -> None:
    """The store's cache equals voxcpm's own build from the persisted audio.wav."""
    store = store_for(tmp_path, "voxcpm2")
    store.register("alice", upload(tts_v2), prompt_text=TRANSCRIPT, mode="both", persist=True)
    ours = store.prompt_for("alice", voxcpm_prompt_builder(tts_v2))
    path = str(tmp_path / "voices" / "alice" / "audio.wav")
    theirs = tts_v2.build_prompt_cache(
        prompt_text=TRANSCRIPT, prompt_wav_path=path, reference_wav_path=path
    )
    assert torch.equal(ours["audio_feat"], theirs["audio_feat"])
    assert torch.equal(ours["ref_audio_feat"], theirs["ref_audio_feat"])


def test_cached_prompt_gives_the_same_audio_as_a_fresh_one(tts_v2: Any, tmp_path: Path) -> None:
    """Reusing a cache across requests changes nothing: same seed, same audio."""
    path = tmp_path / "p.wav"
    write_wav_atomic(path, voice_like(2.0, 16000), 16000)
    cache = tts_v2.build_prompt_cache(reference_wav_path=str(path))
    first = first_chunks(tts_v2, cache)
    again = first_chunks(tts_v2, cache)
    fresh = first_chunks(tts_v2, tts_v2.build_prompt_cache(reference_wav_path=str(path)))
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(fresh))


def test_v1_continuation_prompt_generates(tts_v1: Any, tmp_path: Path) -> None:
    """On a VoxCPM 1.x model, continuation cloning from a stored voice streams audio."""
    store = store_for(tmp_path, "voxcpm")
    store.register("bob", upload(tts_v1), prompt_text=TRANSCRIPT, persist=True)
    cache = store.prompt_for("bob", voxcpm_prompt_builder(tts_v1))
    assert cache["prompt_text"] == TRANSCRIPT
    chunks = first_chunks(tts_v1, cache)
    assert len(chunks) == 3
    assert all(c.size > 0 and np.isfinite(c).all() for c in chunks)


def test_v1_refuses_reference_cloning_before_the_model(tmp_path: Path) -> None:
    """A reference voice on a 1.x store is refused on `mode`, never reaching voxcpm."""
    store = VoiceStore(tmp_path, modes=V1_MODES)
    audio = decode_prompt_audio(encode_wav(voice_like(2.0, 16000), 16000), target_rate=16000)
    with pytest.raises(VoiceError) as info:
        store.register("ref", audio, mode="reference")
    assert info.value.field == "mode"


def test_ad_hoc_prompt_through_the_store(tts_v2: Any) -> None:
    """A fetched prompt (prompt_for_audio) builds once and is reused by content hash."""
    store = VoiceStore(None)
    audio = upload(tts_v2)
    build = voxcpm_prompt_builder(tts_v2)
    first = store.prompt_for_audio(audio, None, "reference", build)
    second = store.prompt_for_audio(audio, None, "reference", build)
    assert first is second
    assert store.prompts.stats.builds == 1
