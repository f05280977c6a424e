"""Voice library messages: strict parsing, field-specific errors, base64 caps, voice params."""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
import pytest

from voxtrio.protocol import _messages as _messages
from voxtrio.protocol._converter import structure_message
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._limits import MAX_AUDIO_BASE64_CHARS
from voxtrio.protocol._messages import parse_client_message
from voxtrio.protocol._voice_messages import (
    VOICE_CLIENT_MESSAGE_TYPES,
    VoiceDelete,
    VoiceId,
    VoiceList,
    VoiceRegister,
    check_voice_params,
    decode_audio,
)
from voxtrio.protocol._voice_rules import apply_voice_description

AUDIO = base64.b64encode(b"RIFF....WAVEfmt ").decode()


def register(**fields: Any) -> VoiceRegister:
    payload = {"request_id": "r1", "voice_id": "alice", "audio": AUDIO, "persist": True, **fields}
    message: VoiceRegister = structure_message(VoiceRegister, payload, request_id="r1")
    return message


def details(**fields: Any) -> dict[str, str]:
    with pytest.raises(ProtocolError) as info:
        register(**fields)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert info.value.request_id == "r1"
    return info.value.details


def test_register_defaults() -> None:
    """Only request_id, voice_id, audio and persist are required."""
    message = register()
    assert (message.prompt_text, message.mode, message.replace) == (None, None, False)


def test_persist_is_required() -> None:
    """persist must be stated: writing to disk is never implied."""
    payload = {"request_id": "r1", "voice_id": "alice", "audio": AUDIO}
    with pytest.raises(ProtocolError) as info:
        structure_message(VoiceRegister, payload, request_id="r1")
    assert info.value.details == {"persist": "is required"}


@pytest.mark.parametrize(
    ("voice_id", "problem"),
    [
        (
            "../etc",
            "must be 1-64 characters: letters, digits, '_', '.', '-', starting with a "
            "letter or digit",
        ),
        ("a..b", "must not contain '..'"),
        ("default", "'default' is reserved"),
        (7, "must be a string"),
    ],
)
def test_bad_voice_id_is_a_field_error(voice_id: Any, problem: str) -> None:
    """A path-like, '..', reserved or non-string voice_id is reported on voice_id."""
    assert details(voice_id=voice_id) == {"voice_id": problem}


def test_every_bad_field_is_reported_at_once() -> None:
    """A bad voice_id, mode and persist come back together."""
    assert details(voice_id="a/b", mode="isolated", persist="yes").keys() == {
        "voice_id",
        "mode",
        "persist",
    }


@pytest.mark.parametrize("mode", ["reference", "continuation", "both", None])
def test_mode_values_are_accepted(mode: str | None) -> None:
    """mode is reference, continuation, both, or absent/null."""
    assert register(mode=mode).mode == mode


def test_unknown_mode_lists_the_choices() -> None:
    """Any other mode is refused with the allowed values."""
    assert details(mode="isolated") == {
        "mode": "must be one of 'reference', 'continuation', 'both', got 'isolated'"
    }


def test_unknown_key_is_refused() -> None:
    """A typo such as `voice` for voice_id is an unknown key."""
    assert details(voice="bob") == {"voice": "unknown key"}


def test_audio_over_the_hard_ceiling_is_refused_before_decoding() -> None:
    """An audio string longer than the protocol's ceiling fails the length check."""
    problem = details(audio="A" * (MAX_AUDIO_BASE64_CHARS + 4))["audio"]
    assert problem.startswith("too long:")


def test_audio_over_the_configured_cap_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """decode_audio checks the configured byte cap on the base64 length, before decoding."""
    message = register(audio=base64.b64encode(b"x" * 3000).decode())
    monkeypatch.setattr(base64, "b64decode", None)
    with pytest.raises(ProtocolError) as info:
        decode_audio(message, max_bytes=2000)
    assert info.value.details == {"audio": "too large: about 3000 bytes, at most 2000"}


def test_audio_decodes() -> None:
    """Valid base64 decodes to the original bytes."""
    assert decode_audio(register()) == b"RIFF....WAVEfmt "


def test_data_url_prefix_is_accepted() -> None:
    """A browser data: URL (readAsDataURL) is accepted."""
    assert decode_audio(register(audio="data:audio/wav;base64," + AUDIO)) == b"RIFF....WAVEfmt "


@pytest.mark.parametrize("text", ["not base64!", "UklGR", "UklG\nRg=="])
def test_invalid_base64_is_a_field_error(text: str) -> None:
    """Bad characters, bad padding or line breaks are refused on the audio field."""
    with pytest.raises(ProtocolError) as info:
        decode_audio(register(audio=text))
    assert info.value.details == {"audio": "not valid base64 (standard alphabet, padded)"}


def test_voice_list_and_delete_parse() -> None:
    """voice_list takes a request_id; voice_delete also a voice_id."""
    assert structure_message(VoiceList, {"request_id": "r"}, request_id="r") == VoiceList("r")
    deleted = structure_message(VoiceDelete, {"request_id": "r", "voice_id": "bob"}, request_id="r")
    assert deleted == VoiceDelete("r", VoiceId("bob"))


def test_messages_parse_once_merged_into_the_client_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """Merged into CLIENT_MESSAGE_TYPES, a voice_delete frame parses like any other message."""
    for name, cls in VOICE_CLIENT_MESSAGE_TYPES.items():
        monkeypatch.setitem(_messages.CLIENT_MESSAGE_TYPES, name, cls)  # type: ignore[arg-type]
    frame = json.dumps({"type": "voice_delete", "request_id": "r", "voice_id": "bob"})
    assert parse_client_message(frame) == VoiceDelete("r", VoiceId("bob"))


def test_optional_voice_id_in_another_message() -> None:
    """`VoiceId | None` (as tts params will use it) accepts null and checks a value."""

    @attrs.frozen
    class Params:
        voice_id: VoiceId | None = None

    assert structure_message(Params, {"voice_id": None}, request_id=None) == Params()
    with pytest.raises(ProtocolError) as info:
        structure_message(Params, {"voice_id": "x/y"}, request_id=None)
    assert list(info.value.details) == ["voice_id"]


def check(**overrides: Any) -> str | None:
    fields: dict[str, Any] = {
        "voice_id": None,
        "prompt_wav_url": None,
        "prompt_text": None,
        "voice_description": None,
        "architecture": "voxcpm2",
        "url_prompts_enabled": True,
        "request_id": "r",
        **overrides,
    }
    return check_voice_params(**fields)


def check_details(**overrides: Any) -> dict[str, Any]:
    with pytest.raises(ProtocolError) as info:
        check(**overrides)
    return info.value.details


def test_url_prompt_mode_follows_the_transcript() -> None:
    """A URL prompt clones by continuation with prompt_text, by reference without (VoxCPM2)."""
    assert check(prompt_wav_url="https://x/a.wav", prompt_text="Hi.") == "continuation"
    assert check(prompt_wav_url="https://x/a.wav") == "reference"


def test_voice_id_and_url_together_are_refused() -> None:
    """A request names one voice source, not two."""
    assert check_details(voice_id="a", prompt_wav_url="https://x/a.wav") == {
        "params.voice_id": "use either voice_id or prompt_wav_url, not both"
    }


def test_prompt_text_without_url_is_refused() -> None:
    """prompt_text goes with prompt_wav_url; a registered voice has its own."""
    assert list(check_details(voice_id="a", prompt_text="Hi.")) == ["params.prompt_text"]


def test_url_prompts_can_be_disabled() -> None:
    """With fetching off, prompt_wav_url is refused."""
    assert check_details(prompt_wav_url="https://x/a.wav", url_prompts_enabled=False) == {
        "params.prompt_wav_url": "fetching prompt audio is disabled on this server"
    }


def test_reference_cloning_on_v1_needs_a_transcript() -> None:
    """On VoxCPM 1.x a URL prompt without prompt_text is refused (continuation only)."""
    assert check_details(prompt_wav_url="https://x/a.wav", architecture="voxcpm") == {
        "params.prompt_text": "required: VoxCPM 1.x clones by continuation only"
    }


def test_voice_design_on_v1_is_refused() -> None:
    """voice_description needs VoxCPM2."""
    assert check_details(voice_description="a warm voice", architecture="voxcpm") == {
        "params.voice_description": "voice design needs a VoxCPM2 model; this model is VoxCPM 1.x"
    }


def test_voice_description_may_not_hold_parentheses() -> None:
    """A ')' would end VoxCPM2's (description) early."""
    assert check_details(voice_description="warm) and loud") == {
        "params.voice_description": "must not contain parentheses"
    }


def test_voice_description_is_prefixed_in_parentheses() -> None:
    """The server writes VoxCPM2's "(description)text" form, whitespace collapsed."""
    assert apply_voice_description("Hello.", " a warm\n female voice ") == (
        "(a warm female voice)Hello."
    )
    assert apply_voice_description("Hello.", None) == "Hello."
