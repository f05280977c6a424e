"""A registered voice, and the refusals that name one."""

from __future__ import annotations

import attrs

from voxtrio.protocol._voice_rules import VoiceError, VoiceMode


class VoiceNotFound(VoiceError):
    """No voice has that id."""


class VoiceExists(VoiceError):
    """A voice with that id exists and `replace` was not asked for."""


@attrs.frozen(kw_only=True)
class Voice:
    """One registered voice (what `list` shows and what meta.json stores)."""

    voice_id: str
    mode: VoiceMode
    prompt_text: str | None
    duration: float
    sample_rate: int
    sha256: str
    created_at: str
    persisted: bool
