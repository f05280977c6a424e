"""The audio encoder of a DashScope task: one per task, all its sentences in one stream."""

from __future__ import annotations

from voxtrio.audio._codecs import AudioEncoder
from voxtrio.protocol._dashscope import TaskParams


def make_encoder(params: TaskParams, *, input_rate: int) -> AudioEncoder:
    """The AudioEncoder for a task's validated parameters (format, rate, bit rate, volume)."""
    return AudioEncoder(
        params.format,
        input_rate=input_rate,
        output_rate=params.sample_rate,
        bit_rate=params.bit_rate,
        volume=params.gain,
    )
