"""The protocol's size limits."""

from __future__ import annotations

import base64

from voxtrio.protocol._limits import MAX_AUDIO_BASE64_CHARS, MAX_PROMPT_BYTES, max_base64_chars


def test_base64_limit_matches_encoded_length() -> None:
    """max_base64_chars is the exact padded length of the base64 of that many bytes."""
    for size in (0, 1, 2, 3, 4, 1000, 1001):
        assert max_base64_chars(size) == len(base64.b64encode(b"x" * size))


def test_voice_register_audio_ceiling_is_the_prompt_cap_in_base64() -> None:
    """voice_register.audio may carry exactly MAX_PROMPT_BYTES of audio, no more."""
    assert len(base64.b64encode(b"x" * MAX_PROMPT_BYTES)) == MAX_AUDIO_BASE64_CHARS
