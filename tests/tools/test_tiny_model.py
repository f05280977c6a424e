"""The random-weight checkpoint builder and the torchaudio stand-in, against real voxcpm."""

from __future__ import annotations

import os

# tqdm reads TQDM_* once, when it is first imported: set before anything imports it.
os.environ.setdefault("TQDM_DISABLE", "1")

import importlib.util
import json
import math
import pathlib
import sys
import types
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from voxtrio.speech._voxcpm_import import (
    build_torchaudio_standin,
    import_voxcpm,
    torchaudio_is_standin,
)
from voxtrio.tools._tiny_model import (
    ARCHITECTURES,
    CONFIG_KEY,
    build_checkpoint,
    expected_chunks,
    full_config,
    parameter_count,
)

# voxcpm's VAE is built with torch.nn.utils.weight_norm: every model load emits
# this FutureWarning (once per conv layer).
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning"
)

#: (output sample rate, samples per streaming chunk) of the released models.
RELEASED = {"voxcpm2": (48000, 7680), "voxcpm": (16000, 1280)}


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The tiny model's ops are microscopic, so intra-op threads buy little, and
    # their spin-waits collapse when another process keeps a core busy: on 2 cores
    # a 52-chunk stream then took 10-24 s instead of 0.4 s.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoint(arch: str, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_checkpoint(tmp_path_factory.mktemp(arch) / "ckpt", arch=arch)


@pytest.fixture(scope="module")
def tts(checkpoint: pathlib.Path) -> Any:
    return _load(checkpoint)


@pytest.fixture(scope="module")
def tts_always(arch: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = build_checkpoint(tmp_path_factory.mktemp(arch) / "always", arch=arch, stop="always")
    return _load(path)


def _load(path: pathlib.Path) -> Any:
    voxcpm = import_voxcpm()
    return voxcpm.VoxCPM.from_pretrained(
        str(path), load_denoiser=False, optimize=False, device="cpu"
    )


def _stream(tts: Any, text: str, **kwargs: Any) -> list[np.ndarray]:
    # retry_badcase=False: streaming ignores it, but warns when it is left on.
    gen: Generator[np.ndarray] = tts.generate_streaming(text, retry_badcase=False, **kwargs)
    try:
        return list(gen)
    finally:
        gen.close()


def _files(directory: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# ---------------------------------------------------------------------------
# Loading and generation through voxcpm
# ---------------------------------------------------------------------------


def test_loader_finds_every_weight(tts: Any, checkpoint: pathlib.Path) -> None:
    """voxcpm's loader gets exactly the model's keys: none missing, none unexpected."""
    from safetensors import safe_open

    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    with safe_open(checkpoint / "audiovae.safetensors", "pt") as f:
        saved |= {f"audio_vae.{key}" for key in f.keys()}  # noqa: SIM118 - not a dict
    assert saved == set(tts.tts_model.state_dict())


def test_output_rate_and_chunk_size_are_the_released_ones(tts: Any, arch: str) -> None:
    """The tiny model streams at the released model's sample rate and chunk size."""
    rate, chunk = RELEASED[arch]
    gen = tts.generate_streaming("Hello.", retry_badcase=False)
    try:
        first = next(gen)
    finally:
        gen.close()
    assert tts.tts_model.sample_rate == rate
    assert first.shape == (chunk,)
    assert first.dtype == np.float32


def test_never_policy_streams_the_predicted_number_of_chunks(
    tts: Any, checkpoint: pathlib.Path, arch: str
) -> None:
    """With stop="never" a stream has exactly expected_chunks() full-size chunks."""
    text = "Hello  world,\n你好。"
    chunks = _stream(tts, text)
    assert len(chunks) == expected_chunks(checkpoint, text)
    assert {c.shape for c in chunks} == {(RELEASED[arch][1],)}
    assert all(np.isfinite(c).all() for c in chunks)


def test_max_len_caps_the_never_policy(tts: Any, checkpoint: pathlib.Path) -> None:
    """expected_chunks() honours max_len the way voxcpm does."""
    text = "Hello world, this is the voice."
    assert expected_chunks(checkpoint, text, max_len=7) == 7
    assert len(_stream(tts, text, max_len=7)) == 7


def test_always_policy_stops_after_min_len_plus_two_chunks(tts_always: Any) -> None:
    """With stop="always" voxcpm's `i > min_len` check ends a stream at min_len + 2 chunks."""
    assert len(_stream(tts_always, "Hello world, this is the voice.", min_len=3)) == 5


def test_same_seed_gives_identical_audio(tts: Any) -> None:
    """Two generations after the same torch.manual_seed are bit-identical."""
    torch.manual_seed(1234)
    first = np.concatenate(_stream(tts, "Hello world.", max_len=6))
    torch.manual_seed(1234)
    second = np.concatenate(_stream(tts, "Hello world.", max_len=6))
    assert np.array_equal(first, second)


@pytest.mark.parametrize("arch", ["voxcpm"], indirect=True)
def test_voxcpm1_prompt_audio_goes_through_torchaudio(tts: Any, tmp_path: pathlib.Path) -> None:
    """VoxCPM 1.x prompt continuation (torchaudio.load + resample) works end to end."""
    wav = tmp_path / "prompt.wav"
    t = np.arange(int(0.3 * 22050)) / 22050
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    chunks = _stream(tts, "Hello.", prompt_wav_path=str(wav), prompt_text="Hi.", max_len=4)
    assert len(chunks) == 4
    assert {c.shape for c in chunks} == {(RELEASED["voxcpm"][1],)}


# ---------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------


def test_build_is_byte_for_byte_deterministic(
    checkpoint: pathlib.Path, arch: str, tmp_path: pathlib.Path
) -> None:
    """Building again with the same arguments writes identical files."""
    again = build_checkpoint(tmp_path / "again", arch=arch)
    assert _files(again) == _files(checkpoint)


def test_seed_changes_the_weights(
    checkpoint: pathlib.Path, arch: str, tmp_path: pathlib.Path
) -> None:
    """A different seed gives different weights (and the same tokenizer)."""
    other = build_checkpoint(tmp_path / "other", arch=arch, seed=1)
    assert (other / "model.safetensors").read_bytes() != (
        checkpoint / "model.safetensors"
    ).read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (checkpoint / "tokenizer.json").read_bytes()


def test_config_records_how_it_was_built(checkpoint: pathlib.Path, arch: str) -> None:
    """config.json carries the builder record that voxcpm's config model ignores."""
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    record = config[CONFIG_KEY]
    assert record["arch"] == config["architecture"] == arch
    assert (record["size"], record["stop"], record["seed"]) == ("tiny", "never", 0)
    assert isinstance(record["builder_version"], int)


def test_tokenizer_encodes_any_text_without_touching_audio_ids(checkpoint: pathlib.Path) -> None:
    """The tokenizer byte-falls back on unseen text and never emits ids 101-104 for it."""
    from transformers import LlamaTokenizerFast

    tokenizer = LlamaTokenizerFast.from_pretrained(str(checkpoint))
    text = "Zebra 你好，世界！Ünïcödé 🎉 ∑"
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
    assert tokenizer.unk_token_id not in ids
    assert not {101, 102, 103, 104} & set(ids)
    assert tokenizer.decode(ids) == text
    vocab_size = json.loads((checkpoint / "config.json").read_text())["lm_config"]["vocab_size"]
    assert 104 < len(tokenizer) <= vocab_size


def test_refuses_to_overwrite_a_non_empty_directory(tmp_path: pathlib.Path) -> None:
    """Without force, a non-empty target is an error and is left untouched."""
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        build_checkpoint(target, arch="voxcpm")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_force_replaces_a_checkpoint_atomically(tmp_path: pathlib.Path) -> None:
    """force=True swaps in the new checkpoint and leaves no staging directories behind."""
    target = build_checkpoint(tmp_path / "ckpt", arch="voxcpm")
    build_checkpoint(target, arch="voxcpm", stop="always", force=True)
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    assert config[CONFIG_KEY]["stop"] == "always"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_force_does_not_replace_a_directory_that_is_not_a_checkpoint(
    tmp_path: pathlib.Path,
) -> None:
    """force=True still refuses a non-empty directory without config.json."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"no config\.json"):
        build_checkpoint(tmp_path, arch="voxcpm", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("full_arch", "low", "high"),
    [("voxcpm2", 1.9e9, 2.6e9), ("voxcpm", 0.5e9, 0.8e9)],
)
def test_full_size_parameter_count_on_meta_device(full_arch: str, low: float, high: float) -> None:
    """The full-size config has the released model's parameter count (no weights allocated)."""
    assert low < parameter_count(full_config(full_arch)) < high


# ---------------------------------------------------------------------------
# torchaudio stand-in
# ---------------------------------------------------------------------------


@pytest.fixture
def standin() -> types.ModuleType:
    return build_torchaudio_standin()


def test_standin_load_returns_channels_first_float32(
    standin: types.ModuleType, tmp_path: pathlib.Path
) -> None:
    """load() gives float32 [channels, frames] in [-1, 1] and the file's sample rate."""
    pcm = np.array([[0, 16384], [-32768, 8192], [32767, 0]], dtype=np.int16)  # 3 frames, 2 ch
    soundfile.write(tmp_path / "a.wav", pcm, 22050, subtype="PCM_16")
    waveform, rate = standin.load(tmp_path / "a.wav")
    assert rate == 22050
    assert waveform.dtype == torch.float32
    assert waveform.shape == (2, 3)
    assert torch.equal(waveform, torch.from_numpy(pcm.T.astype(np.float32) / 32768))


def test_standin_resample_keeps_a_tone_at_its_frequency(standin: types.ModuleType) -> None:
    """functional.resample changes the rate along the last axis and keeps the pitch."""
    t = torch.arange(16000, dtype=torch.float64) / 16000
    waveform = (0.5 * torch.sin(2 * math.pi * 440 * t)).to(torch.float32).unsqueeze(0)
    out = standin.functional.resample(waveform, 16000, 48000)
    assert out.shape == (1, 48000)
    assert out.dtype == torch.float32
    spectrum = np.abs(np.fft.rfft(out[0].numpy()))
    assert np.argmax(spectrum) == 440  # 1 s of audio: bin index == Hz
    assert standin.functional.resample(waveform, 16000, 16000) is waveform


def test_standin_loudness_and_gain_follow_bs1770(standin: types.ModuleType) -> None:
    """A half-scale 997 Hz sine measures -9.03 LKFS; gain() moves it by the given dB."""
    t = torch.arange(3 * 48000, dtype=torch.float64) / 48000
    waveform = (0.5 * torch.sin(2 * math.pi * 997 * t)).unsqueeze(0)
    loudness = standin.functional.loudness(waveform, 48000)
    assert float(loudness) == pytest.approx(-3.01 - 6.02, abs=0.05)
    quieter = standin.functional.gain(waveform, -20 - loudness)
    assert float(standin.functional.loudness(quieter, 48000)) == pytest.approx(-20, abs=0.05)


def test_standin_save_round_trips_through_load(
    standin: types.ModuleType, tmp_path: pathlib.Path
) -> None:
    """save() writes a float WAV that load() reads back unchanged."""
    waveform = torch.linspace(-0.5, 0.5, 64).reshape(2, 32)
    standin.save(tmp_path / "b.wav", waveform, 8000)
    loaded, rate = standin.load(tmp_path / "b.wav")
    assert rate == 8000
    assert torch.equal(loaded, waveform)


def test_import_voxcpm_is_idempotent_and_findable() -> None:
    """Repeated calls return the same package, and find_spec("torchaudio") does not raise."""
    first = import_voxcpm()
    torchaudio = sys.modules["torchaudio"]
    assert import_voxcpm() is first
    assert sys.modules["torchaudio"] is torchaudio
    assert importlib.util.find_spec("torchaudio") is not None  # transformers' check


class _BrokenTorchaudio:
    """Meta-path finder that fails like a CUDA torchaudio wheel on a CPU-only torch."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torchaudio":
            sys.modules["torchaudio._extension"] = types.ModuleType("torchaudio._extension")
            raise OSError("libc10_cuda.so: cannot open shared object file")


def test_broken_torchaudio_is_replaced_by_the_standin(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torchaudio that fails to import is purged and the stand-in installed."""
    import_voxcpm()
    # monkeypatch restores every torchaudio entry (real or stand-in) afterwards.
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchaudio(), *sys.meta_path])
    import_voxcpm()
    assert torchaudio_is_standin()
    assert sys.modules["torchaudio.functional"] is sys.modules["torchaudio"].functional
    assert "torchaudio._extension" not in sys.modules
