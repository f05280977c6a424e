"""Which browser pages may use this server: the Origin and Host checks.

A browser lets any page send a cross-site form POST (no preflight) or open a
WebSocket to any address, and DNS rebinding lets a page make its own name point
at 127.0.0.1. On a keyless loopback server (the default) that would let any web
page speak, list voices or register one. So, on every request of the shared port
(HTTP routes and WebSocket handshakes alike):

- `Origin`, when present (browsers send it on WebSocket handshakes and cross-site
  POSTs), must be the server's own origin (same host and port as `Host`) or one
  of `--allowed-origins`. Clients that are not browsers send no Origin and pass.
- `Host`, on a keyless server that listens on loopback, must be a loopback name
  or IP, an IP literal, the configured `--host`, or the host of an allowed
  origin: a rebinding page's requests carry its own name, which is none of
  these. (With API keys a rebinding page cannot authenticate, and beyond
  loopback the operator chose the names the server answers to, e.g. behind a
  proxy that forwards `Host`.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import attrs

from voxtrio._config import Settings, is_loopback

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@attrs.frozen
class BrowserPolicy:
    allowed_origins: frozenset[str]
    check_host: bool
    allowed_hosts: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings, *, keyed: bool = False) -> BrowserPolicy:
        origins = frozenset(settings.allowed_origins)
        hosts = {settings.host.strip("[]").lower()}
        hosts |= {split_host(origin.split("://", 1)[1])[0] for origin in origins if origin != "*"}
        check_host = is_loopback(settings.host) and not keyed
        return cls(origins, check_host=check_host, allowed_hosts=frozenset(hosts))

    def refusal(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """Why this request may not be served (a 403), or None when it may."""
        host = _header(headers, b"host")
        if self.check_host and host is not None and not self._host_allowed(host):
            return f"host {host[:100]!r} is not this server (DNS rebinding guard)"
        origin = _header(headers, b"origin")
        if origin is not None and not self._origin_allowed(origin, host):
            return f"origin {origin[:100]!r} is not allowed (--allowed-origins)"
        return None

    def cross_origin(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """The Origin of an allowed page other than this server's own (for CORS), or None."""
        origin = _header(headers, b"origin")
        if origin is None or self._same_origin(origin, _header(headers, b"host")):
            return None
        return origin if self._origin_allowed(origin, None) else None

    def _host_allowed(self, host: str) -> bool:
        name, _ = split_host(host)
        if name == "localhost" or name.endswith(".localhost") or name in self.allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True  # an IP literal cannot be rebound

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        normalized = origin.strip().rstrip("/").lower()
        if "*" in self.allowed_origins or normalized in self.allowed_origins:
            return True
        return self._same_origin(origin, host)

    def _same_origin(self, origin: str, host: str | None) -> bool:
        scheme, sep, rest = origin.strip().rstrip("/").lower().partition("://")
        if not sep or scheme not in _DEFAULT_PORTS or host is None:
            return False  # "null" (sandboxed pages, file://) or garbage
        default = _DEFAULT_PORTS[scheme]
        origin_name, origin_port = split_host(rest)
        host_name, host_port = split_host(host)
        return (origin_name, origin_port or default) == (host_name, host_port or default)


def split_host(value: str) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) as (lower-case name, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = value.partition(":") if value.count(":") == 1 else (value, "", "")
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else None
    return name, port


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
