"""Why the speech layer refused or failed a generation, as types.

The speech layer knows nothing of wire protocols: each endpoint translates these
into its own error codes in one place (`server/_native_errors.py` for the native
protocol, `server/_dashscope.py` for DashScope). The message is the text a client
is shown.
"""

from __future__ import annotations

from typing import Literal


class SpeechError(Exception):
    """A generation that was refused or did not produce its audio."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EngineUnavailable(SpeechError):
    """The model is not loaded (yet, or any more)."""


class Overloaded(SpeechError):
    """Admission refused: the pool already holds its limit of admitted generations."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the server is at its limit of {limit} concurrent requests")
        self.limit = limit


class QueueTimeout(SpeechError):
    """Admitted, but no generation slot became free within the queue deadline."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no generation slot became free within {timeout:g} s")
        self.timeout = timeout


class GenerationFailed(SpeechError):
    """The engine raised while generating."""


class NonFiniteOutput(GenerationFailed):
    """The model produced NaN/inf audio; none of it was sent."""

    def __init__(self) -> None:
        super().__init__("the model produced invalid (non-finite) audio; nothing of it was sent")


class StoppedEarly(GenerationFailed):
    """The generation was stopped (not by this request) before it finished."""

    def __init__(self) -> None:
        super().__init__("generation stopped before it finished")


class InvalidText(SpeechError):
    """The text does not fit the model (too many tokens after normalisation)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"text {reason}")
        self.reason = reason


OutputSetting = Literal["format", "sample_rate", "bit_rate", "volume", "speed", "pitch"]


class InvalidOutput(SpeechError):
    """The requested output format cannot be produced (rate, bit rate, ...)."""

    def __init__(self, setting: OutputSetting, reason: str) -> None:
        super().__init__(f"invalid audio output: {reason}")
        self.setting: OutputSetting = setting
        self.reason = reason
