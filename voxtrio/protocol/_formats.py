"""Output formats and rates: names only, so protocol code need not import the codecs."""

from __future__ import annotations

from typing import Final, Literal, get_args

AudioFormat = Literal["pcm16", "wav", "mp3", "opus", "flac"]
AUDIO_FORMATS: Final[tuple[AudioFormat, ...]] = get_args(AudioFormat)
# Output rates a client may ask for (OpenAI's and DashScope's sets together).
SUPPORTED_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000)
