"""OutputStream (voxtrio.speech._output): speed through the encoder pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from voxtrio.audio._codecs import AudioEncoder
from voxtrio.speech._errors import InvalidOutput
from voxtrio.speech._output import OutputSpec, OutputStream

SR = 48000


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


async def test_speed_shortens_each_utterance_exactly() -> None:
    """Chunks through transform, then end_utterance: round(samples / speed) per utterance."""
    stream = OutputStream(OutputSpec(rate=2.0), input_rate=SR)
    x = tone(1.0)
    for _ in range(2):  # the stretcher is ready again after each utterance
        before = stream.samples_out
        data = b"".join(stream.transform(x[i : i + 7680]).data for i in range(0, x.size, 7680))
        data += await stream.end_utterance()
        assert len(data) // 2 == stream.samples_out - before == SR // 2
    assert stream.output_seconds(1.0) == 0.5
    await stream.finish()


async def test_no_speed_means_no_stretcher() -> None:
    """speed 1.0 passes the model's samples straight to the encoder."""
    stream = OutputStream(OutputSpec(), input_rate=SR)
    x = tone(0.5)
    assert stream.transform(x).data == AudioEncoder("pcm16", input_rate=SR).encode(x)
    assert await stream.end_utterance() == b""
    assert stream.output_seconds(1.25) == 1.25
    stream.close()


@pytest.mark.parametrize("speed", [0.1, 5.0])
def test_speed_out_of_range_is_invalid_output(speed: float) -> None:
    """A speed the stretcher cannot do is InvalidOutput naming `speed` (before any codec)."""
    with pytest.raises(InvalidOutput) as caught:
        OutputStream(OutputSpec(format="mp3", rate=speed), input_rate=SR)
    assert caught.value.setting == "speed"


@pytest.mark.parametrize(
    ("spec", "batchable"),
    [
        (OutputSpec(), True),
        (OutputSpec(format="wav"), True),
        (OutputSpec(format="mp3"), False),
        (OutputSpec(sample_rate=16000), False),
        (OutputSpec(rate=2.0), False),
    ],
    ids=["pcm16", "wav", "mp3", "resampled", "speed"],
)
def test_only_plain_pcm_at_the_models_rate_is_encoded_with_other_rows(
    spec: OutputSpec, batchable: bool
) -> None:
    """pcm16/WAV at the input rate, no speed: the step loop may encode it in a batch."""
    stream = OutputStream(spec, input_rate=SR)
    assert stream.batchable is batchable
    stream.close()
