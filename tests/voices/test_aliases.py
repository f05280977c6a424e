"""The CosyVoice alias table: built-in catalog, operator file, resolution, reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxtrio.protocol._voice_rules import description_problem
from voxtrio.voices._aliases import (
    ALIAS_FILE,
    AliasFileError,
    CosyVoiceAliases,
    ResolvedVoice,
    builtin_catalog,
    parse_alias_file,
)

# Every name the seed-002 relay maps OpenAI voices to or passes through (issue 14).
RELAY_VOICES = [
    "longxiaochun_v2",
    "longnan_v2",
    "longmiao_v2",
    "longsanshu",
    "longyue_v2",
    "longyuan_v2",
    "longyumi_v2",
    "longxiaoxia_v2",
    "longxiu_v2",
    "longanrou",
    "longqiang_v2",
    "longhan_v2",
    "longxing_v2",
    "longhua_v2",
    "longwan_v2",
    "longcheng_v2",
    "longfeifei_v2",
    "longxiaocheng_v2",
    "longzhe_v2",
    "longyan_v2",
    "longtian_v2",
    "longze_v2",
    "longshao_v2",
    "longhao_v2",
    "longshu_v2",
    "loongbella_v2",
    "longshuo_v2",
    "longxiaobai_v2",
    "longjing_v2",
    "loongstella_v2",
]


def test_every_relay_voice_is_in_the_builtin_catalog() -> None:
    """Out of the box, each catalog voice the relay can send has an entry."""
    catalog = builtin_catalog()
    assert [name for name in RELAY_VOICES if name not in catalog] == []


def test_builtin_descriptions_are_valid_voice_design_text() -> None:
    """Every shipped description passes the same check as a client's voice_description."""
    problems = {
        name: description_problem(target.description or "", "voxcpm2")
        for name, target in builtin_catalog().items()
    }
    assert {name: p for name, p in problems.items() if p} == {}


def test_catalog_voice_is_voice_design_on_voxcpm2(tmp_path: Path) -> None:
    """On VoxCPM2 a catalog voice becomes its voice-design description."""
    aliases = CosyVoiceAliases(tmp_path, architecture="voxcpm2")
    voice = aliases.resolve("longxiaochun_v2", frozenset())
    assert voice == ResolvedVoice(None, builtin_catalog()["longxiaochun_v2"].description, "catalog")


def test_catalog_voice_is_the_default_voice_on_voxcpm1(tmp_path: Path) -> None:
    """VoxCPM 1.x has no voice design: a catalog voice is the default voice."""
    aliases = CosyVoiceAliases(tmp_path, architecture="voxcpm")
    assert aliases.resolve("longnan_v2", frozenset()) == ResolvedVoice(None, None, "catalog")


def test_operator_mapping_to_a_cloned_voice_wins(tmp_path: Path) -> None:
    """An alias file entry maps a catalog id to a voice in the library."""
    (tmp_path / ALIAS_FILE).write_text('[voices]\nlongxiaochun_v2 = { voice = "alice" }\n')
    aliases = CosyVoiceAliases(tmp_path, architecture="voxcpm2")
    voice = aliases.resolve("longxiaochun_v2", frozenset({"alice"}))
    assert voice == ResolvedVoice("alice", None, "alias file")


def test_mapping_to_a_missing_voice_does_not_resolve(tmp_path: Path) -> None:
    """A mapping to a voice the library lacks is refused, not silently replaced."""
    (tmp_path / ALIAS_FILE).write_text('[voices]\nlongxiaochun_v2 = { voice = "alice" }\n')
    aliases = CosyVoiceAliases(tmp_path, architecture="voxcpm2")
    assert aliases.resolve("longxiaochun_v2", frozenset()) is None
    assert "longxiaochun_v2" not in aliases.resolved(frozenset())


def test_a_library_voice_shadows_the_table(tmp_path: Path) -> None:
    """A voice registered under a catalog id is that voice."""
    aliases = CosyVoiceAliases(tmp_path, architecture="voxcpm2")
    voice = aliases.resolve("longnan_v2", frozenset({"longnan_v2"}))
    assert voice == ResolvedVoice("longnan_v2", None, "library")


def test_unknown_names_do_not_resolve(tmp_path: Path) -> None:
    """A name in neither the library nor the table resolves to nothing."""
    aliases = CosyVoiceAliases(tmp_path, architecture="voxcpm2")
    assert aliases.resolve("nobody", frozenset()) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[voices\n", "not valid TOML"),
        ("[speakers]\n", "unknown top-level"),
        ('[voices]\nx = "alice"\n', "must be { voice"),
        ('[voices]\nx = { voice = "a", description = "b" }\n', "must be { voice"),
        ('[voices]\nx = { voice = "../etc" }\n', "not a voice id"),
        ('[voices]\nx = { description = "a (loud) man" }\n', "parentheses"),
    ],
)
def test_bad_alias_files_are_refused_with_the_reason(text: str, problem: str) -> None:
    """Each mistake in the alias file names the entry and what is wrong."""
    with pytest.raises(AliasFileError, match=problem.replace("(", r"\(")):
        parse_alias_file(text, "aliases.toml")


def test_reload_picks_up_changes_and_keeps_the_old_table_on_error(tmp_path: Path) -> None:
    """reload() re-reads the file; a broken file keeps what was loaded."""
    path = tmp_path / ALIAS_FILE
    aliases = CosyVoiceAliases(tmp_path, architecture="voxcpm2")
    path.write_text('[voices]\nnarrator = { description = "a calm old man" }\n')
    assert aliases.reload()
    assert aliases.resolve("narrator", frozenset()) == ResolvedVoice(
        None, "a calm old man", "alias file"
    )
    path.write_text("[voices\n")
    assert not aliases.reload()
    assert aliases.resolve("narrator", frozenset()) is not None
