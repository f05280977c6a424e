"""Plain HTTP on the WebSocket port: the OpenAI-compatible API and the browser page.

`HttpFront.handle` takes a connection the listener found not to be a WebSocket
handshake. It reads one request (deadline, size bound), routes it, and is its
error boundary: whatever a route raises ends that request only.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from importlib import resources
from typing import Final

import attrs
import structlog
import trio

from voxtrio.ops._auth import KeyStore
from voxtrio.ops._http import HttpRequest
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.server._writer import ConnectionGone
from voxtrio.server.openai._errors import error_body, http_error
from voxtrio.server.openai._exchange import BadRequest, HttpExchange
from voxtrio.server.openai._request import parse_speech_request
from voxtrio.server.openai._speech import (
    HttpSpeechSink,
    SpeechContext,
    output_for,
    record,
    synthesize_speech,
)
from voxtrio.server.openai._upload import register_uploaded_voice
from voxtrio.server.openai._voices import OPENAI_VOICES, library_voices

log = structlog.get_logger("voxtrio.openai")

MODEL_IDS: Final = ("voxtrio", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
WEB_FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
}
_MAX_JSON_BODY: Final = 256 * 1024


@attrs.define(eq=False)
class HttpRequestHandle:
    """A running HTTP request, as the server's drain sees a connection."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    idle: trio.Event = attrs.Factory(trio.Event)

    def begin_drain(self) -> None:
        pass  # one request per connection: nothing new can start on it

    async def shut_down(self) -> None:
        self.scope.cancel()
        await self.idle.wait()


@attrs.define(eq=False)
class HttpFront:
    context: SpeechContext
    keys: KeyStore
    web_page: bool
    is_draining: Callable[[], bool]
    requests: set[HttpRequestHandle] = attrs.Factory(set)

    async def handle(self, stream: trio.abc.Stream) -> None:
        exchange = HttpExchange(stream, write_timeout=self.context.settings.write_timeout)
        handle = HttpRequestHandle()
        self.requests.add(handle)
        try:
            with handle.scope:
                await self._serve(exchange, handle)
            await exchange.linger()
        except ConnectionGone as exc:
            log.debug("http_client_gone", reason=str(exc))
        except Exception:
            log.exception("http_request_failed")
            with trio.move_on_after(1.0), contextlib.suppress(ConnectionGone):
                await self._error(
                    exchange, 500, "internal server error", "internal_error", kind="server_error"
                )
        finally:
            self.requests.discard(handle)
            handle.idle.set()
            await trio.aclose_forcefully(stream)

    async def _serve(self, exchange: HttpExchange, handle: HttpRequestHandle) -> None:
        settings = self.context.settings
        try:
            with trio.fail_after(settings.handshake_timeout):
                read = await exchange.read_request(self._max_body_bytes())
        except trio.TooSlowError:
            await self._error(exchange, 408, "request timeout", "timeout")
            return
        except BadRequest as exc:
            await self._error(exchange, exc.status, exc.message, "bad_request")
            return
        if read is None:
            return
        request, body = read
        log.info("http_request", method=request.method, path=request.path[:200])
        if len(self.requests) > settings.max_connections:
            # Bounded like WebSocket connections (TTS_MAX_CONNECTIONS).
            await self._error(
                exchange,
                503,
                "too many connections",
                "overloaded",
                kind="server_error",
                extra=[("retry-after", "1")],
            )
            return
        route = (request.method, request.path)
        if request.method == "GET" and request.path in WEB_FILES and self.web_page:
            name, media = WEB_FILES[request.path]
            data = resources.files("voxtrio.server.web").joinpath(name).read_bytes()
            await exchange.respond(
                200, [("content-type", media), ("cache-control", "no-cache")], data
            )
            return
        if not request.path.startswith("/v1/"):
            await self._error(exchange, 404, f"unknown path {request.path[:100]!r}", "not_found")
            return
        if not self.keys.authorize(request.headers, request.target):
            await self._error(
                exchange,
                401,
                "missing or invalid API key (Authorization: Bearer KEY)",
                "invalid_api_key",
                kind="authentication_error",
                extra=[("www-authenticate", "Bearer")],
            )
            return
        if route == ("POST", "/v1/audio/speech"):
            await self._speech(exchange, request, body)
        elif route == ("GET", "/v1/models"):
            models = [
                {"id": m, "object": "model", "created": 0, "owned_by": "voxtrio"} for m in MODEL_IDS
            ]
            await exchange.respond_json(200, {"object": "list", "data": models})
        elif route == ("POST", "/v1/audio/voices"):
            await self._upload(exchange, request, body)
        elif route == ("GET", "/v1/audio/voices"):
            voices = [*OPENAI_VOICES, *library_voices(self.context.voices)]
            await exchange.respond_json(200, {"voices": sorted(set(voices))})
        else:
            await self._error(
                exchange, 404, f"no route {request.method} {request.path[:100]}", "not_found"
            )

    def _max_body_bytes(self) -> int:
        voices = self.context.voices
        uploads = voices.max_message_bytes if voices is not None else 0
        return max(_MAX_JSON_BODY, self.context.settings.max_message_bytes, uploads)

    async def _speech(self, exchange: HttpExchange, http_request: HttpRequest, body: bytes) -> None:
        request_id = f"openai-{secrets.token_hex(6)}"
        started, accepted_at = time.perf_counter(), trio.current_time()
        sink: HttpSpeechSink | None = None
        outcome, audio_s = "disconnected", 0.0
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                if self.is_draining():
                    raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
                request = parse_speech_request(body)
                sink = HttpSpeechSink(exchange, output_for(request), request.stream_format == "sse")
                failure: ProtocolError | None = None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_disconnect, exchange.stream, nursery.cancel_scope)
                    try:
                        audio_s = await synthesize_speech(request, sink, self.context, request_id)
                        outcome = "ok"
                    except ProtocolError as exc:
                        failure = exc  # raised outside the nursery, bare rather than grouped
                    nursery.cancel_scope.cancel()
                if failure is not None:
                    raise failure
            except ProtocolError as exc:
                outcome = str(exc.code)
                if sink is not None and exchange.started:
                    await sink.fail(exc)
                else:
                    status, payload, headers = http_error(exc)
                    await exchange.respond_json(status, payload, *headers)
            finally:
                log.info("openai_speech_finished", outcome=outcome, audio_seconds=round(audio_s, 3))
                if sink is not None:
                    record(self.context.metrics, outcome, started, sink, accepted_at, audio_s)

    async def _upload(self, exchange: HttpExchange, request: HttpRequest, body: bytes) -> None:
        voices = self.context.voices
        try:
            if voices is None or not voices.allow_upload:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    "voice upload is disabled on this server (--allow-voice-upload)",
                )
            request_id = f"upload-{secrets.token_hex(6)}"
            registered = await register_uploaded_voice(
                body, request.header("content-type") or "", voices, request_id
            )
        except ProtocolError as exc:
            status, payload, headers = http_error(exc)
            await exchange.respond_json(status, payload, *headers)
            return
        await exchange.respond_json(
            200,
            {
                "id": registered.voice_id,
                "name": registered.voice_id,
                "duration": registered.duration,
                "sample_rate": registered.sample_rate,
            },
        )

    async def _error(
        self,
        exchange: HttpExchange,
        status: int,
        message: str,
        code: str,
        *,
        kind: str = "invalid_request_error",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        await exchange.respond_json(status, error_body(message, kind, code), *(extra or []))


async def _cancel_on_disconnect(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """The client closed or reset its side: stop generating for it now."""
    try:
        while await stream.receive_some(4096):
            pass  # a pipelined request is not served (one per connection); ignore it
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    log.info("http_client_disconnected")
    scope.cancel()
