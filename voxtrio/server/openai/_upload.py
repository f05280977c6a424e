"""`POST /v1/audio/voices`: register a voice from a multipart form (vLLM-Omni's shape).

Fields: `name` (the voice id), the audio file as `audio_sample` (or `file`), and
optionally `prompt_text` (or `ref_text`: the transcript, for continuation cloning)
and `persist` (`true`/`false`, default true). The form is parsed while the body
is read (`_form.FormReader`); the voice then goes through the same
`VoiceService` as a WebSocket `voice_register`, so the same checks (id, size,
duration, format, upload switch) apply.
"""

from __future__ import annotations

import base64

from voxtrio.protocol._converter import structure_message
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._voice_messages import VoiceRegister, VoiceRegistered
from voxtrio.voices._service import VoiceService


async def register_uploaded_voice(
    fields: dict[str, str], audio: bytes | None, voices: VoiceService, request_id: str
) -> VoiceRegistered:
    if audio is None:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            "audio_sample: the form has no audio file (field `audio_sample` or `file`)",
            details={"audio_sample": "missing"},
        )
    message = {
        "request_id": request_id,
        "voice_id": fields.get("name") or fields.get("voice_id") or "",
        "audio": base64.b64encode(audio).decode("ascii"),
        "persist": fields.get("persist", "true").strip().lower() not in ("false", "0", "no"),
    }
    prompt_text = fields.get("prompt_text") or fields.get("ref_text")
    if prompt_text:
        message["prompt_text"] = prompt_text
    register: VoiceRegister = structure_message(VoiceRegister, message, request_id=request_id)
    answer = await voices.handle(register)
    assert isinstance(answer, VoiceRegistered)
    return answer
