"""Output formats, rates and bit rates: the facts protocol checks need, without the codecs."""

from __future__ import annotations

from typing import Final, Literal, get_args

AudioFormat = Literal["pcm16", "wav", "mp3", "opus", "flac", "ulaw_8000", "alaw_8000"]
AUDIO_FORMATS: Final[tuple[AudioFormat, ...]] = get_args(AudioFormat)
# Formats whose name fixes the rate: G.711 mu-law and A-law (telephony: Twilio Media
# Streams, SIP trunks) are 8 kHz only, named as ElevenLabs and Cartesia name them.
FIXED_RATE_FORMATS: Final[dict[str, int]] = {"ulaw_8000": 8000, "alaw_8000": 8000}
# The formats any SUPPORTED_RATES rate may be asked of.
ANY_RATE_FORMATS: Final[tuple[AudioFormat, ...]] = tuple(
    f for f in AUDIO_FORMATS if f not in FIXED_RATE_FORMATS
)
# Output rates a client may ask for (OpenAI's and DashScope's sets together).
SUPPORTED_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000)

# Accepted opus bit rates: DashScope's documented range (6-510 kbit/s, default 32, good
# mono wideband speech), so its requests pass through unchanged. libav's libopus wrapper
# refuses more than 256 kbit/s per channel, and Opus cannot use more on mono anyway, so
# the encoder caps higher requests (`AudioEncoder.bit_rate` reports the capped value).
OPUS_BIT_RATE_RANGE: Final = (6_000, 510_000)

# Legal CBR bit rates (bits/s) of an MPEG audio layer III frame header, per MPEG version.
# LAME tops MPEG-2.5 (8 kHz) out at 64 kbit/s, so its table stops there.
_MP3_BIT_RATES_MPEG1: Final = tuple(
    k * 1000 for k in (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
)
_MP3_BIT_RATES_MPEG2: Final = tuple(
    k * 1000 for k in (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
)
_MP3_BIT_RATES_MPEG25: Final = tuple(k * 1000 for k in (8, 16, 24, 32, 40, 48, 56, 64))


def mp3_bit_rates(sample_rate: int) -> tuple[int, ...]:
    """The MP3 bit rates (bits/s) allowed at `sample_rate`."""
    if sample_rate >= 32000:
        return _MP3_BIT_RATES_MPEG1
    if sample_rate >= 16000:
        return _MP3_BIT_RATES_MPEG2
    return _MP3_BIT_RATES_MPEG25
