"""A DashScope task's audio output: one stream per task, all its sentences in it."""

from __future__ import annotations

from voxtrio.audio._codecs import AudioEncoder
from voxtrio.protocol._dashscope import TaskParams
from voxtrio.speech._output import OutputSpec


def output_for(params: TaskParams) -> OutputSpec:
    """What `speak` produces for a task's validated parameters."""
    return OutputSpec(
        format=params.format,
        sample_rate=params.sample_rate,
        bit_rate=params.bit_rate,
        volume=params.gain,
        rate=params.rate,
        pitch=params.pitch,
    )


def make_encoder(params: TaskParams, *, input_rate: int) -> AudioEncoder:
    """The AudioEncoder `speak` opens for a task (format, rate, bit rate, volume)."""
    output = output_for(params)
    return AudioEncoder(
        output.format,
        input_rate=input_rate,
        output_rate=output.sample_rate,
        bit_rate=output.bit_rate,
        volume=output.volume,
    )
