"""API keys: sources, validation, the constant-time check, handshake extraction, reload."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from voxtrio._config import ConfigError
from voxtrio.ops import _auth as _auth
from voxtrio.ops._auth import KeyStore, check_exposure, presented_key, redact_target

KEY_A = "a" * 16 + "-alpha-key"
KEY_B = "b" * 16 + "-bravo-key"
KEY_C = "c" * 16 + "-charlie-key"


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_env_keys_are_comma_separated_and_stripped() -> None:
    """Each entry of TTS_API_KEYS is a key; whitespace and empty entries are ignored."""
    store = KeyStore.from_sources(env_value=f" {KEY_A} ,, {KEY_B},")
    assert len(store) == 2
    assert store.check(KEY_A)
    assert store.check(KEY_B)


def test_key_file_ignores_comments_and_blank_lines(tmp_path: Path) -> None:
    """A key file holds one key per line; comments and blank lines are skipped."""
    path = key_file(tmp_path, f"# team keys\n\n  {KEY_A}  \n\t# old: none\n{KEY_B}\n")
    store = KeyStore.from_sources(key_file=path)
    assert len(store) == 2
    assert store.check(KEY_A)
    assert store.check(KEY_B)


def test_env_and_file_keys_combine(tmp_path: Path) -> None:
    """Keys from the environment and from the file are both accepted."""
    store = KeyStore.from_sources(env_value=KEY_A, key_file=key_file(tmp_path, KEY_B))
    assert store.check(KEY_A)
    assert store.check(KEY_B)


def test_from_environ_reads_tts_api_keys() -> None:
    """`from_environ` takes the keys from TTS_API_KEYS."""
    store = KeyStore.from_environ({"TTS_API_KEYS": KEY_C})
    assert store.check(KEY_C)


def test_no_keys_means_authentication_is_off() -> None:
    """With no keys the store is disabled and authorizes every handshake."""
    store = KeyStore.from_sources(env_value="")
    assert not store.enabled
    assert not store.check(KEY_A)
    assert store.authorize([], "/tts")


def test_short_env_key_is_refused_without_echoing_it() -> None:
    """A key under 16 characters fails with the variable and entry named, not the key."""
    with pytest.raises(ConfigError, match=r"TTS_API_KEYS entry 2") as info:
        KeyStore.from_sources(env_value=f"{KEY_A},tooshort15chars")
    assert "tooshort15chars" not in str(info.value)


def test_short_file_key_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    """A short key in the file names the file and line, not the key."""
    path = key_file(tmp_path, f"{KEY_A}\n# comment\nshort-secret\n")
    with pytest.raises(ConfigError, match=r"api-keys.* line 3") as info:
        KeyStore.from_sources(key_file=path)
    assert "short-secret" not in str(info.value)


def test_key_with_inner_whitespace_is_refused() -> None:
    """A key with a space inside could not travel as a Bearer token."""
    with pytest.raises(ConfigError, match="whitespace"):
        KeyStore([KEY_A + " tail"])


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    """A key file that cannot be read fails start-up, naming the file."""
    with pytest.raises(ConfigError, match=r"cannot read API key file .*missing"):
        KeyStore.from_sources(key_file=tmp_path / "missing")


def test_empty_key_file_without_env_keys_is_a_config_error(tmp_path: Path) -> None:
    """Naming a key file that holds no keys must not start an open server."""
    with pytest.raises(ConfigError, match="holds no keys"):
        KeyStore.from_sources(key_file=key_file(tmp_path, "# nothing yet\n"))


@pytest.mark.parametrize(
    "presented", [None, "", KEY_B, KEY_A[:-1], KEY_A + "x", KEY_A.upper(), " " + KEY_A]
)
def test_check_rejects_anything_but_an_exact_key(presented: str | None) -> None:
    """Only an exact key passes: no prefix, suffix, case or whitespace variants."""
    assert not KeyStore([KEY_A]).check(presented)


def test_check_compares_equal_length_digests_against_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A match on the first key still compares all keys, always on 32-byte digests."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(_auth.hmac, "compare_digest", spy)
    store = KeyStore([KEY_A, KEY_B, KEY_C])
    assert store.check(KEY_A)
    assert not store.check("x")
    assert calls == [(32, 32)] * 6


def test_repr_and_state_never_show_a_key(tmp_path: Path) -> None:
    """The repr shows the count only and no attribute holds a key in clear."""
    store = KeyStore.from_sources(env_value=KEY_A, key_file=key_file(tmp_path, KEY_B))
    assert repr(store) == "<KeyStore 2 keys>"
    state = repr(vars(store))
    assert KEY_A not in state
    assert KEY_B not in state


def test_reload_replaces_the_file_keys(tmp_path: Path) -> None:
    """After `reload()` the new file's keys are accepted and removed ones are revoked."""
    path = key_file(tmp_path, KEY_A)
    store = KeyStore.from_sources(key_file=path)
    key_file(tmp_path, KEY_B)
    assert store.reload()
    assert store.check(KEY_B)
    assert not store.check(KEY_A)


def test_reload_keeps_old_keys_when_file_is_unreadable(tmp_path: Path) -> None:
    """A key file that vanished leaves the old keys in force."""
    path = key_file(tmp_path, KEY_A)
    store = KeyStore.from_sources(key_file=path)
    path.unlink()
    assert not store.reload()
    assert store.check(KEY_A)


def test_reload_keeps_old_keys_when_a_new_key_is_invalid(tmp_path: Path) -> None:
    """One bad line rejects the whole new file, not just that key."""
    path = key_file(tmp_path, KEY_A)
    store = KeyStore.from_sources(key_file=path)
    key_file(tmp_path, f"{KEY_B}\nshort\n")
    assert not store.reload()
    assert store.check(KEY_A)
    assert not store.check(KEY_B)


def test_reload_refuses_to_switch_authentication_off(tmp_path: Path) -> None:
    """An emptied file (no env keys) keeps the old keys instead of opening the server."""
    path = key_file(tmp_path, KEY_A)
    store = KeyStore.from_sources(key_file=path)
    key_file(tmp_path, "")
    assert not store.reload()
    assert store.enabled
    assert store.check(KEY_A)


def test_reload_may_empty_the_file_when_env_keys_remain(tmp_path: Path) -> None:
    """With env keys still in force, an empty file revokes every file key."""
    path = key_file(tmp_path, KEY_B)
    store = KeyStore.from_sources(env_value=KEY_A, key_file=path)
    key_file(tmp_path, "# all revoked\n")
    assert store.reload()
    assert store.check(KEY_A)
    assert not store.check(KEY_B)


def test_reload_without_key_file_does_nothing() -> None:
    """Env keys cannot change in a running process: reload is a no-op."""
    store = KeyStore([KEY_A])
    assert not store.reload()
    assert store.check(KEY_A)


def test_logs_never_contain_a_key(tmp_path: Path) -> None:
    """Reload failures and successes log counts and paths, never key material."""
    path = key_file(tmp_path, KEY_A)
    store = KeyStore.from_sources(key_file=path)
    with capture_logs() as logs:
        key_file(tmp_path, f"{KEY_B}\n{KEY_C[:10]}\n")
        store.reload()
        key_file(tmp_path, KEY_C)
        store.reload()
    assert [entry["event"] for entry in logs] == ["api_keys_reload_failed", "api_keys_reloaded"]
    text = repr(logs)
    for key in (KEY_A, KEY_B, KEY_C, KEY_C[:10]):
        assert key not in text


def test_group_readable_key_file_logs_a_warning(tmp_path: Path) -> None:
    """A key file readable by group or others is accepted with a warning."""
    path = key_file(tmp_path, KEY_A, mode=0o644)
    with capture_logs() as logs:
        KeyStore.from_sources(key_file=path)
    assert [(entry["event"], entry["mode"]) for entry in logs] == [
        ("api_key_file_permissions", "0o644")
    ]


def test_private_key_file_logs_nothing(tmp_path: Path) -> None:
    """A 0600 key file is read silently."""
    with capture_logs() as logs:
        KeyStore.from_sources(key_file=key_file(tmp_path, KEY_A))
    assert logs == []


@pytest.mark.parametrize(
    ("headers", "target", "expected"),
    [
        ([(b"authorization", f"Bearer {KEY_A}".encode())], "/tts", KEY_A),
        ([(b"Authorization", f"bEaReR   {KEY_A} ".encode())], "/tts", KEY_A),
        ([], f"/tts?api_key={KEY_A}", KEY_A),
        ([], "/tts?x=1&api_key=a%2Bb%3Dc%26d%25-0123456789", "a+b=c&d%-0123456789"),
        ([(b"authorization", f"Bearer {KEY_A}".encode())], f"/tts?api_key={KEY_B}", KEY_A),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], f"/?api_key={KEY_B}", KEY_B),
        ([(b"authorization", b"Bearer ")], "/tts?api_key=", None),
        ([(b"x-api-key", KEY_A.encode())], "/tts", None),
    ],
    ids=[
        "bearer",
        "case-insensitive",
        "query",
        "query-url-decoded",
        "header-wins",
        "non-bearer-falls-back-to-query",
        "empty",
        "other-header",
    ],
)
def test_presented_key(headers: list[tuple[bytes, bytes]], target: str, expected: str) -> None:
    """The key comes from a Bearer header or, failing that, the api_key query parameter."""
    assert presented_key(headers, target) == expected


def test_authorize_checks_the_presented_key() -> None:
    """An enabled store authorizes a handshake only with a valid key."""
    store = KeyStore([KEY_A])
    assert store.authorize([(b"authorization", f"Bearer {KEY_A}".encode())], "/tts")
    assert store.authorize([], f"/tts?api_key={KEY_A}")
    assert not store.authorize([], "/tts")
    assert not store.authorize([(b"authorization", f"Bearer {KEY_B}".encode())], "/tts")


def test_redact_target_hides_the_query_key() -> None:
    """A request target can be logged once its api_key value is replaced."""
    redacted = redact_target(f"/tts?voice=x&api_key={KEY_A}&b=2")
    assert redacted == "/tts?voice=x&api_key=REDACTED&b=2"
    assert redact_target("/tts") == "/tts"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_keys(host: str) -> None:
    """Listening on loopback without keys is allowed."""
    check_exposure(host, what="the server", authenticated=False, allow_unauthenticated=False)


def test_public_bind_without_keys_is_refused() -> None:
    """Listening beyond loopback without keys fails, naming the listener."""
    with pytest.raises(ConfigError, match=r"metrics port .* '0\.0\.0\.0'"):
        check_exposure(
            "0.0.0.0", what="the metrics port", authenticated=False, allow_unauthenticated=False
        )


@pytest.mark.parametrize(("authenticated", "allow"), [(True, False), (False, True)])
def test_public_bind_with_keys_or_explicit_allow_is_accepted(
    authenticated: bool, allow: bool
) -> None:
    """Keys, or --allow-unauthenticated, permit a public bind."""
    check_exposure("0.0.0.0", what="x", authenticated=authenticated, allow_unauthenticated=allow)


def test_key_file_path_is_kept(tmp_path: Path) -> None:
    """The store remembers its key file (for SIGHUP reloads and log lines)."""
    path = key_file(tmp_path, KEY_A)
    assert KeyStore.from_sources(key_file=os.fspath(path)).key_file == path
