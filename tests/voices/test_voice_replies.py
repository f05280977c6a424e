"""The voice service's replies: the voice_* server messages and errors as they go out."""

from __future__ import annotations

import json
from typing import Any

from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._messages import dump_message
from voxtrio.protocol._voice_messages import VoiceDeleted
from voxtrio.protocol._voice_rules import VoiceError
from voxtrio.voices._fetch import FetchError
from voxtrio.voices._service import registered_message, voice_error, voices_message
from voxtrio.voices._voice import Voice


def voice(**overrides: Any) -> Voice:
    fields: dict[str, Any] = {
        "voice_id": "alice",
        "mode": "continuation",
        "prompt_text": "Hi.",
        "duration": 2.5,
        "sample_rate": 16000,
        "sha256": "0" * 64,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "persisted": True,
        **overrides,
    }
    return Voice(**fields)


def test_server_messages_serialise() -> None:
    """voice_registered, voices and voice_deleted have the documented JSON shape."""
    frames = [
        dump_message(registered_message("r1", voice())),  # type: ignore[arg-type]
        dump_message(voices_message("r2", [voice(), voice(voice_id="bob", persisted=False)])),  # type: ignore[arg-type]
        dump_message(VoiceDeleted("r3", "bob")),  # type: ignore[arg-type]
    ]
    assert [json.loads(f) for f in frames] == [
        {"request_id": "r1", "voice_id": "alice", "duration": 2.5, "sample_rate": 16000,
         "type": "voice_registered"},
        {"request_id": "r2", "type": "voices", "voices": [
            {"voice_id": "alice", "mode": "continuation", "duration": 2.5, "persisted": True},
            {"voice_id": "bob", "mode": "continuation", "duration": 2.5, "persisted": False},
        ]},
        {"request_id": "r3", "voice_id": "bob", "type": "voice_deleted"},
    ]  # fmt: skip


def test_voice_error_names_the_prefixed_field() -> None:
    """A store error becomes INVALID_PARAMS on the request's field path."""
    error = voice_error(
        VoiceError("voice_id", "no voice named 'x'"), request_id="r", prefix="params."
    )
    assert (error.code, error.details) == (
        ErrorCode.INVALID_PARAMS,
        {"params.voice_id": "no voice named 'x'"},
    )


def test_fetch_error_lands_on_prompt_wav_url() -> None:
    """A refused fetch is reported on params.prompt_wav_url."""
    error = voice_error(FetchError("HTTP 404 from example.com"), request_id="r")
    assert error.details == {"params.prompt_wav_url": "HTTP 404 from example.com"}
