"""prompt_wav_url fetching: allow-list, SSRF guard, redirects, size and time caps.

The servers are real HTTP (and HTTPS) servers on loopback, written with h11 over Trio.
Fake host names resolve through a Trio custom resolver that counts its lookups.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import h11
import pytest
import trio
import trustme

from voxtrio.voices._fetch import (
    FetchError,
    FetchPolicy,
    address_problem,
    fetch_prompt,
    host_allowed,
)

BODY = b"RIFF" + bytes(range(256)) * 40

Reply = tuple[int, list[tuple[str, str]], bytes]


@attrs.define
class Hit:
    target: str
    host: str


@attrs.define
class Server:
    """An HTTP server on 127.0.0.1 whose routes are `async (hit) -> (status, headers, body)`."""

    routes: dict[str, Callable[[Hit], Awaitable[Reply]]] = attrs.Factory(dict)
    hits: list[Hit] = attrs.Factory(list)
    port: int = 0
    connections: int = 0

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        conn = h11.Connection(our_role=h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive_some(65536))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                continue
            break
        assert isinstance(event, h11.Request)
        headers = dict(event.headers)
        hit = Hit(event.target.decode(), headers[b"host"].decode())
        self.hits.append(hit)
        route = self.routes.get(hit.target.partition("?")[0])
        status, extra, body = await route(hit) if route else (404, [], b"not found")
        reply_headers = [("Connection", "close"), *extra]
        if not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in extra):
            reply_headers.append(("Content-Length", str(len(body))))
        try:
            await stream.send_all(
                conn.send(h11.Response(status_code=status, headers=reply_headers))
            )
            if body:
                await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await stream.aclose()


async def ok(hit: Hit) -> Reply:
    return 200, [], BODY


def redirect(location: str, status: int = 302) -> Callable[[Hit], Awaitable[Reply]]:
    async def reply(hit: Hit) -> Reply:
        return status, [("Location", location)], b""

    return reply


class Resolver(trio.abc.HostnameResolver):
    """Resolves fake names to fixed addresses and counts every lookup."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.lookups: list[str] = []

    async def getaddrinfo(self, host: bytes | str | None, port: Any, *args: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        self.lookups.append(name)
        if name not in self.names:
            raise OSError(-2, "Name or service not known")
        address = self.names[name]
        family = trio.socket.AF_INET6 if ":" in address else trio.socket.AF_INET
        sockaddr = (address, int(port), 0, 0) if ":" in address else (address, int(port))
        return [(family, trio.socket.SOCK_STREAM, 6, "", sockaddr)]

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        raise NotImplementedError


@pytest.fixture
async def resolver() -> AsyncIterator[Resolver]:
    fake = Resolver({"voices.test": "127.0.0.1", "other.test": "127.0.0.1"})
    previous = trio.socket.set_custom_hostname_resolver(fake)
    try:
        yield fake
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


async def start(nursery: trio.Nursery, server: Server, host: str = "127.0.0.1") -> Server:
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host=host))
    server.port = listeners[0].socket.getsockname()[1]
    return server


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    return await start(nursery, Server(routes={"/voice.wav": ok}))


def policy(**overrides: Any) -> FetchPolicy:
    options: dict[str, Any] = {
        "allowed_hosts": frozenset({"127.0.0.1", "voices.test"}),
        "allow_private": True,
        "timeout": 2.0,
        **overrides,
    }
    return FetchPolicy(**options)


async def refused(url: str, fetch_policy: FetchPolicy) -> str:
    with pytest.raises(FetchError) as info:
        await fetch_prompt(url, fetch_policy)
    return info.value.reason


async def test_fetches_an_allow_listed_url(server: Server) -> None:
    """A 200 from an allow-listed host returns its body."""
    assert await fetch_prompt(f"http://127.0.0.1:{server.port}/voice.wav?v=1", policy()) == BODY
    assert server.hits == [Hit("/voice.wav?v=1", f"127.0.0.1:{server.port}")]


async def test_connects_to_the_resolved_address_with_the_name_as_host(
    server: Server, resolver: Resolver
) -> None:
    """The name is resolved once and sent as Host; the socket goes to the checked address."""
    url = f"http://voices.test:{server.port}/voice.wav"
    assert await fetch_prompt(url, policy()) == BODY
    assert resolver.lookups == ["voices.test"]
    assert server.hits[0].host == f"voices.test:{server.port}"


async def test_host_not_on_the_allow_list_is_never_contacted(
    server: Server, resolver: Resolver
) -> None:
    """A host missing from the allow-list is refused with no lookup and no connection."""
    reason = await refused(f"http://other.test:{server.port}/voice.wav", policy())
    assert reason == "host 'other.test' is not on the allow-list"
    assert resolver.lookups == []
    assert server.connections == 0


async def test_allow_list_is_case_insensitive(server: Server, resolver: Resolver) -> None:
    """VOICES.test matches the allow-list entry voices.test."""
    assert await fetch_prompt(f"http://VOICES.test:{server.port}/voice.wav", policy()) == BODY


def test_wildcard_entry_matches_subdomains_only() -> None:
    """*.example.com matches subdomains, not example.com itself or evilexample.com."""
    allowed = frozenset({"*.example.com"})
    assert host_allowed("a.example.com", allowed)
    assert host_allowed("a.b.example.com", allowed)
    assert not host_allowed("example.com", allowed)
    assert not host_allowed("evilexample.com", allowed)


async def test_loopback_is_refused_without_allow_private(server: Server) -> None:
    """An allow-listed host on a loopback address is still refused (the SSRF guard)."""
    reason = await refused(f"http://127.0.0.1:{server.port}/voice.wav", policy(allow_private=False))
    assert reason == "host '127.0.0.1' resolves to 127.0.0.1, a loopback address"
    assert server.connections == 0


async def test_name_resolving_to_a_private_address_is_refused(resolver: Resolver) -> None:
    """A name that resolves into 10.0.0.0/8 is refused before connecting."""
    resolver.names["voices.test"] = "10.1.2.3"
    reason = await refused("http://voices.test/voice.wav", policy(allow_private=False))
    assert reason == "host 'voices.test' resolves to 10.1.2.3, a private address"


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("64:ff9b::127.0.0.1", "a loopback address"),
        ("64:ff9b::10.0.0.1", "a private address"),
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),
        ("::10.0.0.1", "a private address"),
        ("::169.254.169.254", "a cloud metadata address"),
        ("::127.0.0.1", "a loopback address"),
        ("2002:a9fe:a9fe::1", "a cloud metadata address"),
        ("64:ff9b::8.8.8.8", None),
        ("192.168.1.1", "a private address"),
        ("fc00::1", "a private address"),
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "a private address"),
        ("100.64.0.1", "not a global address"),
        ("240.0.0.1", "a private address"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_address_classes(address: str, problem: str | None) -> None:
    """Loopback, link-local, private, multicast, reserved and metadata ranges are refused."""
    import ipaddress

    assert address_problem(ipaddress.ip_address(address), allow_private=False) == problem


def test_metadata_is_refused_even_with_allow_private() -> None:
    """allow_private never opens the cloud metadata endpoints."""
    import ipaddress

    problem = address_problem(ipaddress.ip_address("169.254.169.254"), allow_private=True)
    assert problem == "a cloud metadata address"


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "::a9fe:a9fe", "2002:a9fe:a9fe::1"])
def test_embedded_metadata_is_refused_even_with_allow_private(address: str) -> None:
    """NAT64, IPv4-compatible and 6to4 forms of a metadata address are refused as one."""
    import ipaddress

    problem = address_problem(ipaddress.ip_address(address), allow_private=True)
    assert problem == "a cloud metadata address"


async def test_any_bad_address_refuses_the_host(resolver: Resolver) -> None:
    """A name with one public and one private address is refused."""

    async def two(host: Any, port: Any, *args: Any) -> Any:
        return [
            (trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
            (trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    resolver.getaddrinfo = two  # type: ignore[method-assign]
    reason = await refused("http://voices.test/x.wav", policy(allow_private=False))
    assert reason == "host 'voices.test' resolves to 10.0.0.1, a private address"


async def test_ipv6_literal_is_fetched(nursery: trio.Nursery) -> None:
    """An [::1] URL reaches an IPv6 server when ::1 is allow-listed and private is allowed."""
    v6 = await start(nursery, Server(routes={"/voice.wav": ok}), host="::1")
    got = await fetch_prompt(
        f"http://[::1]:{v6.port}/voice.wav", policy(allowed_hosts=frozenset({"[::1]"}))
    )
    assert got == BODY
    assert v6.hits[0].host == f"[::1]:{v6.port}"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/voice.wav",
        "gopher://127.0.0.1:70/_x",
        "data:audio/wav;base64,UklGRg==",
        "127.0.0.1/voice.wav",
    ],
)
async def test_other_schemes_are_refused(url: str) -> None:
    """Only http and https are fetched."""
    assert "not allowed: http or https only" in await refused(url, policy())


async def test_credentials_in_url_are_refused(server: Server) -> None:
    """user:password@ in the URL is refused before any connection."""
    reason = await refused(f"http://u:p@127.0.0.1:{server.port}/voice.wav", policy())
    assert reason == "credentials in the URL are not allowed"
    assert server.connections == 0


async def test_spaces_and_control_characters_are_refused() -> None:
    """A URL with a CR/LF (header injection) or a space is refused."""
    reason = await refused("http://127.0.0.1/a\r\nX-Evil: 1", policy())
    assert reason == "URL must be ASCII, without spaces or control characters"


async def test_not_found_is_an_error(server: Server) -> None:
    """Any status other than 200 (here 404) is refused with the status."""
    reason = await refused(f"http://127.0.0.1:{server.port}/missing.wav", policy())
    assert reason == "HTTP 404 from 127.0.0.1"


async def test_oversize_content_length_is_refused_before_the_body(server: Server) -> None:
    """A Content-Length over max_bytes is refused without reading the body."""
    reason = await refused(
        f"http://127.0.0.1:{server.port}/voice.wav", policy(max_bytes=len(BODY) - 1)
    )
    assert reason == f"too large: {len(BODY)} bytes, at most {len(BODY) - 1}"


async def test_oversize_streamed_body_is_cut_off(server: Server) -> None:
    """A chunked body with no length is counted as it arrives and refused past the cap."""

    async def endless(hit: Hit) -> Reply:
        return 200, [("Transfer-Encoding", "chunked")], b"x" * 200_000

    server.routes["/stream"] = endless
    reason = await refused(f"http://127.0.0.1:{server.port}/stream", policy(max_bytes=100_000))
    assert reason == "too large: over 100000 bytes"


async def test_slow_server_hits_the_time_cap(server: Server) -> None:
    """A server that stalls is abandoned after the policy's timeout."""

    async def stall(hit: Hit) -> Reply:
        await trio.sleep(10)
        return 200, [], BODY

    server.routes["/slow"] = stall
    started = trio.current_time()
    reason = await refused(f"http://127.0.0.1:{server.port}/slow", policy(timeout=0.5))
    assert reason == "timed out after 0.5 s"
    assert trio.current_time() - started < 1.5


async def test_interim_response_flood_is_refused_promptly(nursery: trio.Nursery) -> None:
    """Thousands of 1xx responses end the fetch at once instead of busying the loop."""

    async def flood(stream: trio.abc.Stream) -> None:
        await stream.receive_some(65536)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n" * 20_000)
            await trio.sleep(10)

    listeners = await nursery.start(partial(trio.serve_tcp, flood, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    started = trio.current_time()
    reason = await refused(f"http://127.0.0.1:{port}/voice.wav", policy(timeout=5.0))
    assert reason == "more than 8 interim (1xx) responses"
    assert trio.current_time() - started < 1.0


async def test_redirect_to_an_allow_listed_host_is_followed(
    server: Server, resolver: Resolver
) -> None:
    """A relative or absolute redirect to an allowed host is followed and re-resolved."""
    server.routes["/old"] = redirect(f"http://voices.test:{server.port}/voice.wav", 301)
    assert await fetch_prompt(f"http://127.0.0.1:{server.port}/old", policy()) == BODY
    assert resolver.lookups == ["voices.test"]
    assert [h.target for h in server.hits] == ["/old", "/voice.wav"]


async def test_redirect_off_the_allow_list_is_refused(server: Server, resolver: Resolver) -> None:
    """A redirect to a host not on the allow-list is refused and not followed."""
    server.routes["/away"] = redirect(f"http://other.test:{server.port}/voice.wav")
    reason = await refused(f"http://127.0.0.1:{server.port}/away", policy())
    assert reason == "host 'other.test' is not on the allow-list"
    assert [h.target for h in server.hits] == ["/away"]


async def test_redirect_target_address_is_checked_again(server: Server) -> None:
    """A redirect to an allow-listed host on a metadata address is refused before connecting."""
    server.routes["/meta"] = redirect("http://169.254.169.254/latest/meta-data/")
    hosts = frozenset({"127.0.0.1", "169.254.169.254"})
    reason = await refused(f"http://127.0.0.1:{server.port}/meta", policy(allowed_hosts=hosts))
    assert reason == "host '169.254.169.254' resolves to 169.254.169.254, a cloud metadata address"


async def test_redirect_loop_is_refused(server: Server) -> None:
    """Two URLs redirecting to each other are refused as a loop."""
    server.routes["/a"] = redirect("/b")
    server.routes["/b"] = redirect("/a")
    reason = await refused(f"http://127.0.0.1:{server.port}/a", policy(max_redirects=10))
    assert reason == "redirect loop"


async def test_redirect_chain_is_bounded(server: Server) -> None:
    """More redirects than max_redirects are refused."""
    for index in range(5):
        server.routes[f"/{index}"] = redirect(f"/{index + 1}")
    reason = await refused(f"http://127.0.0.1:{server.port}/0", policy(max_redirects=2))
    assert reason == "more than 2 redirects"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def start_tls(nursery: trio.Nursery, ca: trustme.CA, name: str) -> Server:
    server = Server(routes={"/voice.wav": ok})
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)

    async def handle(stream: trio.abc.Stream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return
        await server.handle(tls)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


def tls_policy(ca: trustme.CA) -> FetchPolicy:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return policy(ssl_context=context)


async def test_https_verifies_the_name_while_connecting_to_the_ip(
    nursery: trio.Nursery, ca: trustme.CA, resolver: Resolver
) -> None:
    """HTTPS to voices.test checks its certificate (via SNI) on the resolved address."""
    server = await start_tls(nursery, ca, "voices.test")
    got = await fetch_prompt(f"https://voices.test:{server.port}/voice.wav", tls_policy(ca))
    assert got == BODY
    assert server.hits[0].host == f"voices.test:{server.port}"


async def test_https_with_the_wrong_certificate_is_refused(
    nursery: trio.Nursery, ca: trustme.CA, resolver: Resolver
) -> None:
    """A certificate for another name fails the handshake."""
    server = await start_tls(nursery, ca, "elsewhere.test")
    reason = await refused(f"https://voices.test:{server.port}/voice.wav", tls_policy(ca))
    assert reason.startswith("TLS handshake with voices.test failed:")
    assert "certificate verify failed" in reason


async def test_https_to_http_redirect_is_refused(
    nursery: trio.Nursery, ca: trustme.CA, resolver: Resolver
) -> None:
    """A redirect that downgrades https to http is refused."""
    server = await start_tls(nursery, ca, "voices.test")
    server.routes["/down"] = redirect(f"http://voices.test:{server.port}/voice.wav")
    reason = await refused(f"https://voices.test:{server.port}/down", tls_policy(ca))
    assert reason == "redirect from https to http refused"
