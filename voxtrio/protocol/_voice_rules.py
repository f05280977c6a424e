"""The rules for voice parameters: safe ids, cloning modes, voice descriptions.

Pure checks shared by the message converter (a voice id is checked while a message is
structured), the voice library (what it stores) and the synthesis path (VoxCPM2's
voice-design convention). A refusal is a :class:`VoiceError` naming the field at fault.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NewType, get_args

from voxtrio.protocol._limits import MAX_VOICE_DESCRIPTION_CHARS

VoiceId = NewType("VoiceId", str)
"""A str field holding a voice id: checked by the converter (see check_voice_id)."""

VoiceMode = Literal["reference", "continuation", "both"]
"""reference: VoxCPM2 isolated cloning; continuation: prompt wav + transcript;
both: VoxCPM2's combined mode (the audio as reference and as continuation prompt)."""

ALL_MODES: Final[frozenset[VoiceMode]] = frozenset(get_args(VoiceMode))
V1_MODES: Final[frozenset[VoiceMode]] = frozenset({"continuation"})

VOICE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_VOICE_IDS: Final = frozenset({"default", "none", "null"})


class VoiceError(ValueError):
    """A voice request refused; `field` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def supported_modes(architecture: str) -> frozenset[VoiceMode]:
    """Modes a model supports: all on VoxCPM2 ("voxcpm2"), continuation only on 1.x."""
    return ALL_MODES if architecture == "voxcpm2" else V1_MODES


def check_voice_id(voice_id: str, field: str = "voice_id") -> str:
    """Return `voice_id` if it is a safe name, else raise VoiceError naming `field`."""
    if not VOICE_ID_PATTERN.fullmatch(voice_id):
        raise VoiceError(
            field,
            "must be 1-64 characters: letters, digits, '_', '.', '-', starting with a letter "
            "or digit",
        )
    if ".." in voice_id:
        raise VoiceError(field, "must not contain '..'")
    if voice_id.lower() in RESERVED_VOICE_IDS:
        raise VoiceError(field, f"{voice_id!r} is reserved")
    return voice_id


def resolve_mode(
    mode: VoiceMode | None, prompt_text: str | None, allowed: frozenset[VoiceMode]
) -> VoiceMode:
    """The mode a voice gets: continuation when it has a transcript, else reference."""
    if mode is None:
        mode = "continuation" if prompt_text else "reference"
        if mode not in allowed:
            raise VoiceError("prompt_text", "required: VoxCPM 1.x clones by continuation only")
    if mode not in allowed:
        raise VoiceError("mode", f"{mode!r} needs a VoxCPM2 model; this model is VoxCPM 1.x")
    if mode != "reference" and not prompt_text:
        raise VoiceError("prompt_text", f"required for mode {mode!r} (the prompt's transcript)")
    return mode


def description_problem(description: str, architecture: str) -> str | None:
    """What is wrong with a voice_description for this model, or None."""
    if architecture != "voxcpm2":
        return "voice design needs a VoxCPM2 model; this model is VoxCPM 1.x"
    if not description.strip():
        return "must not be empty"
    if len(description) > MAX_VOICE_DESCRIPTION_CHARS:
        return f"too long: {len(description)} characters, at most {MAX_VOICE_DESCRIPTION_CHARS}"
    if "(" in description or ")" in description:
        # VoxCPM2 reads "(description)text": a parenthesis would end it early.
        return "must not contain parentheses"
    return None


def apply_voice_description(text: str, description: str | None) -> str:
    """VoxCPM2's voice design convention: "(description)text" (check_voice_params first)."""
    if description is None:
        return text
    return f"({' '.join(description.split())}){text}"
