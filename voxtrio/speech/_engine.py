"""The one small interface between the server and a speech engine.

An engine instance is used by one thread at a time (a VoxCPM model is not safe
for concurrent use); each model instance's step loop (`batched/_loop.py`) owns it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Protocol

import attrs
import numpy as np

from voxtrio.protocol._voice_rules import VoiceMode
from voxtrio.voices._audio import PromptAudio


@attrs.frozen(kw_only=True)
class SynthesisSpec:
    """Everything an engine needs for one generation, already validated."""

    text: str
    streaming: bool = True
    cfg_value: float = 2.0
    inference_timesteps: int = 10
    normalize: bool = False
    denoise: bool = False
    retry_badcase: bool = True
    retry_badcase_max_times: int = 3
    retry_badcase_ratio_threshold: float = 6.0
    seed: int = 0
    max_len: int = 4096
    # Voice cloning / design (VoxCPM engines; others ignore them).
    voice_id: str | None = None
    voice_description: str | None = None
    prompt_audio: PromptAudio | None = None  # fetched for this request (prompt_wav_url)
    prompt_text: str | None = None
    prompt_mode: VoiceMode | None = None


class TextTooLong(ValueError):
    """The text, tokenised after normalisation, is more than the model can take.

    Raised by `Engine.generate` before any audio: a client error (INVALID_PARAMS), not
    a failed generation. The message names the count and the limit.
    """


class GenerationStopped(Exception):
    """Raised inside an engine's step callback when the request was cancelled."""


StepCallback = Callable[[int], None]
"""Called by the engine after each LM step (chunk) with the step count so far.

It raises GenerationStopped when the request was cancelled, so the engine stops
at the next chunk boundary even in non-streaming mode."""


class Engine(Protocol):
    """A loaded model. All methods run on its instance's own thread."""

    @property
    def sample_rate(self) -> int: ...

    def max_steps(self, spec: SynthesisSpec) -> int:
        """Upper bound on LM steps (= chunks) this spec can produce: progress's denominator."""
        ...

    def generate(
        self, spec: SynthesisSpec, on_step: StepCallback
    ) -> Generator[np.ndarray, None, None]:
        """Yield mono float32 audio: one chunk per step when streaming, else one array.

        Raises TextTooLong before the first chunk when the text does not fit the model.

        The server closes the iterator when it stops early; an engine must free
        whatever a half-finished generation holds in `finally`.
        """
        ...

    def warm_up(self) -> None:
        """Run whatever makes the first real request fast (called once, after loading)."""
        ...

    def close(self) -> None: ...


EngineFactory = Callable[[], Engine]
"""Builds one engine; called on the instance thread that will own it."""
