"""Native-protocol messages of the voice library, and the checks of voice parameters.

Client -> server: voice_register, voice_list, voice_delete. Server -> client:
voice_registered, voices, voice_deleted. A :data:`VoiceId` field is checked (safe
name, not reserved) by the converter while the message is structured, so its error
is reported with every other bad field at once. Base64 audio is size-checked before
it is decoded, against the server's configured cap. Decoding the audio itself and
fetching prompt URLs are I/O: they live in :mod:`voxtrio.voices`.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final, Literal

import attrs

from voxtrio.protocol._converter import field_length
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._limits import (
    MAX_AUDIO_BASE64_CHARS,
    MAX_PROMPT_BYTES,
    MAX_PROMPT_TEXT_CHARS,
    MAX_REQUEST_ID_CHARS,
    max_base64_chars,
)
from voxtrio.protocol._voice_rules import (
    VoiceError,
    VoiceId,
    VoiceMode,
    description_problem,
    resolve_mode,
    supported_modes,
)

_DATA_URL = re.compile(r"data:audio/[A-Za-z0-9.+-]+;base64,")


# ---------------------------------------------------------------- client -> server


@attrs.frozen(kw_only=True)
class VoiceRegister:
    """Add a voice from base64 audio (WAV, FLAC, MP3 or Ogg)."""

    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))
    voice_id: VoiceId
    audio: str = attrs.field(metadata=field_length(1, MAX_AUDIO_BASE64_CHARS))
    persist: bool
    prompt_text: str | None = attrs.field(
        default=None, metadata=field_length(1, MAX_PROMPT_TEXT_CHARS)
    )
    mode: VoiceMode | None = None
    replace: bool = False


@attrs.frozen
class VoiceList:
    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))


@attrs.frozen
class VoiceDelete:
    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))
    voice_id: VoiceId


VoiceClientMessage = VoiceRegister | VoiceList | VoiceDelete
VOICE_CLIENT_MESSAGE_TYPES: Final[dict[str, type[VoiceClientMessage]]] = {
    "voice_register": VoiceRegister,
    "voice_list": VoiceList,
    "voice_delete": VoiceDelete,
}

# ---------------------------------------------------------------- server -> client


@attrs.frozen
class VoiceRegistered:
    request_id: str
    voice_id: str
    duration: float
    sample_rate: int
    type: Literal["voice_registered"] = "voice_registered"


@attrs.frozen
class VoiceSummary:
    voice_id: str
    mode: VoiceMode
    duration: float
    persisted: bool


@attrs.frozen
class Voices:
    request_id: str
    voices: list[VoiceSummary]
    type: Literal["voices"] = "voices"


@attrs.frozen
class VoiceDeleted:
    request_id: str
    voice_id: str
    type: Literal["voice_deleted"] = "voice_deleted"


VoiceServerMessage = VoiceRegistered | Voices | VoiceDeleted


# ---------------------------------------------------------------- checks


def invalid(field: str, message: str, *, request_id: str | None) -> ProtocolError:
    """INVALID_PARAMS about one field."""
    return ProtocolError(
        ErrorCode.INVALID_PARAMS,
        f"{field}: {message}",
        details={field: message},
        request_id=request_id,
    )


def decode_audio(message: VoiceRegister, *, max_bytes: int = MAX_PROMPT_BYTES) -> bytes:
    """The audio bytes of a voice_register; the size is checked before decoding."""
    text = message.audio
    if (data_url := _DATA_URL.match(text)) is not None:
        text = text[data_url.end() :]  # what a browser's FileReader.readAsDataURL gives
    if len(text) > max_base64_chars(max_bytes):
        raise invalid(
            "audio",
            f"too large: about {len(text) * 3 // 4} bytes, at most {max_bytes}",
            request_id=message.request_id,
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(
            "audio", "not valid base64 (standard alphabet, padded)", request_id=message.request_id
        ) from None


def check_voice_params(
    *,
    voice_id: str | None,
    prompt_wav_url: str | None,
    prompt_text: str | None,
    voice_description: str | None,
    architecture: str,
    url_prompts_enabled: bool,
    request_id: str | None,
    prefix: str = "params.",
) -> VoiceMode | None:
    """Check the voice fields of a synthesis request; return the mode a URL prompt uses.

    Every problem is reported at once, as INVALID_PARAMS with one detail per field.
    """
    errors: dict[str, str] = {}
    mode: VoiceMode | None = None
    if voice_id is not None and prompt_wav_url is not None:
        errors[f"{prefix}voice_id"] = "use either voice_id or prompt_wav_url, not both"
    if prompt_text is not None and prompt_wav_url is None:
        errors[f"{prefix}prompt_text"] = (
            "only with prompt_wav_url (a registered voice has its own transcript)"
        )
    if prompt_wav_url is not None:
        if not url_prompts_enabled:
            errors[f"{prefix}prompt_wav_url"] = "fetching prompt audio is disabled on this server"
        else:
            try:
                mode = resolve_mode(None, prompt_text, supported_modes(architecture))
            except VoiceError as exc:
                errors[f"{prefix}{exc.field}"] = exc.message
    if voice_description is not None:
        problem = description_problem(voice_description, architecture)
        if problem is not None:
            errors[f"{prefix}voice_description"] = problem
    if errors:
        summary = "; ".join(f"{field}: {problem}" for field, problem in sorted(errors.items()))
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            summary,
            details=dict(sorted(errors.items())),
            request_id=request_id,
        )
    return mode
