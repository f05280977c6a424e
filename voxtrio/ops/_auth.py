"""API keys: where they come from, how a handshake presents one, and a constant-time check.

Keys come from `TTS_API_KEYS` (comma-separated) and/or a key file (one per line,
`#` comments and blank lines ignored). Only their SHA-256 digests are kept, so no
repr, log line, traceback or core dump of a `KeyStore` can show a key. A
presented key is hashed and compared with `hmac.compare_digest` against every
stored digest, with no early exit: the time taken depends on neither the key's
length nor which key (if any) matched.

Reloading (SIGHUP) is fail-closed: the new key set replaces the old one only if
the file was read and every key in it is valid, and never when the result would
be no keys at all (that would switch authentication off). Otherwise the old keys
stay in force and the reason is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import structlog

from voxtrio._config import ConfigError, is_loopback

log = structlog.get_logger("voxtrio.auth")

MIN_KEY_LENGTH = 16
ENV_KEYS = "TTS_API_KEYS"
QUERY_PARAM = "api_key"
_REDACTED = "REDACTED"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _validate(key: str, where: str) -> None:
    """Raise ConfigError naming `where` (never the key) for a key we refuse."""
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"{where}: API key is {len(key)} characters; at least {MIN_KEY_LENGTH} are required"
        )
    # Keys travel in an HTTP header and a query string: printable ASCII without
    # spaces survives both unchanged (a space would end a Bearer token).
    if not all("!" <= ch <= "~" for ch in key):
        raise ConfigError(f"{where}: API key contains whitespace, control or non-ASCII characters")


def parse_env_keys(value: str, source: str = ENV_KEYS) -> list[str]:
    """Keys from a comma-separated value; empty entries are ignored."""
    keys = []
    for index, raw in enumerate(value.split(","), start=1):
        key = raw.strip()
        if key:
            _validate(key, f"{source} entry {index}")
            keys.append(key)
    return keys


def parse_key_file(text: str, source: str) -> list[str]:
    """Keys from key-file text: one per line, `#` comments and blank lines ignored."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if key and not key.startswith("#"):
            _validate(key, f"{source} line {number}")
            keys.append(key)
    return keys


def _read_key_file(path: Path) -> list[str]:
    source = f"API key file {str(path)!r}"
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"cannot read {source}: {reason}") from None
    if info.st_mode & 0o077:
        # Like ssh with private keys: say so, but do not refuse to start.
        log.warning(
            "api_key_file_permissions",
            path=str(path),
            mode=oct(stat.S_IMODE(info.st_mode)),
            hint="chmod 600 it, owned by the service user",
        )
    return parse_key_file(text, source)


class KeyStore:
    """The accepted API keys (as digests); authentication is on when there is one."""

    def __init__(
        self, keys: Iterable[str] = (), *, key_file: str | os.PathLike[str] | None = None
    ) -> None:
        keys = list(keys)
        for index, key in enumerate(keys, start=1):
            _validate(key, f"API key {index}")
        self._env_digests = frozenset(_digest(key) for key in keys)
        self._key_file = Path(key_file) if key_file is not None else None
        file_digests: frozenset[bytes] = frozenset()
        if self._key_file is not None:
            file_digests = frozenset(_digest(key) for key in _read_key_file(self._key_file))
            if not file_digests and not self._env_digests:
                # An operator who names a key file means to require keys: an empty
                # one must not quietly start an open server.
                raise ConfigError(f"API key file {str(self._key_file)!r} holds no keys")
        self._digests: tuple[bytes, ...] = tuple(self._env_digests | file_digests)

    @classmethod
    def from_sources(
        cls,
        *,
        env_value: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        env_name: str = ENV_KEYS,
    ) -> KeyStore:
        """Keys from an env value (`TTS_API_KEYS`) and/or a key file; ConfigError if invalid."""
        keys = parse_env_keys(env_value, env_name) if env_value else []
        return cls(keys, key_file=key_file)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, key_file: str | os.PathLike[str] | None = None
    ) -> KeyStore:
        return cls.from_sources(env_value=environ.get(ENV_KEYS), key_file=key_file)

    @property
    def enabled(self) -> bool:
        """Whether clients must present a key."""
        return bool(self._digests)

    @property
    def key_file(self) -> Path | None:
        return self._key_file

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        # The count only: never a key, never a digest.
        return f"<KeyStore {len(self._digests)} keys>"

    def check(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys, in time independent of which matched."""
        if presented is None or not self._digests:
            return False
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:
            # `|` rather than `or`: compare against every key, no early exit.
            matched |= hmac.compare_digest(candidate, digest)
        return matched

    def authorize(self, headers: Sequence[tuple[bytes, bytes]], target: str) -> bool:
        """A handshake's verdict: True when authentication is off or its key is valid."""
        return not self.enabled or self.check(presented_key(headers, target))

    def reload(self) -> bool:
        """Re-read the key file (SIGHUP); keep the old keys on any problem. True if replaced."""
        if self._key_file is None:
            return False
        try:
            file_digests = frozenset(_digest(key) for key in _read_key_file(self._key_file))
        except ConfigError as exc:
            log.error("api_keys_reload_failed", error=str(exc), kept=len(self._digests))
            return False
        digests = self._env_digests | file_digests
        if not digests:
            log.error(
                "api_keys_reload_failed",
                error=f"API key file {str(self._key_file)!r} holds no keys; "
                "refusing to switch authentication off",
                kept=len(self._digests),
            )
            return False
        self._digests = tuple(digests)
        log.info("api_keys_reloaded", keys=len(self._digests), path=str(self._key_file))
        return True


def presented_key(headers: Sequence[tuple[bytes, bytes]], target: str) -> str | None:
    """The key a handshake presents: `Authorization: Bearer KEY`, else `?api_key=KEY`.

    Header names and the scheme are case-insensitive; the query value is
    URL-decoded. The header wins when both are present.
    """
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
    query = urlsplit(target).query
    for param, param_value in parse_qsl(query, keep_blank_values=True):
        if param == QUERY_PARAM and param_value:
            return param_value
    return None


def redact_target(target: str) -> str:
    """A request target safe to log: the `api_key` query value replaced."""
    parts = urlsplit(target)
    if not parts.query:
        return target
    pairs = []
    for item in parts.query.split("&"):
        name, sep, _value = item.partition("=")
        pairs.append(f"{name}={_REDACTED}" if name == QUERY_PARAM and sep else item)
    return urlunsplit(parts._replace(query="&".join(pairs)))


def check_exposure(
    host: str, *, what: str, authenticated: bool, allow_unauthenticated: bool
) -> None:
    """Refuse to listen beyond loopback without keys unless explicitly allowed.

    `what` names the listener and its settings for the message, e.g.
    "the metrics port (METRICS_HOST/--metrics-host)".
    """
    if authenticated or allow_unauthenticated or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve {what} on {host!r} without API keys; set TTS_API_KEYS or "
        "--api-key-file, or pass --allow-unauthenticated (TTS_ALLOW_UNAUTHENTICATED=true)"
    )
