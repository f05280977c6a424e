"""Plain HTTP on the WebSocket port: the OpenAI-compatible API and the browser page.

`HttpFront.handle` takes a connection the listener found not to be a WebSocket
handshake, and is its error boundary: whatever a route raises ends that request
only. Every route goes through one body-reading policy (`_admit`):

1. while the request is being read the connection is only *pending*: it does not
   count against `max_connections`, it has a deadline (`handshake_timeout`), and
   the oldest pending connection is evicted when the pending pool is full;
2. the head decides first: browser origin and Host (403), route (404/405), API
   key (401), capacity (503), media type (415), declared size (413); only then is
   `100 Continue` sent and the body read;
3. the body is read piece by piece against its route's limit (small for JSON,
   the prompt-size cap for the voice upload only) and charged to the server's
   budget for unfinished messages; a form is parsed as it arrives.

A connection is kept for further requests (HTTP/1.1 keep-alive, as the OpenAI
SDK's and the frameworks' pools expect) up to `http_keepalive_requests`. Between
two requests it is idle: pending again (evictable, not counted against
`max_connections`, so it holds no capacity of active requests) under the idle
deadline `http_keepalive_timeout`; once the next request's first bytes arrive,
that request gets the same deadline and policy as a first one. While the server
drains, an idle connection is closed at once and a running response says
`Connection: close`. Every request has an id (`x-request-id`: the client's when
sane, else a new one), on its response and bound into its log lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

import attrs
import structlog
import trio
from python_multipart.multipart import parse_options_header

from voxtrio.ops._auth import KeyStore
from voxtrio.ops._http import HttpRequest
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.server._origin import BrowserPolicy
from voxtrio.server._pending import PendingRequests
from voxtrio.server._websocket import PartialMessageBudget
from voxtrio.server._writer import ConnectionGone
from voxtrio.server.openai._errors import error_body, http_error
from voxtrio.server.openai._exchange import BadRequest, HttpExchange, client_request_id
from voxtrio.server.openai._form import FormReader, form_boundary
from voxtrio.server.openai._handlers import ROUTES, WEB_FILES, BodyKind, Call, Route, method_of
from voxtrio.server.openai._speech import SpeechContext

log = structlog.get_logger("voxtrio.openai")

_MAX_JSON_BODY: Final = 256 * 1024
# A body on a route that reads none (GET) is read and dropped up to this size.
_MAX_IGNORED_BODY: Final = 16 * 1024
# The upload form around its audio file: the text fields, part heads, boundaries.
_FORM_OVERHEAD: Final = 64 * 1024


@attrs.define(eq=False)
class HttpRequestHandle:
    """An HTTP connection, as the server's drain sees it (`idle`: it has ended)."""

    exchange: HttpExchange
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    idle: trio.Event = attrs.Factory(trio.Event)
    # Set while the connection waits between two requests: cancelled on drain.
    between_requests: trio.CancelScope | None = None

    def begin_drain(self) -> None:
        """No new request on this connection: a waiting one closes, a running one ends it."""
        self.exchange.keep_alive = False
        if self.between_requests is not None:
            self.between_requests.cancel()

    async def shut_down(self) -> None:
        self.scope.cancel()
        await self.idle.wait()


@attrs.define(eq=False)
class HttpFront:
    context: SpeechContext
    keys: KeyStore
    web_page: bool
    is_draining: Callable[[], bool]
    pending: PendingRequests
    policy: BrowserPolicy
    budget: PartialMessageBudget
    # Connections in use elsewhere on the port (WebSocket), for the shared capacity.
    requests: set[HttpRequestHandle] = attrs.Factory(set)
    active: int = 0  # admitted requests (their request read), what max_connections bounds

    async def handle(self, stream: trio.abc.Stream) -> None:
        exchange = HttpExchange(stream, write_timeout=self.context.settings.write_timeout)
        handle = HttpRequestHandle(exchange)
        self.requests.add(handle)
        try:
            with handle.scope:
                await self._serve_connection(handle)
            await exchange.linger()
        except Exception as exc:  # the boundary; a gone peer is sorted out in _failed
            await self._failed(exchange, exc)
        finally:
            self.requests.discard(handle)
            handle.idle.set()
            await trio.aclose_forcefully(stream)

    async def _failed(self, exchange: HttpExchange, exc: Exception) -> None:
        """Log what went wrong; answer 500 unless the peer is gone or has its answer."""
        gone: BaseException | None
        rest: BaseException | None
        if isinstance(exc, ExceptionGroup):
            gone, rest = exc.split(ConnectionGone)
        else:
            gone, rest = (exc, None) if isinstance(exc, ConnectionGone) else (None, exc)
        if rest is None:
            log.info("http_client_gone", reason=str(_first(gone)))
            return
        log.error("http_request_failed", exc_info=rest)
        exchange.keep_alive = False
        if gone is None and exchange.can_respond:
            with trio.move_on_after(1.0), contextlib.suppress(ConnectionGone):
                await exchange.respond_json(
                    500, error_body("internal server error", "server_error", "internal_error")
                )

    async def _serve_connection(self, handle: HttpRequestHandle) -> None:
        """Requests one after another until one ends the connection."""
        exchange = handle.exchange
        settings = self.context.settings
        served = 0
        while True:
            with structlog.contextvars.bound_contextvars(request_id=exchange.request_id):
                served += 1
                await self._serve(exchange, last=served >= settings.http_keepalive_requests)
            if not exchange.next_cycle():
                return
            if not await self._wait_between_requests(handle):
                return

    async def _wait_between_requests(self, handle: HttpRequestHandle) -> bool:
        """Idle until the next request begins; False to close (timeout, eviction, drain)."""
        if handle.exchange.has_buffered_request:
            return True  # pipelined: it is already here
        arrived = False
        with self.pending.reading() as reading:
            with trio.move_on_after(self.context.settings.http_keepalive_timeout) as idle:
                handle.between_requests = idle
                try:
                    if self.is_draining():
                        return False
                    arrived = await handle.exchange.wait_for_request()
                finally:
                    handle.between_requests = None
        if reading.cancelled_caught or idle.cancelled_caught or not arrived:
            log.debug("http_keepalive_closed", evicted=reading.cancelled_caught)
            return False
        return True

    async def _serve(self, exchange: HttpExchange, *, last: bool) -> None:
        """One request on the connection (`last`: the connection's cap is reached)."""
        settings = self.context.settings
        call: Call | None = None
        charged = [0]
        try:
            with self.pending.reading() as reading:
                with trio.move_on_after(settings.handshake_timeout) as deadline:
                    call = await self._admit(exchange, charged)
            if reading.cancelled_caught:
                log.debug("http_request_evicted")  # a newer reader needed the room
                return
            if deadline.cancelled_caught:
                log.info("http_request_timeout", timeout=settings.handshake_timeout)
                await self._error(exchange, 408, "request timeout", "timeout")
                return
            if call is None:
                return
            if self._full():
                await self._overloaded(exchange)
                return
            exchange.keep_alive = not last and not self.is_draining()
            self.active += 1
            try:
                await ROUTES[call.request.path][method_of(call.request)].run(self, call)
            finally:
                self.active -= 1
        finally:
            self.budget.give_back(charged[0])

    async def _admit(self, exchange: HttpExchange, charged: list[int]) -> Call | None:
        """Read and check one request; None when it was answered (refused) already."""
        try:
            request = await exchange.read_head()
            if request is None:
                return None
            exchange.request_id = client_request_id(request) or exchange.request_id
            structlog.contextvars.bind_contextvars(request_id=exchange.request_id)
            log.info("http_request", method=request.method, path=request.path[:200])
            route = await self._check_head(exchange, request)
            if route is None:
                return None
            return await self._read_body(exchange, request, route, charged)
        except BadRequest as exc:
            log.info("http_request_refused", status=exc.status, reason=exc.message)
            await self._error(exchange, exc.status, exc.message, "bad_request")
            return None
        except ProtocolError as exc:  # a malformed form, found while it arrived
            status, payload, headers = http_error(exc)
            await exchange.respond_json(status, payload, *headers)
            return None

    async def _check_head(self, exchange: HttpExchange, request: HttpRequest) -> Route | None:
        """The checks the head alone decides, in order; None when one refused."""
        refusal = self.policy.refusal(request.headers)
        if refusal is not None:
            log.info("http_request_forbidden", reason=refusal)
            await self._error(exchange, 403, refusal, "forbidden", kind="permission_error")
            return None
        # A page of an allowed origin (not this server's own) may read the answer (CORS).
        exchange.cors_origin = self.policy.cross_origin(request.headers)
        methods = ROUTES.get(request.path, {})
        if request.path in WEB_FILES and not self.web_page:
            methods = {}
        if not methods:
            await self._error(exchange, 404, f"unknown path {request.path[:100]!r}", "not_found")
            return None
        allow = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
        if request.method == "OPTIONS":  # a CORS preflight: no key, no body
            await exchange.respond(
                204,
                [
                    ("allow", allow),
                    ("access-control-allow-methods", allow),
                    ("access-control-allow-headers", "authorization, content-type"),
                    ("access-control-max-age", "600"),
                ],
                b"",
            )
            return None
        route = methods.get(method_of(request))
        if route is None:
            message = f"method {request.method[:20]} not allowed on {request.path[:100]}"
            await self._error(
                exchange, 405, message, "method_not_allowed", extra=[("allow", allow)]
            )
            return None
        if not route.public and not self.keys.authorize(request.headers, request.target):
            await self._error(
                exchange,
                401,
                "missing or invalid API key (Authorization: Bearer KEY)",
                "invalid_api_key",
                kind="authentication_error",
                extra=[("www-authenticate", "Bearer")],
            )
            return None
        if self._full():
            await self._overloaded(exchange)
            return None
        if route.body == "json" and not _is_json(request.header("content-type")):
            await self._error(
                exchange, 415, "the body must be JSON (Content-Type: application/json)", "media"
            )
            return None
        if route.body == "form":
            voices = self.context.voices
            if voices is None or not voices.allow_upload:
                status, payload, headers = http_error(
                    ProtocolError(
                        ErrorCode.FORBIDDEN,
                        "voice upload is disabled on this server (--allow-voice-upload)",
                    )
                )
                await exchange.respond_json(status, payload, *headers)
                return None
            if form_boundary(request.header("content-type") or "") is None:
                await self._error(
                    exchange, 415, "expected a multipart/form-data body with a boundary", "media"
                )
                return None
        return route

    async def _read_body(
        self, exchange: HttpExchange, request: HttpRequest, route: Route, charged: list[int]
    ) -> Call:
        limit = self._body_limit(route.body)
        declared = exchange.declared_length(request)
        if declared is not None and declared > limit:
            raise BadRequest(413, f"request body of {declared} bytes is over {limit}")
        body = bytearray()
        form: FormReader | None = None
        if route.body == "form":
            assert self.context.voices is not None
            boundary = form_boundary(request.header("content-type") or "")
            assert boundary is not None
            form = FormReader(boundary, max_file_bytes=self.context.voices.max_prompt_bytes)

        def take(data: bytes) -> None:
            if not self.budget.take(len(data)):
                raise BadRequest(503, "server busy: too many request bodies in flight")
            charged[0] += len(data)
            if form is not None:
                form.feed(data)
            elif route.body == "json":
                body.extend(data)

        await exchange.read_body(limit, take)
        if form is None:
            return Call(exchange, request, bytes(body))
        fields, audio = form.finish()
        return Call(exchange, request, fields=fields, audio=audio)

    def _body_limit(self, kind: BodyKind) -> int:
        if kind == "json":
            # Room for the longest text even if every character is a \\u escape pair.
            return max(_MAX_JSON_BODY, 12 * self.context.settings.max_text_chars + 4096)
        if kind == "form" and self.context.voices is not None:
            return self.context.voices.max_prompt_bytes + _FORM_OVERHEAD
        return _MAX_IGNORED_BODY

    def _full(self) -> bool:
        return self.active >= self.context.settings.max_connections

    async def _overloaded(self, exchange: HttpExchange) -> None:
        # Bounded like WebSocket connections (TTS_MAX_CONNECTIONS).
        await self._error(
            exchange,
            503,
            "too many connections",
            "overloaded",
            kind="server_error",
            extra=[("retry-after", "1")],
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


def _is_json(content_type: str | None) -> bool:
    """No Content-Type (SDKs, scripts) or a JSON one; never a form or text/plain."""
    if content_type is None:
        return True
    kind, _ = parse_options_header(content_type)
    return kind == b"application/json" or kind.endswith(b"+json")


def _first(group: BaseException | None) -> BaseException | None:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group
