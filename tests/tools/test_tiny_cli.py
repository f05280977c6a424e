"""`voxtrio tiny-model`: its help, its arguments and its exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import pytest

from voxtrio._cli import build_parser, main
from voxtrio.tools._tiny_cli import STOP_POLICIES
from voxtrio.tools._tiny_weights import StopPolicy


def _tiny_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    tiny: argparse.ArgumentParser = commands.choices["tiny-model"]
    return tiny


def test_every_argument_has_a_description() -> None:
    """`tiny-model --help` describes every argument, positional ones included."""
    undescribed = [
        action.dest
        for action in _tiny_parser()._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert undescribed == []


def test_help_names_each_choice_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    """The help text shows the choices and defaults a user picks from."""
    with pytest.raises(SystemExit) as exit_info:
        main(["tiny-model", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("{voxcpm2,voxcpm}", "{tiny,full}", "{never,always,random}", "(default: 0)"):
        assert text in out


def test_stop_choices_match_the_builder() -> None:
    """The CLI offers exactly the stop policies the builder accepts."""
    assert get_args(StopPolicy) == STOP_POLICIES


def test_refuses_a_non_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-empty target without --force exits 2 with the reason, writing nothing."""
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["tiny-model", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_writes_a_checkpoint_and_prints_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh directory gets a checkpoint; stdout is its absolute path."""
    target = tmp_path / "ckpt"
    assert main(["tiny-model", str(target), "--arch", "voxcpm", "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(target.absolute())
    assert (target / "config.json").is_file()
    assert (target / "model.safetensors").is_file()
