"""What each route of the shared port's HTTP front does once its request is admitted.

The table `ROUTES` (path -> method -> `Route`) is the one place that says which
routes exist, what body each reads and which need no API key; `_routes.HttpFront`
applies the reading policy and then runs the route with the admitted `Call`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Final, Literal, Protocol

import attrs

from voxtrio.ops._http import HttpRequest
from voxtrio.protocol._errors import ProtocolError
from voxtrio.server.openai._errors import http_error
from voxtrio.server.openai._exchange import HttpExchange
from voxtrio.server.openai._speech import SpeechContext, run_speech
from voxtrio.server.openai._upload import register_uploaded_voice
from voxtrio.server.openai._voices import OPENAI_VOICES, library_voices

MODEL_IDS: Final = ("voxtrio", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
WEB_FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
}


class RouteHost(Protocol):
    """What a route needs of the front that runs it."""

    @property
    def context(self) -> SpeechContext: ...

    def is_draining(self) -> bool: ...


BodyKind = Literal["none", "json", "form"]


@attrs.frozen
class Call:
    """An admitted request: its head, its body (JSON) or its form fields (upload)."""

    exchange: HttpExchange
    request: HttpRequest
    body: bytes = b""
    fields: dict[str, str] = attrs.Factory(dict)
    audio: bytes | None = None


@attrs.frozen
class Route:
    run: Callable[[RouteHost, Call], Awaitable[None]]
    body: BodyKind = "none"
    public: bool = False  # served without an API key (the browser page)


async def _web_file(front: RouteHost, call: Call) -> None:
    name, media = WEB_FILES[call.request.path]
    data = resources.files("voxtrio.server.web").joinpath(name).read_bytes()
    await call.exchange.respond(200, [("content-type", media), ("cache-control", "no-cache")], data)


async def _models(front: RouteHost, call: Call) -> None:
    models = [{"id": m, "object": "model", "created": 0, "owned_by": "voxtrio"} for m in MODEL_IDS]
    await call.exchange.respond_json(200, {"object": "list", "data": models})


async def _list_voices(front: RouteHost, call: Call) -> None:
    voices = [*OPENAI_VOICES, *library_voices(front.context.voices)]
    await call.exchange.respond_json(200, {"voices": sorted(set(voices))})


async def _speech(front: RouteHost, call: Call) -> None:
    await run_speech(call.exchange, call.body, front.context, front.is_draining)


async def _upload(front: RouteHost, call: Call) -> None:
    voices = front.context.voices
    assert voices is not None  # checked on the head
    try:
        request_id = call.exchange.request_id
        registered = await register_uploaded_voice(call.fields, call.audio, voices, request_id)
    except ProtocolError as exc:
        status, payload, headers = http_error(exc)
        await call.exchange.respond_json(status, payload, *headers)
        return
    await call.exchange.respond_json(
        200,
        {
            "id": registered.voice_id,
            "name": registered.voice_id,
            "duration": registered.duration,
            "sample_rate": registered.sample_rate,
        },
    )


ROUTES: Final[dict[str, dict[str, Route]]] = {
    **{path: {"GET": Route(_web_file, public=True)} for path in WEB_FILES},
    "/v1/models": {"GET": Route(_models)},
    "/v1/audio/voices": {"GET": Route(_list_voices), "POST": Route(_upload, body="form")},
    "/v1/audio/speech": {"POST": Route(_speech, body="json")},
}


def method_of(request: HttpRequest) -> str:
    """The route method: HEAD is served as GET (the exchange then leaves out the body)."""
    return "GET" if request.method == "HEAD" else request.method
