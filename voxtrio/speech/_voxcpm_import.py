"""Import voxcpm where torchaudio cannot be imported.

``voxcpm/model/voxcpm.py`` imports torchaudio at module level, but the registry's
Linux torchaudio wheels are CUDA builds that fail to load next to a CPU-only
torch (and a lean install has no torchaudio at all). When the real package does
not import, :func:`import_voxcpm` installs a small stand-in that implements every
torchaudio call voxcpm 2.0.3 makes:

- ``torchaudio.load`` and ``torchaudio.functional.resample``: VoxCPM 1.x prompt
  audio (``model/voxcpm.py``);
- ``torchaudio.save``, ``torchaudio.functional.loudness`` and
  ``torchaudio.functional.gain``: the ZipEnhancer denoiser (``zipenhancer.py``).

I/O goes through soundfile and resampling through librosa (soxr backend). With the
stand-in installed, transformers' ``is_torchaudio_available()`` reports True.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import math
import os
import sys
import threading
import types
import warnings
from typing import Any

import numpy as np
import torch

__all__ = [
    "STANDIN_VERSION",
    "build_torchaudio_standin",
    "import_voxcpm",
    "torchaudio_is_standin",
]

#: ``__version__`` of the stand-in module (also how it is recognised).
STANDIN_VERSION = "0.0.0+voxtrio.standin"

_lock = threading.Lock()


def import_voxcpm() -> types.ModuleType:
    """Return the imported ``voxcpm`` package, installing a torchaudio stand-in if needed."""
    with _lock:
        _ensure_torchaudio()
        if "voxcpm" in sys.modules:
            return sys.modules["voxcpm"]
        # voxcpm decorates its VAE's snake activation with @torch.jit.script, which
        # recent torch (2.13 here) reports as a DeprecationWarning on import: an error
        # under a strict `filterwarnings = error`. Silence that one message only.
        # catch_warnings is process-wide, so this stays under the lock and only
        # around the first import.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
            )
            return importlib.import_module("voxcpm")


def torchaudio_is_standin() -> bool:
    """Whether ``sys.modules["torchaudio"]`` is this module's stand-in."""
    module = sys.modules.get("torchaudio")
    return module is not None and getattr(module, "__version__", None) == STANDIN_VERSION


def _ensure_torchaudio() -> None:
    # A None entry is an import blocker (absent torchaudio), not a module.
    if sys.modules.get("torchaudio") is not None:
        return
    try:
        import torchaudio  # noqa: F401
    except Exception:
        # A CUDA wheel can fail half-way (OSError from a missing libc10_cuda.so);
        # drop whatever submodules it left so nothing sees a half-initialised package.
        for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
            del sys.modules[name]
        _install_standin()


def build_torchaudio_standin() -> types.ModuleType:
    """A new stand-in ``torchaudio`` package (with ``.functional``), not installed anywhere."""
    package = _new_module("torchaudio", is_package=True)
    functional = _new_module("torchaudio.functional", is_package=False)

    # vars(): types.ModuleType declares none of these attributes for type checkers.
    vars(package).update(__version__=STANDIN_VERSION, load=_load, save=_save, functional=functional)
    vars(functional).update(
        resample=_resample,
        gain=_gain,
        loudness=_loudness,
        treble_biquad=_treble_biquad,
        highpass_biquad=_highpass_biquad,
    )
    return package


def _install_standin() -> None:
    package = build_torchaudio_standin()
    # Submodule first: a reader that sees the package must also find its submodule.
    sys.modules["torchaudio.functional"] = vars(package)["functional"]
    sys.modules["torchaudio"] = package


def _new_module(name: str, *, is_package: bool) -> types.ModuleType:
    module = types.ModuleType(
        name, "voxtrio stand-in for torchaudio (voxtrio.speech._voxcpm_import)"
    )
    # transformers' availability check calls importlib.util.find_spec, which raises
    # ValueError for a module in sys.modules whose __spec__ is None.
    spec = importlib.machinery.ModuleSpec(
        name, None, origin="voxtrio-standin", is_package=is_package
    )
    module.__spec__ = spec
    module.__loader__ = None
    if is_package:
        module.__path__ = []
        spec.submodule_search_locations = []
    module.__package__ = name if is_package else name.rpartition(".")[0]
    return module


# ---------------------------------------------------------------------------
# torchaudio.load / torchaudio.save
# ---------------------------------------------------------------------------


def _load(
    uri: str | os.PathLike[str] | Any,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: str | None = None,
    buffer_size: int = 4096,
    backend: str | None = None,
) -> tuple[torch.Tensor, int]:
    """``torchaudio.load``: float32 ``[channels, frames]`` in [-1, 1] and the sample rate."""
    import soundfile

    del buffer_size, backend  # accepted for signature compatibility only
    if not normalize:
        raise NotImplementedError("the torchaudio stand-in only supports normalize=True")
    data, sample_rate = soundfile.read(
        uri,
        start=frame_offset,
        frames=num_frames,
        dtype="float32",
        always_2d=True,
        format=format,
    )
    waveform = torch.from_numpy(np.ascontiguousarray(data.T if channels_first else data))
    return waveform, int(sample_rate)


def _save(
    uri: str | os.PathLike[str] | Any,
    src: torch.Tensor,
    sample_rate: int,
    channels_first: bool = True,
    format: str | None = None,
    encoding: str | None = None,
    bits_per_sample: int | None = None,
    buffer_size: int = 4096,
    backend: str | None = None,
    compression: Any = None,
) -> None:
    """``torchaudio.save`` of a 1-D or 2-D tensor (a float WAV stays 32-bit float, as there)."""
    import soundfile

    del encoding, buffer_size, backend, compression
    array = src.detach().cpu().numpy()
    if array.ndim == 1:
        array = array[:, None]
    elif channels_first:
        array = array.T
    subtype = None
    path_like = isinstance(uri, str | os.PathLike)
    is_wav = (format or "").lower() == "wav" or (
        path_like and os.fspath(uri).lower().endswith(".wav")
    )
    if is_wav and bits_per_sample is None and np.issubdtype(array.dtype, np.floating):
        subtype = "FLOAT"
    elif is_wav and bits_per_sample is not None:
        subtype = {8: "PCM_U8", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}[bits_per_sample]
    soundfile.write(uri, array, int(sample_rate), subtype=subtype, format=format)


# ---------------------------------------------------------------------------
# torchaudio.functional
# ---------------------------------------------------------------------------


def _resample(
    waveform: torch.Tensor,
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    resampling_method: str = "sinc_interp_hann",
    beta: float | None = None,
) -> torch.Tensor:
    """``torchaudio.functional.resample`` along the last axis, via soxr (high quality)."""
    import librosa

    del lowpass_filter_width, rolloff, resampling_method, beta  # torchaudio's sinc knobs
    if int(orig_freq) == int(new_freq):
        return waveform
    array = waveform.detach().cpu().numpy()
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"resample expects a floating-point waveform, got {waveform.dtype}")
    out = librosa.resample(
        array, orig_sr=int(orig_freq), target_sr=int(new_freq), res_type="soxr_hq", axis=-1
    )
    return torch.from_numpy(np.ascontiguousarray(out)).to(
        device=waveform.device, dtype=waveform.dtype
    )


def _gain(waveform: torch.Tensor, gain_db: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``torchaudio.functional.gain``: scale by ``gain_db`` decibels."""
    if isinstance(gain_db, torch.Tensor):
        return waveform * torch.pow(10.0, gain_db / 20.0).to(waveform.dtype)
    if gain_db == 0:
        return waveform
    return waveform * math.pow(10.0, gain_db / 20.0)


def _biquad(
    waveform: torch.Tensor, b: tuple[float, float, float], a: tuple[float, float, float]
) -> torch.Tensor:
    from scipy.signal import lfilter

    array = waveform.detach().cpu().to(torch.float64).numpy()
    out = lfilter(np.asarray(b) / a[0], np.asarray(a) / a[0], array, axis=-1)
    # torchaudio's biquad goes through lfilter(..., clamp=True): output clipped to [-1, 1].
    out = np.clip(out, -1.0, 1.0)
    return torch.from_numpy(out).to(device=waveform.device, dtype=waveform.dtype)


def _treble_biquad(
    waveform: torch.Tensor,
    sample_rate: int,
    gain: float,
    central_freq: float = 3000,
    Q: float = 0.707,
) -> torch.Tensor:
    """``torchaudio.functional.treble_biquad`` (RBJ cookbook high shelf)."""
    w0 = 2 * math.pi * central_freq / sample_rate
    alpha = math.sin(w0) / 2 / Q
    amp = math.exp(gain / 40 * math.log(10))
    temp1 = 2 * math.sqrt(amp) * alpha
    temp2 = (amp - 1) * math.cos(w0)
    temp3 = (amp + 1) * math.cos(w0)
    b = (
        amp * ((amp + 1) + temp2 + temp1),
        -2 * amp * ((amp - 1) + temp3),
        amp * ((amp + 1) + temp2 - temp1),
    )
    a = ((amp + 1) - temp2 + temp1, 2 * ((amp - 1) - temp3), (amp + 1) - temp2 - temp1)
    return _biquad(waveform, b, a)


def _highpass_biquad(
    waveform: torch.Tensor,
    sample_rate: int,
    cutoff_freq: float,
    Q: float = 0.707,
) -> torch.Tensor:
    """``torchaudio.functional.highpass_biquad`` (RBJ cookbook high-pass)."""
    w0 = 2 * math.pi * cutoff_freq / sample_rate
    alpha = math.sin(w0) / 2.0 / Q
    b0 = (1 + math.cos(w0)) / 2
    b = (b0, -1 - math.cos(w0), b0)
    a = (1 + alpha, -2 * math.cos(w0), 1 - alpha)
    return _biquad(waveform, b, a)


def _loudness(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """``torchaudio.functional.loudness``: ITU-R BS.1770-4 integrated loudness (LKFS).

    ``waveform`` is ``(..., channels, time)``; the algorithm mirrors torchaudio's.
    """
    if waveform.size(-2) > 5:
        raise ValueError("Only up to 5 channels are supported.")
    gate_duration = 0.4
    overlap = 0.75
    gamma_abs = -70.0
    kweight_bias = -0.691
    gate_samples = round(gate_duration * sample_rate)
    step = round(gate_samples * (1 - overlap))

    # K-weighting: a high-shelf "head" filter then the RLB high-pass.
    waveform = _treble_biquad(waveform, sample_rate, 4.0, 1500.0, 1 / math.sqrt(2))
    waveform = _highpass_biquad(waveform, sample_rate, 38.0, 0.5)

    energy = torch.square(waveform).unfold(-1, gate_samples, step).mean(dim=-1)
    g = torch.tensor([1.0, 1.0, 1.0, 1.41, 1.41], dtype=waveform.dtype, device=waveform.device)
    g = g[: energy.size(-2)]
    energy_weighted = torch.sum(g.unsqueeze(-1) * energy, dim=-2)
    block_loudness = kweight_bias + 10 * torch.log10(energy_weighted)

    gated = (block_loudness > gamma_abs).unsqueeze(-2)
    energy_filtered = torch.sum(gated * energy, dim=-1) / torch.count_nonzero(gated, dim=-1)
    energy_weighted = torch.sum(g * energy_filtered, dim=-1)
    gamma_rel = kweight_bias + 10 * torch.log10(energy_weighted) - 10

    gated = torch.logical_and(gated.squeeze(-2), block_loudness > gamma_rel.unsqueeze(-1))
    gated = gated.unsqueeze(-2)
    energy_filtered = torch.sum(gated * energy, dim=-1) / torch.count_nonzero(gated, dim=-1)
    energy_weighted = torch.sum(g * energy_filtered, dim=-1)
    return kweight_bias + 10 * torch.log10(energy_weighted)
