"""CosyVoice voice ids -> voxtrio voices, for the DashScope endpoint.

Relays built for DashScope send CosyVoice's system voices (``longxiaochun_v2``...).
The built-in table (``cosyvoice_catalog.json``, shipped in this package) maps each
catalog voice to VoxCPM2 voice-design text written from the catalog's own one-line
description. The operator overrides or extends it with ``cosyvoice-aliases.toml`` in
the voice library directory, re-read on SIGHUP like the API key file::

    [voices]
    longxiaochun_v2 = { voice = "alice" }              # a cloned voice in the library
    longnan_v2 = { description = "a calm young man" }  # VoxCPM2 voice design
    narrator = { voice = "bob" }                       # any new name

A name resolves, in order: a voice in the library; the operator's entry; the
built-in entry. A description is voice design on VoxCPM2 and the default voice on
VoxCPM 1.x, which has no voice design.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Final

import attrs
import structlog

from voxtrio.protocol._voice_rules import VOICE_ID_PATTERN, description_problem

log = structlog.get_logger("voxtrio.voices")

ALIAS_FILE: Final = "cosyvoice-aliases.toml"
CATALOG_RESOURCE: Final = "cosyvoice_catalog.json"
MAX_ALIASES: Final = 10_000
MAX_ALIAS_FILE_BYTES: Final = 1 << 20


class AliasFileError(ValueError):
    """The operator's alias file cannot be used; the message says where and why."""


@attrs.frozen
class AliasTarget:
    """What one alias names: a library voice, or VoxCPM2 voice-design text."""

    voice_id: str | None = None
    description: str | None = None


@attrs.frozen
class ResolvedVoice:
    """A DashScope voice name in voxtrio's terms (voice_id None: the default voice)."""

    voice_id: str | None
    description: str | None
    source: str  # "library", "alias file", "catalog" (for logs and docs)


def builtin_catalog() -> dict[str, AliasTarget]:
    """The shipped CosyVoice catalog: voice id -> voice-design text."""
    text = resources.files("voxtrio.voices").joinpath(CATALOG_RESOURCE).read_text("utf-8")
    voices = json.loads(text)["voices"]
    return {name: AliasTarget(description=entry["description"]) for name, entry in voices.items()}


def parse_alias_file(text: str, source: str) -> dict[str, AliasTarget]:
    """The `[voices]` table of an alias file; AliasFileError naming the entry if invalid."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AliasFileError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"voices"})
    if unknown:
        raise AliasFileError(f"{source}: unknown top-level key(s) {unknown}; expected [voices]")
    table = data.get("voices", {})
    if not isinstance(table, dict) or len(table) > MAX_ALIASES:
        raise AliasFileError(f"{source}: [voices] must be a table of at most {MAX_ALIASES}")
    return {name: _target(name, entry, source) for name, entry in table.items()}


def _target(name: str, entry: object, source: str) -> AliasTarget:
    where = f"{source}: voices.{name}"
    if not VOICE_ID_PATTERN.fullmatch(name):
        raise AliasFileError(f"{where}: a name is 1-64 letters, digits, '_', '.', '-'")
    if not isinstance(entry, dict) or set(entry) not in ({"voice"}, {"description"}):
        raise AliasFileError(f'{where}: must be {{ voice = "ID" }} or {{ description = "..." }}')
    voice, description = entry.get("voice"), entry.get("description")
    if voice is not None and not (isinstance(voice, str) and VOICE_ID_PATTERN.fullmatch(voice)):
        raise AliasFileError(f"{where}.voice: not a voice id: {voice!r}"[:200])
    if description is not None:
        problem = (
            description_problem(description, "voxcpm2")
            if isinstance(description, str)
            else "must be a string"
        )
        if problem:
            raise AliasFileError(f"{where}.description: {problem}")
    return AliasTarget(voice_id=voice, description=description)


def read_alias_file(path: Path) -> dict[str, AliasTarget]:
    """The operator's aliases from `path` ({} when it does not exist)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_ALIAS_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AliasFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_ALIAS_FILE_BYTES:
        raise AliasFileError(f"{path}: larger than {MAX_ALIAS_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AliasFileError(f"{path}: not UTF-8") from None
    return parse_alias_file(text, str(path))


class CosyVoiceAliases:
    """The built-in catalog plus the operator's alias file (reloadable)."""

    def __init__(self, directory: Path | None, *, architecture: str) -> None:
        self.path = directory / ALIAS_FILE if directory is not None else None
        self.architecture = architecture
        self._catalog = builtin_catalog()
        self._operator = read_alias_file(self.path) if self.path is not None else {}

    def names(self) -> frozenset[str]:
        return frozenset(self._catalog) | frozenset(self._operator)

    def reload(self) -> bool:
        """Re-read the alias file (SIGHUP); keep the old table on any problem."""
        if self.path is None:
            return False
        try:
            self._operator = read_alias_file(self.path)
        except AliasFileError as exc:
            log.error("cosyvoice_aliases_reload_failed", error=str(exc), kept=len(self._operator))
            return False
        log.info("cosyvoice_aliases_reloaded", aliases=len(self._operator), path=str(self.path))
        return True

    def resolved(self, library: frozenset[str]) -> dict[str, ResolvedVoice]:
        """Every name a DashScope task may use now: `default`, the library, the aliases."""
        table = {name: self.resolve(name, library) for name in self.names() | library}
        table["default"] = ResolvedVoice(None, None, "library")
        return {name: voice for name, voice in table.items() if voice is not None}

    def resolve(self, name: str, library: frozenset[str]) -> ResolvedVoice | None:
        """What `name` is on this server, or None when neither library nor table has it."""
        if name in library:
            return ResolvedVoice(name, None, "library")
        if name in self._operator:
            target, source = self._operator[name], "alias file"
        elif name in self._catalog:
            target, source = self._catalog[name], "catalog"
        else:
            return None
        if target.voice_id is not None:
            if target.voice_id not in library:
                # A mapping to a voice that is gone is the operator's to fix: refuse it.
                log.debug("cosyvoice_alias_target_missing", name=name, voice=target.voice_id)
                return None
            return ResolvedVoice(target.voice_id, None, source)
        description = target.description if self.architecture == "voxcpm2" else None
        return ResolvedVoice(None, description, source)
