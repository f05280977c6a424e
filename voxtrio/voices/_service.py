"""Voices on the Trio side: the voice_* messages and a request's voice fields.

Decoding and disk I/O run in worker threads behind a small capacity limit; prompt
features are built on the model instance thread that needs them (`VoxCPMEngine`).
"""

from __future__ import annotations

from functools import partial

import attrs
import structlog
import trio

from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._limits import MAX_PROMPT_BYTES, max_base64_chars
from voxtrio.protocol._messages import ServerMessage, SynthesisOptions
from voxtrio.protocol._voice_messages import (
    VoiceClientMessage,
    VoiceDelete,
    VoiceDeleted,
    VoiceList,
    VoiceRegister,
    VoiceRegistered,
    Voices,
    VoiceSummary,
    check_voice_params,
    decode_audio,
    invalid,
)
from voxtrio.protocol._voice_rules import VoiceError, VoiceMode
from voxtrio.voices._aliases import CosyVoiceAliases
from voxtrio.voices._audio import PromptAudio, VoiceAudioError, decode_prompt_audio
from voxtrio.voices._fetch import FetchError, FetchPolicy, fetch_prompt
from voxtrio.voices._store import VoiceStore
from voxtrio.voices._voice import Voice

log = structlog.get_logger("voxtrio.voices")


def registered_message(request_id: str, voice: Voice) -> VoiceRegistered:
    return VoiceRegistered(request_id, voice.voice_id, voice.duration, voice.sample_rate)


def voices_message(request_id: str, voices: list[Voice]) -> Voices:
    return Voices(
        request_id,
        [VoiceSummary(v.voice_id, v.mode, v.duration, v.persisted) for v in voices],
    )


def voice_error(
    exc: VoiceError | VoiceAudioError | FetchError,
    *,
    request_id: str | None,
    prefix: str = "",
    fetch_field: str = "params.prompt_wav_url",
) -> ProtocolError:
    """INVALID_PARAMS for a refused voice, prompt audio or fetch (`prefix`: e.g. "params.")."""
    if isinstance(exc, FetchError):
        return invalid(fetch_field, exc.reason, request_id=request_id)
    return invalid(f"{prefix}{exc.field}", exc.message, request_id=request_id)


@attrs.frozen(kw_only=True)
class VoiceFields:
    """A request's voice, checked: the SynthesisSpec fields of the same names."""

    voice_id: str | None = None  # a registered voice, usable by this model
    voice_description: str | None = None  # VoxCPM2 voice design
    # prompt_wav_url: the fetched, decoded audio, its transcript and the mode they use.
    prompt_audio: PromptAudio | None = None
    prompt_text: str | None = None
    prompt_mode: VoiceMode | None = None


@attrs.define
class VoiceService:
    store: VoiceStore
    architecture: str
    prompt_rate: int
    allow_upload: bool = False
    max_prompt_seconds: float = 30.0
    max_prompt_bytes: int = MAX_PROMPT_BYTES
    fetch_policy: FetchPolicy | None = None
    # CosyVoice voice ids for the DashScope endpoint (voices._aliases).
    aliases: CosyVoiceAliases | None = None
    # Decoding a prompt and writing a voice are CPU and disk work: two at a time.
    limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(2))

    @property
    def max_message_bytes(self) -> int:
        """A voice_register must fit in one WebSocket message when uploads are on."""
        return max_base64_chars(self.max_prompt_bytes) + 64 * 1024 if self.allow_upload else 0

    def voice_names(self) -> frozenset[str]:
        return frozenset(v.voice_id for v in self.store.list())

    async def handle(self, message: VoiceClientMessage) -> ServerMessage:
        """Answer voice_register / voice_list / voice_delete, or raise ProtocolError."""
        rid = message.request_id
        if isinstance(message, VoiceList):
            return voices_message(rid, self.store.list())
        if not self.allow_upload:
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                "voice registration is disabled on this server (--allow-voice-upload)",
                request_id=rid,
            )
        try:
            if isinstance(message, VoiceRegister):
                return await self._register(message)
            assert isinstance(message, VoiceDelete)
            async with self.limiter:
                await trio.to_thread.run_sync(self.store.delete, message.voice_id)
            log.info("voice_deleted", voice_id=message.voice_id)
            return VoiceDeleted(rid, message.voice_id)
        except (VoiceError, VoiceAudioError) as exc:
            raise voice_error(exc, request_id=rid) from None

    async def _register(self, message: VoiceRegister) -> ServerMessage:
        data = decode_audio(message, max_bytes=self.max_prompt_bytes)
        async with self.limiter:
            audio = await trio.to_thread.run_sync(
                partial(
                    decode_prompt_audio,
                    data,
                    target_rate=self.prompt_rate,
                    max_seconds=self.max_prompt_seconds,
                    max_bytes=self.max_prompt_bytes,
                )
            )
            voice = await trio.to_thread.run_sync(
                partial(
                    self.store.register,
                    message.voice_id,
                    audio,
                    prompt_text=message.prompt_text,
                    mode=message.mode,
                    persist=message.persist,
                    replace=message.replace,
                )
            )
        log.info(
            "voice_registered", voice_id=voice.voice_id, mode=voice.mode, persisted=voice.persisted
        )
        return registered_message(message.request_id, voice)

    async def resolve(self, options: SynthesisOptions, request_id: str) -> VoiceFields:
        """Check a request's voice fields; return what the engine needs of them."""
        mode = check_voice_params(
            voice_id=options.voice_id,
            prompt_wav_url=options.prompt_wav_url,
            prompt_text=options.prompt_text,
            voice_description=options.voice_description,
            architecture=self.architecture,
            url_prompts_enabled=self.fetch_policy is not None,
            request_id=request_id,
        )
        fields = VoiceFields(voice_description=options.voice_description)
        try:
            if options.voice_id is not None:
                self.store.check_usable(options.voice_id, field="voice_id")
                fields = attrs.evolve(fields, voice_id=options.voice_id)
            elif options.prompt_wav_url is not None:
                assert self.fetch_policy is not None
                assert mode is not None
                data = await fetch_prompt(options.prompt_wav_url, self.fetch_policy)
                async with self.limiter:
                    audio = await trio.to_thread.run_sync(
                        partial(
                            decode_prompt_audio,
                            data,
                            target_rate=self.prompt_rate,
                            max_seconds=self.max_prompt_seconds,
                            max_bytes=self.max_prompt_bytes,
                            field="prompt_wav_url",
                        )
                    )
                fields = attrs.evolve(
                    fields, prompt_audio=audio, prompt_text=options.prompt_text, prompt_mode=mode
                )
        except (VoiceError, VoiceAudioError, FetchError) as exc:
            raise voice_error(exc, request_id=request_id, prefix="params.") from None
        return fields
