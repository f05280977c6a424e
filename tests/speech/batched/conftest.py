"""Tiny checkpoints of both architectures, each with a voice library, for the batched model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from voxtrio.protocol._voice_rules import supported_modes
from voxtrio.speech._voxcpm_engine import VoxCPMEngine
from voxtrio.speech._voxcpm_import import import_voxcpm
from voxtrio.tools._tiny_model import build_checkpoint
from voxtrio.voices._audio import decode_prompt_audio
from voxtrio.voices._prompts import prompt_sample_rate
from voxtrio.voices._store import VoiceStore

TRANSCRIPT = "This is the prompt."

# librosa.load (voxcpm 2's prompt loader) imports audioread's deprecated backends.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread.*")


def _voice_like(seconds: float, rate: int, pitch: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * pitch * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return wave.astype(np.float32)


@attrs.frozen
class Loaded:
    """One voxcpm model: voxcpm's own `VoxCPM` object and voxtrio's engine around it."""

    voxcpm: Any
    engine: VoxCPMEngine


def _load(model_dir: Path, voices_dir: Path) -> Loaded:
    import soundfile

    voxcpm = import_voxcpm().VoxCPM.from_pretrained(
        str(model_dir), load_denoiser=False, optimize=False, device="cpu"
    )
    engine = VoxCPMEngine(voxcpm, device="cpu", warm_normalizer=False)
    store = VoiceStore(voices_dir, modes=supported_modes(engine.architecture))
    rate = prompt_sample_rate(engine.tts_model)
    modes = ["continuation"]
    if engine.architecture == "voxcpm2":
        modes += ["reference", "both"]
    for index, mode in enumerate(modes):
        buffer = io.BytesIO()
        soundfile.write(
            buffer, _voice_like(1.0 + index * 0.3, 44100, 150 + 40 * index), 44100, format="FLAC"
        )
        audio = decode_prompt_audio(buffer.getvalue(), target_rate=rate)
        text = None if mode == "reference" else TRANSCRIPT
        store.register(mode, audio, prompt_text=text, mode=mode, persist=True)
    engine.voices = store
    return Loaded(voxcpm=voxcpm, engine=engine)


@pytest.fixture(scope="session", params=["voxcpm2", "voxcpm"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """A tiny never-stopping checkpoint of each architecture, voices `continuation` (+ v2 modes)."""
    arch = request.param
    root = tmp_path_factory.mktemp(f"batched-{arch}")
    return _load(build_checkpoint(root / "model", arch=arch), root / "voices")


@pytest.fixture(scope="session", params=["voxcpm2", "voxcpm"])
def stopping(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """A tiny checkpoint whose stop head fires at the first step voxcpm allows."""
    arch = request.param
    root = tmp_path_factory.mktemp(f"batched-stop-{arch}")
    return _load(build_checkpoint(root / "model", arch=arch, stop="always"), root / "voices")
