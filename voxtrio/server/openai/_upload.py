"""`POST /v1/audio/voices`: register a voice from a multipart form (vLLM-Omni's shape).

Fields: `name` (the voice id), the audio file as `audio_sample` (or `file`), and
optionally `prompt_text` (or `ref_text`: the transcript, for continuation cloning)
and `persist` (`true`/`false`, default true). The form is parsed by
python-multipart within the body bound the caller already applied; the voice then
goes through the same `VoiceService` as a WebSocket `voice_register`, so the same
checks (id, size, duration, format, upload switch) apply.
"""

from __future__ import annotations

import base64
from typing import Any

from python_multipart import FormParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from voxtrio.protocol._converter import structure_message
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._voice_messages import VoiceRegister, VoiceRegistered
from voxtrio.voices._service import VoiceService

_FILE_FIELDS = ("audio_sample", "file")
_MAX_FIELD_BYTES = 4096


def parse_form(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """Text fields and file fields of a multipart/form-data body."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS, "expected a multipart/form-data body with a boundary"
        )
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}

    def on_field(field: Any) -> None:
        value = field.value or b""
        if len(value) > _MAX_FIELD_BYTES:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS, f"form field {field.field_name!r} too long"
            )
        fields[field.field_name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")

    def on_file(file: Any) -> None:
        file.file_object.seek(0)
        files[file.field_name.decode("utf-8", "replace")] = file.file_object.read()

    # Kept in memory: the body is already in memory and bounded by the caller.
    config = {"MAX_MEMORY_FILE_SIZE": len(body) + 1, "MAX_BODY_SIZE": len(body) + 1}
    parser = FormParser("multipart/form-data", on_field, on_file, boundary=boundary, config=config)
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"malformed multipart body: {exc}") from None
    return fields, files


async def register_uploaded_voice(
    body: bytes, content_type: str, voices: VoiceService, request_id: str
) -> VoiceRegistered:
    fields, files = parse_form(body, content_type)
    audio = next((files[name] for name in _FILE_FIELDS if name in files), None)
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
