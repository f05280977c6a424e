"""A multipart/form-data body parsed as it arrives, with limits on parts and sizes.

The HTTP exchange feeds each piece of the body as it is read (a checkpoint
between pieces), so a body of many tiny parts is refused at its first surplus
part instead of freezing the event loop while a whole body is parsed. Only the
fields the upload route knows are kept: text fields up to a few KiB, one audio
file up to the prompt-size limit; every other part counts against the part
limit and is dropped as it streams past. python-multipart does the parsing
(streaming, bounded part headers).
"""

from __future__ import annotations

from typing import Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from voxtrio.protocol._errors import ErrorCode, ProtocolError

FILE_FIELDS: Final = ("audio_sample", "file")
TEXT_FIELDS: Final = frozenset({"name", "voice_id", "prompt_text", "ref_text", "persist"})
MAX_PARTS: Final = 16
MAX_FIELD_BYTES: Final = 4096


def form_boundary(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data Content-Type, or None for any other type."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    return boundary if kind == b"multipart/form-data" and boundary else None


class FormReader:
    """Feed the body with `feed`, then `finish` for the text fields and the audio."""

    def __init__(self, boundary: bytes, *, max_file_bytes: int) -> None:
        self.fields: dict[str, str] = {}
        self.audio: bytes | None = None
        self._max_file_bytes = max_file_bytes
        self._parts = 0
        self._ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._data = bytearray()
        self._keep: str | None = None  # the field the current part fills, if any
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            raise _invalid(f"malformed multipart body: {exc}") from None

    def finish(self) -> tuple[dict[str, str], bytes | None]:
        self._parser.finalize()
        if not self._ended:
            raise _invalid("malformed multipart body: no closing boundary")
        return self.fields, self.audio

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise _invalid(f"the form has more than {MAX_PARTS} parts")
        self._disposition, self._keep = b"", None
        self._data.clear()

    def _header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        is_file = b"filename" in options
        wanted_file = is_file and name in FILE_FIELDS and self.audio is None
        wanted_text = not is_file and name in TEXT_FIELDS and name not in self.fields
        if wanted_file or wanted_text:
            self._keep = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep is None:
            return  # a part no route reads: dropped as it passes
        limit = self._max_file_bytes if self._keep in FILE_FIELDS else MAX_FIELD_BYTES
        if len(self._data) + (end - start) > limit:
            raise _invalid(f"form field {self._keep!r} is over {limit} bytes")
        self._data += data[start:end]

    def _part_end(self) -> None:
        if self._keep in FILE_FIELDS:
            self.audio = bytes(self._data)
        elif self._keep is not None:
            self.fields[self._keep] = self._data.decode("utf-8", "replace")
        self._data.clear()
        self._keep = None

    def _end(self) -> None:
        self._ended = True


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_PARAMS, message)
