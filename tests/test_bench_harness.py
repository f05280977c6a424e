"""The bench's entry point (`python -m bench <scenario>`) and its one way to start a server."""

from __future__ import annotations

import importlib
import importlib.util
import re
import urllib.request
from pathlib import Path

import pytest
import trio

from bench import scenarios
from bench.harness import ProcessFailed, ServerProcess, serving

BENCH = Path(__file__).resolve().parent.parent / "bench"
bench_main = importlib.import_module("bench.__main__")


@pytest.mark.parametrize("name", scenarios.names())
def test_every_scenario_imports_and_has_a_main_and_a_summary(name: str) -> None:
    """Each scenario module imports from its new home and exposes main(argv) and a summary."""
    assert callable(scenarios.load(name).main)
    assert scenarios.summary(name)


def test_the_default_scenario_is_among_them() -> None:
    """`server` (the old `python -m bench`) is a scenario; private parts are not."""
    names = scenarios.names()
    assert scenarios.DEFAULT == "server"
    assert "server" in names
    assert not [name for name in names if name.startswith("_")]


def test_help_lists_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench --help` names each scenario with its summary."""
    assert bench_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in scenarios.names():
        assert re.search(rf"^  {name} +\S", out, re.MULTILINE), name


def test_an_unknown_scenario_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt scenario exits 2 with the list, instead of running the default."""
    assert bench_main.main(["batchin", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "no scenario 'batchin'" in err
    assert "batching" in err


def test_options_without_a_scenario_go_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m bench --quick` still runs the server scenario with every argument."""
    calls: list[tuple[str, list[str]]] = []

    def entry(name: str) -> object:
        return lambda argv: calls.append((name, argv))

    monkeypatch.setattr(scenarios, "entry", entry)
    monkeypatch.setattr("sys.argv", ["bench"])
    assert bench_main.main(["--quick", "--engine", "synthetic"]) == 0
    assert bench_main.main(["tsm", "--seconds", "1"]) == 0
    assert calls == [("server", ["--quick", "--engine", "synthetic"]), ("tsm", ["--seconds", "1"])]


def test_only_the_harness_starts_voxtrio_serve() -> None:
    """No scenario builds its own `voxtrio serve` command line: they use bench.harness."""
    offenders = [
        str(path.relative_to(BENCH))
        for path in BENCH.rglob("*.py")
        if "harness" not in path.parts
        and re.search(r"""["']voxtrio["'],\s*["']serve["']""", path.read_text())
    ]
    assert offenders == []


def test_serving_yields_a_warm_server_and_stops_it(tmp_path: Path) -> None:
    """serving(): the server answers on its side port while held, and exits afterwards."""
    with serving(["--engine", "synthetic"], workdir=tmp_path) as server:
        assert server.url.startswith("ws://127.0.0.1:")
        assert server.url.endswith("/tts")
        with urllib.request.urlopen(server.side_url + "/health", timeout=10) as reply:
            assert reply.status == 200
        process = server.process
    assert process.returncode is not None
    assert server.log_path.exists()


def test_serving_reports_a_server_that_cannot_start(tmp_path: Path) -> None:
    """A server that exits at start-up raises ProcessFailed with its log's tail."""
    with (
        pytest.raises(ProcessFailed, match="did not start"),
        serving(["--engine", "no-such-engine"], workdir=tmp_path),
    ):
        pass  # pragma: no cover (never reached)


async def test_server_process_uses_the_same_command_and_stops_on_sigterm() -> None:
    """ServerProcess (Trio) starts the same way and exits cleanly on SIGTERM."""
    async with trio.open_nursery() as nursery:
        server = await ServerProcess.start(nursery, ["--engine", "synthetic"], torch_threads=1)
        assert server.url.startswith("ws://127.0.0.1:")
        assert await server.stop() == 0


def test_every_bench_command_in_the_docs_names_a_scenario() -> None:
    """`python -m bench NAME` / `nox -s bench -- NAME` in README.md and docs/*.md exist."""
    root = BENCH.parent
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    command = re.compile(r"(?:python -m bench|nox -s bench --)((?:\.[\w.]+)|\s+[a-z][\w]*)?")
    wrong = []
    for doc in docs:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for match in command.finditer(line):
                target = (match.group(1) or "").strip()
                if target.startswith("."):
                    if importlib.util.find_spec("bench" + target) is None:
                        wrong.append(f"{doc.name}:{number}: no module bench{target}")
                elif target and target not in scenarios.names():
                    wrong.append(f"{doc.name}:{number}: no scenario {target!r}")
    assert wrong == []
