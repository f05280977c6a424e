"""OpenAI's built-in voice names, and how a `voice` becomes a voxtrio voice.

A client's default (`alloy`, ...) must work, so every built-in name is accepted.
It speaks with the voice library's voice of that name when the operator has
registered one, and otherwise with the model's default voice. Any other name must
be a voice in the library.
"""

from __future__ import annotations

from typing import Final

from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.voices._service import VoiceService

# The union of the openai SDK's speech `voice` literal (2.x) and Pipecat 1.14's
# `OpenAITTSService` VALID_VOICES: a framework refuses locally any name not in its
# list, and a name in its list that this server refused would leave an agent silent.
OPENAI_VOICES: Final = (
    "alloy",
    "ash",
    "ballad",
    "cedar",
    "coral",
    "echo",
    "fable",
    "marin",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)


def library_voices(voices: VoiceService | None) -> list[str]:
    return sorted(voice.voice_id for voice in voices.store.list()) if voices is not None else []


def resolve_voice(voice: str, voices: VoiceService | None) -> str | None:
    """The voice-library id to speak with, or None for the model's default voice."""
    if voices is not None and voice in voices.store:
        return voice
    if voice.lower() in OPENAI_VOICES:
        return None
    raise ProtocolError(
        ErrorCode.INVALID_PARAMS,
        f"voice: no voice named {voice[:64]!r}; use one of GET /v1/audio/voices",
        details={"voice": "unknown voice"},
    )
