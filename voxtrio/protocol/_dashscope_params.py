"""A run-task's parameters, validated against what this server offers and translated."""

from __future__ import annotations

from typing import Any, Final

import attrs

from voxtrio.protocol._dashscope_messages import (
    DEFAULT_FORMAT,
    DEFAULT_SAMPLE_RATE,
    IGNORED_PARAMETERS,
    MAX_MESSAGE_TEXT_CHARS,
    MAX_TASK_CHARS,
    TEXT_TYPES,
    RunTaskParameters,
    invalid_parameter,
)
from voxtrio.protocol._formats import (
    OPUS_BIT_RATE_RANGE,
    SUPPORTED_RATES,
    AudioFormat,
    mp3_bit_rates,
)
from voxtrio.protocol._ssml import SsmlLimits

_FORMATS: Final[dict[str, AudioFormat]] = {
    "pcm": "pcm16",
    "wav": "wav",
    "mp3": "mp3",
    "opus": "opus",
    "default": DEFAULT_FORMAT,
}


def volume_to_gain(volume: int) -> float:
    """DashScope volume 0-100 -> linear gain: volume / 50 (0 mute, 50 unchanged, 100 x2).

    Linear, not a dB curve: 0 is silence without a special case, 25 is -6 dB, and the
    top half stops at +6 dB, which is already past full scale for normalised TTS
    output (the encoder clips); a dB curve steep enough to be useful at the bottom
    would spend most of the top half clipping.
    """
    return volume / 50.0


@attrs.frozen(kw_only=True)
class TaskParams:
    """A run-task's parameters, validated and translated to voxtrio's terms."""

    voice: str
    format: AudioFormat  # AudioEncoder's name ("pcm" arrives as "pcm16")
    sample_rate: int  # Hz requested (opus may encode at the next Opus rate up)
    volume: int  # 0-100 as sent
    gain: float  # volume_to_gain(volume), for AudioEncoder(volume=)
    rate: float  # speed factor; != 1.0 only when DSP is available
    pitch: float  # pitch factor; likewise
    seed: int | None
    bit_rate: int | None  # bits/s for AudioEncoder(bit_rate=); None = codec default
    enable_ssml: bool
    word_timestamps: bool = False  # word_timestamp_enabled: sentence-end carries words

    @property
    def needs_dsp(self) -> bool:
        return self.rate != 1.0 or self.pitch != 1.0


@attrs.frozen
class DashScopeCapabilities:
    """What this server offers on the DashScope endpoint."""

    voices: frozenset[str] = frozenset({"default"})  # every name a run-task may use
    # Where those names come from, for the unknown-voice refusal (None: list them).
    voice_sources: str | None = None
    model_names: frozenset[str] = frozenset()  # any other model is served too, and logged
    dsp_available: bool = False  # rate/pitch other than 1.0 (voxtrio.audio._dsp)
    max_text_chars: int = MAX_MESSAGE_TEXT_CHARS
    max_task_chars: int = MAX_TASK_CHARS
    sentence_max_chars: int = 300
    ssml_limits: SsmlLimits = attrs.Factory(SsmlLimits)


def validate_parameters(
    raw: RunTaskParameters, caps: DashScopeCapabilities, task_id: str
) -> tuple[TaskParams, dict[str, Any]]:
    """The task's parameters and the ignored ones sent with a value; TaskFailure if bad."""
    errors: dict[str, str] = {}
    fmt = _FORMATS.get(raw.format.lower())
    if fmt is None:
        errors["format"] = f"must be one of pcm, wav, mp3, opus, got {raw.format[:32]!r}"
    rate = raw.sample_rate or DEFAULT_SAMPLE_RATE
    if raw.sample_rate and raw.sample_rate not in SUPPORTED_RATES:
        allowed = ", ".join(str(r) for r in SUPPORTED_RATES)
        errors["sample_rate"] = f"must be one of {allowed}, got {raw.sample_rate}"
    if raw.voice not in caps.voices:
        sources = caps.voice_sources or "this server has: " + ", ".join(sorted(caps.voices)[:20])
        errors["voice"] = f"unknown voice {raw.voice[:64]!r}; {sources}"
    if raw.text_type not in TEXT_TYPES:
        errors["text_type"] = f"must be PlainText or SSML, got {raw.text_type[:32]!r}"
    if not caps.dsp_available:
        for name in ("rate", "pitch"):
            value = getattr(raw, name)
            if value != 1.0:
                errors[name] = (
                    f"{value} is not supported: this server cannot change {name} at good "
                    "quality while streaming; send 1.0"
                )
    if not isinstance(raw.word_timestamp_enabled, bool | None):
        errors["word_timestamp_enabled"] = (
            f"must be true or false, got {str(raw.word_timestamp_enabled)[:32]!r}"
        )
    bit_rate = _bit_rate(raw, fmt, rate, errors)
    if errors:
        summary = "; ".join(f"parameters.{k}: {v}" for k, v in sorted(errors.items()))
        raise invalid_parameter(f"invalid run-task parameters: {summary}", task_id)
    assert fmt is not None  # for mypy: errors would hold "format" otherwise
    params = TaskParams(
        voice=raw.voice,
        format=fmt,
        sample_rate=rate,
        volume=raw.volume,
        gain=volume_to_gain(raw.volume),
        rate=float(raw.rate),
        pitch=float(raw.pitch),
        seed=raw.seed,
        bit_rate=bit_rate,
        enable_ssml=raw.enable_ssml or raw.text_type == "SSML",
        word_timestamps=raw.word_timestamp_enabled is True,
    )
    ignored = {
        name: getattr(raw, name)
        for name, unused in IGNORED_PARAMETERS.items()
        if getattr(raw, name) not in (None, unused)
    }
    return params, ignored


def _bit_rate(
    raw: RunTaskParameters, fmt: AudioFormat | None, rate: int, errors: dict[str, str]
) -> int | None:
    """`bit_rate` is kbit/s on the wire (the SDK's enum: 16, 32, 64); the encoder takes bit/s."""
    kbps = raw.bit_rate
    if kbps is None or fmt is None:
        return None
    if fmt == "opus":
        low, high = (b // 1000 for b in OPUS_BIT_RATE_RANGE)
        if not low <= kbps <= high:
            errors["bit_rate"] = f"opus bit_rate must be {low}-{high} (kbit/s), got {kbps}"
            return None
        return kbps * 1000
    if fmt == "mp3":
        allowed = [b // 1000 for b in mp3_bit_rates(rate)]
        if kbps not in allowed:
            shown = ", ".join(str(b) for b in allowed)
            errors["bit_rate"] = f"mp3 bit_rate at {rate} Hz must be one of {shown} (kbit/s)"
            return None
        return kbps * 1000
    errors["bit_rate"] = f"applies to opus and mp3 only, not {raw.format}"
    return None
