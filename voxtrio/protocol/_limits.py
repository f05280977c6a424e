"""Size and count limits of the native protocol, each defined here once.

The voice library, the URL fetcher and the message classes all read them from here,
so a cap the wire promises and the cap the server enforces cannot drift apart.
"""

from __future__ import annotations

from typing import Final

MAX_REQUEST_ID_CHARS: Final = 128
MAX_TEXT_CHARS: Final = 5000
MAX_SEED: Final = 2**63 - 1
MAX_LEN_CAP: Final = 4096  # voxcpm's own default cap on LM steps

MAX_PROMPT_BYTES: Final = 10 * 1024 * 1024
"""Default cap on an encoded prompt: 30 s of 48 kHz stereo 24-bit WAV is 8.6 MB."""
MAX_PROMPT_TEXT_CHARS: Final = 1000
MAX_VOICE_DESCRIPTION_CHARS: Final = 500


def max_base64_chars(max_bytes: int) -> int:
    """Length of the padded base64 text of `max_bytes` bytes (checked before decoding)."""
    return 4 * ((max_bytes + 2) // 3)


MAX_AUDIO_BASE64_CHARS: Final = max_base64_chars(MAX_PROMPT_BYTES)
"""Hard ceiling on voice_register.audio; the configured cap (decode_audio) may be lower."""

SPEED_RANGE: Final = (0.25, 4.0)
"""`speed` (native, OpenAI): OpenAI's own range; the output is 1/speed as long."""
