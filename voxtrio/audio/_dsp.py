"""Streaming speed (`rate`) and pitch changes for the DashScope endpoint (optional).

Rubber Band's R2 engine in real-time mode, through the ``pylibrb`` bindings: the one
candidate that processes streamed chunks at good quality (measured: chunked output
equals whole-buffer output bit for bit, 40-90 ms algorithmic latency, 1-7 % of one
core at 48 kHz; duration within 0.5 % of 1/rate before the exact trim below, F0 moved
by the requested factor). Formants are preserved, so a pitch change does not turn the
voice into a chipmunk. ``pedalboard``'s PitchShift streams only silence in 0.9.26
(spotify/pedalboard#415, fix pending in #486) and holds back ~1 s; its
``time_stretch`` is offline only. docs/dashscope-notes.md has the numbers.

pylibrb and Rubber Band are GPL-2.0: this module imports pylibrb lazily and
:func:`dsp_available` reports whether it is installed, so voxtrio itself depends on
neither; the DashScope endpoint refuses rate/pitch other than 1.0 without it.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["FACTOR_RANGE", "StreamingStretch", "dsp_available"]

FACTOR_RANGE: Final = (0.5, 2.0)  # DashScope's documented range for rate and pitch
_BLOCK: Final = 4096  # samples per process() call: bounds Rubber Band's buffers


def dsp_available() -> bool:
    """Whether the optional Rubber Band bindings (pylibrb) are installed."""
    return importlib.util.find_spec("pylibrb") is not None


def _factor(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {value!r}")
    low, high = FACTOR_RANGE
    if not low <= value <= high:  # also refuses NaN
        raise ValueError(f"{name} must be between {low} and {high}, not {value!r}")
    return float(value)


class StreamingStretch:
    """Change speed by `rate` (2.0: twice as fast, half as long) and pitch by `pitch`.

    Feed one sentence's mono float chunks to :meth:`process`, which returns whatever
    output is ready (possibly nothing yet); :meth:`flush` returns the rest, exactly
    ``round(samples_in / rate)`` samples in all, and readies the object for the next
    sentence. Not thread-safe; one per task.
    """

    def __init__(self, rate: float, pitch: float, sample_rate: int) -> None:
        self.rate = _factor("rate", rate)
        self.pitch = _factor("pitch", pitch)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, not {sample_rate!r}")
        self.sample_rate = sample_rate
        try:
            import pylibrb
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "rate/pitch need the optional pylibrb package (Rubber Band, GPL-2.0)"
            ) from exc
        self._lib: Any = pylibrb
        self._stretcher: Any = None
        self._skip = 0  # start delay still to drop from the output
        self._in = 0  # input samples of the current sentence
        self._out = 0  # output samples returned for it

    def process(self, chunk: np.ndarray) -> npt.NDArray[np.float32]:
        """Stretch one chunk; return the output that is ready now."""
        x = np.asarray(chunk, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {x.shape}")
        stretcher = self._stretcher or self._start()
        out = []
        for i in range(0, x.size, _BLOCK):
            stretcher.process(np.ascontiguousarray(x[i : i + _BLOCK]).reshape(1, -1))
            out.append(self._retrieve())
        self._in += x.size
        return self._emit(out)

    def flush(self) -> npt.NDArray[np.float32]:
        """End the sentence: the remaining output, trimmed or padded to the exact length."""
        if self._stretcher is None:
            return np.zeros(0, np.float32)
        self._stretcher.process(np.zeros((1, 0), np.float32), final=True)
        out = [self._retrieve()]
        want = round(self._in / self.rate) - self._out
        tail = np.concatenate(out)
        # Rubber Band's real-time length is within ~0.5 % of in/rate; make it exact so
        # the sentence timeline adds up and no stray samples leak into the next one.
        tail = tail[: max(want, 0)] if tail.size >= want else np.pad(tail, (0, want - tail.size))
        self._stretcher, self._in, self._out = None, 0, 0
        return tail

    def _start(self) -> Any:
        lib = self._lib
        option = lib.Option
        options = (
            option.PROCESS_REALTIME
            | option.ENGINE_FASTER  # R2: streams cleanly; R3 drifted in length when chunked
            | option.FORMANT_PRESERVED
            | option.PitchHighQuality
        )
        stretcher = lib.RubberBandStretcher(
            self.sample_rate, 1, options, 1.0 / self.rate, self.pitch
        )
        stretcher.set_max_process_size(_BLOCK)
        stretcher.set_logging_level(0)
        # Real-time mode does no start compensation: pad the input with silence and drop
        # the start delay from the output, so output sample 0 lines up with input sample 0.
        pad = stretcher.get_preferred_start_pad()
        for i in range(0, pad, _BLOCK):
            stretcher.process(np.zeros((1, min(_BLOCK, pad - i)), np.float32))
        self._skip = stretcher.get_start_delay()
        self._stretcher = stretcher
        return stretcher

    def _retrieve(self) -> npt.NDArray[np.float32]:
        parts = []
        while (n := self._stretcher.available()) > 0:
            parts.append(self._stretcher.retrieve(n)[0])
        y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if self._skip:
            dropped = min(self._skip, y.size)
            y, self._skip = y[dropped:], self._skip - dropped
        return y.astype(np.float32, copy=False)

    def _emit(self, parts: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        self._out += y.size
        return y
