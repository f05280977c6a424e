"""Fetch a prompt_wav_url without becoming an SSRF proxy.

Rules, each enforced on every hop (the first URL and each redirect):

- the scheme is http or https; the URL is ASCII with no spaces, control characters,
  user name or password;
- the host is on the allow-list (exact, case-insensitive; ``*.example.com`` matches
  subdomains of example.com, not example.com itself);
- the name is resolved once, and if ANY address is loopback, link-local, private,
  multicast, reserved, unspecified or otherwise not global, the fetch is refused
  unless ``allow_private``; cloud metadata addresses are refused even then;
- the connection goes to the address just checked (never to the name again, which a
  rebinding DNS could point elsewhere); the name goes in Host and in TLS SNI, and
  the certificate is verified against it;
- redirects (301/302/303/307/308) are followed at most ``max_redirects`` times, never
  from https to http, and a loop is refused;
- only a 200 with an identity body is accepted; Content-Length over ``max_bytes`` is
  refused before reading, and the body is counted as it streams;
- everything, redirects included, finishes within ``timeout`` seconds.

HTTP/1.1 framing is h11's (sans-IO, maintained by the python-hyper project) over
Trio streams; TLS is Trio's SSLStream.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import urllib.parse
from typing import Final

import attrs
import h11
import trio

from voxtrio.protocol._limits import MAX_PROMPT_BYTES

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_USER_AGENT: Final = "voxtrio-prompt-fetch/1"
_READ_SIZE: Final = 65536
# A real server sends at most one or two 1xx (100 Continue, 103 Early Hints) per request.
MAX_INTERIM_RESPONSES: Final = 8
# IPv6 forms that carry an IPv4 address in their low 32 bits (RFC 6052 NAT64, RFC 4291
# IPv4-compatible): a translator or stack may route them to that IPv4 address.
_NAT64_PREFIX: Final = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")


class FetchError(Exception):
    """The URL was refused or could not be fetched; `reason` says why, for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _normalise_hosts(hosts: frozenset[str] | set[str] | list[str]) -> frozenset[str]:
    return frozenset(h.strip().lower().strip("[]").rstrip(".") for h in hosts if h.strip())


@attrs.frozen(kw_only=True)
class FetchPolicy:
    """What the operator allows prompt_wav_url to fetch."""

    allowed_hosts: frozenset[str] = attrs.field(converter=_normalise_hosts)
    max_bytes: int = MAX_PROMPT_BYTES
    timeout: float = 10.0
    max_redirects: int = 3
    allow_private: bool = False
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class _Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


async def fetch_prompt(url: str, policy: FetchPolicy) -> bytes:
    """The body of `url` under `policy`, or FetchError."""
    try:
        with trio.fail_after(policy.timeout):
            return await _fetch(url, policy)
    except trio.TooSlowError:
        raise FetchError(f"timed out after {policy.timeout:g} s") from None


async def _fetch(url: str, policy: FetchPolicy) -> bytes:
    seen: set[str] = set()
    previous: _Target | None = None
    for _ in range(policy.max_redirects + 1):
        target = parse_url(url, policy)
        if previous is not None and previous.scheme == "https" and target.scheme == "http":
            raise FetchError("redirect from https to http refused")
        if target.url in seen:
            raise FetchError("redirect loop")
        seen.add(target.url)
        addresses = await resolve(target.host, target.port, policy)
        location = await _get(target, addresses, policy)
        if isinstance(location, bytes):
            return location
        url = urllib.parse.urljoin(target.url, location)
        previous = target
    raise FetchError(f"more than {policy.max_redirects} redirects")


def parse_url(url: str, policy: FetchPolicy) -> _Target:
    """Check a URL's form, scheme and host against the policy (no network)."""
    if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise FetchError("URL must be ASCII, without spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise FetchError(f"scheme {scheme or '(none)'!r} not allowed: http or https only")
    if parts.username is not None or parts.password is not None:
        raise FetchError("credentials in the URL are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchError("URL has no host")
    if not host_allowed(host, policy.allowed_hosts):
        raise FetchError(f"host {host!r} is not on the allow-list")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    normalised = urllib.parse.urlunsplit((scheme, parts.netloc.lower(), path, "", ""))
    return _Target(normalised, scheme, host, port or _DEFAULT_PORTS[scheme], path)


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """Exact (case-insensitive) match, or a `*.domain` entry matching a subdomain."""
    host = host.lower()
    if host in allowed:
        return True
    return any(
        entry.startswith("*.") and host.endswith(entry[1:]) and len(host) > len(entry) - 1
        for entry in allowed
    )


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, compatible, 6to4), or None."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64_PREFIX:
        return low32
    # ::/96 also holds :: and ::1, which are IPv6's own unspecified and loopback.
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return low32
    return None


def address_problem(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why an address may not be fetched from, or None if it may."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    embedded = embedded_ipv4(address)
    if embedded is not None:
        return address_problem(embedded, allow_private=allow_private)
    if allow_private:
        return None
    for problem, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return f"a {problem} address"
    if not address.is_global:
        return "not a global address"
    return None


async def resolve(host: str, port: int, policy: FetchPolicy) -> list[tuple[int, tuple[str, int]]]:
    """Resolve once; refuse if any address is off limits. Returns (family, sockaddr) pairs."""
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=trio.socket.SOCK_STREAM, proto=trio.socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError):
        raise FetchError(f"cannot resolve host {host!r}") from None
    addresses: list[tuple[int, tuple[str, int]]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip_text = str(sockaddr[0]).partition("%")[0]
        problem = address_problem(ipaddress.ip_address(ip_text), allow_private=policy.allow_private)
        if problem is not None:
            raise FetchError(f"host {host!r} resolves to {ip_text}, {problem}")
        entry = (int(family), (str(sockaddr[0]), int(sockaddr[1])))
        if entry not in addresses:
            addresses.append(entry)
    if not addresses:
        raise FetchError(f"cannot resolve host {host!r}")
    return addresses


async def _connect(
    target: _Target, addresses: list[tuple[int, tuple[str, int]]]
) -> trio.abc.Stream:
    """A TCP connection to the first checked address that answers (never to the name)."""
    last: OSError | None = None
    for family, sockaddr in addresses:
        sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            await sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)
    reason = last.strerror if last is not None and last.strerror else "no address"
    raise FetchError(f"cannot connect to {target.host}: {reason}")


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


async def _get(
    target: _Target, addresses: list[tuple[int, tuple[str, int]]], policy: FetchPolicy
) -> bytes | str:
    """One GET: the body of a 200, or the Location of a redirect."""
    stream = await _connect(target, addresses)
    try:
        if target.scheme == "https":
            context = policy.ssl_context or _default_ssl_context()
            tls = trio.SSLStream(
                stream, context, server_hostname=target.host, https_compatible=True
            )
            stream = tls
            try:
                await tls.do_handshake()
            except (ssl.SSLError, trio.BrokenResourceError) as exc:
                cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
                raise FetchError(f"TLS handshake with {target.host} failed: {cause}") from None
        return await _exchange(stream, target, policy)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise FetchError(f"connection to {target.host} failed: {exc}") from None
    except h11.ProtocolError as exc:
        raise FetchError(f"malformed HTTP response from {target.host}: {exc}") from None
    finally:
        await trio.aclose_forcefully(stream)


async def _exchange(stream: trio.abc.Stream, target: _Target, policy: FetchPolicy) -> bytes | str:
    conn = h11.Connection(our_role=h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target.path,
        headers=[
            ("Host", target.host_header),
            ("User-Agent", _USER_AGENT),
            ("Accept", "*/*"),
            ("Accept-Encoding", "identity"),
            ("Connection", "close"),
        ],
    )
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))

    async def next_event() -> h11.Event | None:
        """The next event, reading as needed; None when h11 pauses (it never should here)."""
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is not h11.NEED_DATA:
                return None
            conn.receive_data(bytes(await stream.receive_some(_READ_SIZE)))

    event = await next_event()
    interim = 0
    while isinstance(event, h11.InformationalResponse):
        interim += 1
        if interim > MAX_INTERIM_RESPONSES:
            # Parsing a flood of buffered 1xx never yields: bound it instead of
            # spending the whole fetch deadline on the event loop.
            raise FetchError(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses")
        event = await next_event()
    if not isinstance(event, h11.Response):
        raise FetchError(f"no HTTP response from {target.host}")
    headers = {name.lower(): value for name, value in event.headers}
    status = event.status_code
    if status in REDIRECT_STATUSES:
        location = headers.get(b"location")
        if not location:
            raise FetchError(f"HTTP {status} without a Location")
        return location.decode("ascii", "replace")
    if status != 200:
        raise FetchError(f"HTTP {status} from {target.host}")
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding != b"identity":
        raise FetchError(f"unsupported Content-Encoding {encoding.decode('ascii', 'replace')!r}")
    length = headers.get(b"content-length")
    if length is not None and int(length) > policy.max_bytes:
        raise FetchError(f"too large: {int(length)} bytes, at most {policy.max_bytes}")
    body = bytearray()
    while True:
        event = await next_event()
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > policy.max_bytes:
                raise FetchError(f"too large: over {policy.max_bytes} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise FetchError(f"incomplete HTTP response from {target.host}")
