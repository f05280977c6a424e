"""A small HTTP/1.1 server for the side port (/metrics, /health, /ready), on Trio + h11.

h11 does all the parsing and framing; this module is the thin I/O adapter around
it. One request per connection: every response carries `Connection: close`, which
keeps the state machine trivial and costs nothing at scrape and health-check rates.
Each connection has a deadline for its request (slow or stalled clients are
answered 408 and closed), a size cap, and its own error boundary: a route that
raises answers 500 and the server goes on. When every slot is taken, a new
connection evicts the one that has waited longest for its request head, so a
slowloris cannot lock out health checks (they send their request at once).
"""

from __future__ import annotations

import http
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import attrs
import h11
import structlog
import trio

log = structlog.get_logger("voxtrio.http")

ALLOWED_METHODS = ("GET", "HEAD")
_RECEIVE_SIZE = 4096
# After the response: how long to read and discard what the client still sends,
# so closing with unread data does not reset the connection under the response.
_LINGER_S = 1.0
# At most one "connection shed" warning per this many seconds; the rest are counted.
_SHED_LOG_INTERVAL_S = 10.0
# Headers a route may not set: framing is this module's job.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


@attrs.frozen
class HttpRequest:
    """What a route sees of a request."""

    method: str
    target: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower().encode("ascii")
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None


RouteResult = tuple[int, list[tuple[str, str]], bytes]
Route = Callable[[HttpRequest], RouteResult]


def text_response(status: int, text: str, *extra: tuple[str, str]) -> RouteResult:
    return status, [("content-type", "text/plain; charset=utf-8"), *extra], text.encode()


def protect(route: Route, authorize: Callable[[HttpRequest], bool]) -> Route:
    """`route` behind a check: 401 with `WWW-Authenticate: Bearer` when it fails."""

    def protected(request: HttpRequest) -> RouteResult:
        if not authorize(request):
            return text_response(401, "unauthorized\n", ("www-authenticate", "Bearer"))
        return route(request)

    return protected


class _Refused(Exception):
    """The request cannot be served; answer with `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def serve_http(
    host: str,
    port: int,
    routes: Mapping[str, Route],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    request_timeout: float = 10.0,
    max_request_bytes: int = 16384,
    max_connections: int = 64,
    handler_nursery: trio.Nursery | None = None,
    on_shed: Callable[[str], None] | None = None,
) -> None:
    """Serve `routes` (path -> route) on host:port until cancelled (`nursery.start`-able).

    Reports the real port (useful with port=0). Listens on `host` only; when a
    name resolves to several addresses and port=0, only the first is kept, since
    each would get a different port. `on_shed(reason)` is told of every connection
    dropped for lack of a slot ("evicted": a stalled one made room; "refused").
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        if port == 0 and len(listeners) > 1:
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        real_port: int = listeners[0].socket.getsockname()[1]
        server = _HttpServer(
            dict(routes),
            request_timeout=request_timeout,
            max_request_bytes=max_request_bytes,
            max_connections=max_connections,
            on_shed=on_shed,
        )
        log.info("http_listening", host=host, port=real_port, paths=sorted(routes))
        task_status.started(real_port)
        await trio.serve_listeners(server.handle, listeners, handler_nursery=handler_nursery)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()


class _HttpServer:
    def __init__(
        self,
        routes: dict[str, Route],
        *,
        request_timeout: float,
        max_request_bytes: int,
        max_connections: int,
        on_shed: Callable[[str], None] | None = None,
    ) -> None:
        self.routes = routes
        self.request_timeout = request_timeout
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.open_connections = 0
        self._on_shed = on_shed
        # Connections still reading their request, oldest first (dicts keep order).
        self._awaiting_request: dict[trio.CancelScope, None] = {}
        self._shed_since_log = 0
        self._last_shed_log = -_SHED_LOG_INTERVAL_S

    def _shed(self, reason: str) -> None:
        """Count a dropped connection; warn at most once per interval (no log flood)."""
        if self._on_shed is not None:
            self._on_shed(reason)
        self._shed_since_log += 1
        now = trio.current_time()
        if now - self._last_shed_log >= _SHED_LOG_INTERVAL_S:
            log.warning(
                "http_connections_shed",
                reason=reason,
                count=self._shed_since_log,
                max_connections=self.max_connections,
            )
            self._shed_since_log = 0
            self._last_shed_log = now

    def _evict_oldest_waiting(self) -> bool:
        """Cancel the connection that has waited longest for its request; False if none."""
        for scope in self._awaiting_request:
            del self._awaiting_request[scope]
            scope.cancel()
            return True
        return False

    async def handle(self, stream: trio.SocketStream) -> None:
        """The error boundary: nothing one connection does may reach the listener."""
        if self.open_connections >= self.max_connections:
            if self._evict_oldest_waiting():
                self._shed("evicted")
            else:
                self._shed("refused")
                await trio.aclose_forcefully(stream)
                return
        self.open_connections += 1
        try:
            await self._serve_one(stream)
        except trio.BrokenResourceError:
            log.debug("http_connection_reset")
        except Exception:
            log.exception("http_connection_failed")
        finally:
            self.open_connections -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_request_bytes)
        started = time.perf_counter()
        request: HttpRequest | None = None
        result: RouteResult
        with trio.move_on_after(self.request_timeout) as deadline:
            with trio.CancelScope() as slot:
                self._awaiting_request[slot] = None
                try:
                    request = await self._read_request(stream, conn)
                except _Refused as refused:
                    log.info("http_request_refused", status=refused.status, reason=refused.reason)
                    result = text_response(refused.status, f"{refused.reason}\n")
                else:
                    if request is None:
                        return  # closed before sending a request
                    result = self._dispatch(request)
                finally:
                    self._awaiting_request.pop(slot, None)
            if slot.cancelled_caught:
                return  # evicted to make room: close without a word
        if deadline.cancelled_caught:
            log.info("http_request_timeout", timeout=self.request_timeout)
            result = text_response(408, "request timeout\n")
        with trio.move_on_after(self.request_timeout):
            head = request is not None and request.method == "HEAD"
            if not await self._respond(stream, conn, result, head=head):
                return
            log.debug(
                "http_request",
                method=request.method if request else None,
                path=request.path[:200] if request else None,
                status=result[0],
                duration_s=round(time.perf_counter() - started, 6),
            )
            await self._linger(stream)

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> HttpRequest | None:
        """Read one whole request (a body is read and discarded); None on a clean EOF."""
        body_bytes = 0
        request: HttpRequest | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 hints 431 when the headers outgrow max_incomplete_event_size.
                status = exc.error_status_hint
                reason = "request too large" if status == 431 else "bad request"
                raise _Refused(status, reason) from None
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            elif isinstance(event, h11.Data):
                # No route reads a body: count it against the cap and drop it.
                body_bytes += len(event.data)
                if body_bytes > self.max_request_bytes:
                    raise _Refused(413, "request too large")
            elif isinstance(event, h11.Request):
                # h11 bounds only what it buffers of an incomplete head; a head that
                # arrived whole in one read is measured here.
                head_size = len(event.method) + len(event.target) + 12
                head_size += sum(len(k) + len(v) + 4 for k, v in event.headers.raw_items())
                if head_size > self.max_request_bytes:
                    raise _Refused(431, "request too large")
                target = event.target.decode("latin-1")
                request = HttpRequest(
                    method=event.method.decode("latin-1"),
                    target=target,
                    path=urlsplit(target).path or "/",
                    headers=tuple((bytes(k), bytes(v)) for k, v in event.headers),
                )
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _dispatch(self, request: HttpRequest) -> RouteResult:
        if request.method not in ALLOWED_METHODS:
            return text_response(405, "method not allowed\n", ("allow", ", ".join(ALLOWED_METHODS)))
        route = self.routes.get(request.path)
        if route is None:
            return text_response(404, "not found\n")
        try:
            status, headers, body = route(request)
            _check_result(status, headers, body)
        except Exception:
            log.exception("http_route_failed", path=request.path[:200])
            return text_response(500, "internal server error\n")
        return status, headers, body

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, result: RouteResult, *, head: bool
    ) -> bool:
        """Send `result`; False if the client is gone or h11 cannot answer any more."""
        if conn.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            return False
        status, route_headers, body = result
        headers = [
            (name, value) for name, value in route_headers if name.lower() not in _FRAMING_HEADERS
        ]
        headers += [("content-length", str(len(body))), ("connection", "close")]
        try:
            response = h11.Response(
                status_code=status, headers=headers, reason=reason_phrase(status)
            )
            data = conn.send(response) or b""
            # A HEAD response has the GET headers (Content-Length included), no body.
            if body and not head:
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            log.exception("http_response_failed", status=status)
            return False
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Half-close, then drain briefly, so the response is not lost to a reset."""
        try:
            await stream.send_eof()
            with trio.move_on_after(_LINGER_S):
                drained = 0
                while drained <= self.max_request_bytes:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def reason_phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _check_result(status: object, headers: object, body: object) -> None:
    if not (isinstance(status, int) and 100 <= status <= 599):
        raise TypeError(f"route returned status {status!r}")
    if not isinstance(body, bytes):
        raise TypeError(f"route returned a {type(body).__name__} body, not bytes")
    if not isinstance(headers, list):
        raise TypeError("route headers must be a list of (name, value) pairs")
