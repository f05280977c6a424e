"""The docs name only what exists: files, `nox -s` sessions, CLI flags, environment variables.

Scans README.md and docs/*.md. A failure names the file, the line and the name, so
a renamed flag or a moved module shows up here instead of in a newcomer's shell.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
from pathlib import Path

import pytest

from voxtrio._cli import build_parser
from voxtrio._config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Names the docs mention on purpose that are not files of this tree. Keep this short.
NOT_REPO_PATHS = {
    "openbmb/VoxCPM2",  # Hugging Face hub ids of the upstream models
    "openbmb/VoxCPM1.5",
    "openbmb/VoxCPM-0.5B",
    "meta.json",  # a voice's record inside the voices directory, written at run time
    "31/SYS",  # a systemd exit status, not a path
}
# Where the documented commands write (not in a fresh clone): `nox -s demo`'s out/ and
# .nox/, the README's .venv/, .ci/run's .ci/venv, bench's checkpoint cache .tiny/.
GENERATED = ("out/", ".nox/", ".venv/", ".ci/venv", ".tiny/")
# Flags of other programs the docs show (pip, useradd, systemctl, journalctl, py-spy, pytest).
OTHER_PROGRAMS_FLAGS = {
    "--durations",  # pytest
    "--index-url",  # pip
    "--upgrade",  # pip
    "--no-deps",  # pip
    "--system",  # useradd
    "--home-dir",  # useradd
    "--shell",  # useradd
    "--now",  # systemctl
    "--since",  # journalctl
    "--threads",  # py-spy record
    "--gil",  # py-spy record
}

# The tree's top-level entries: a token starting with one of these is a repo path.
TOP_LEVEL = ("voxtrio/", "tests/", "bench/", "docs/", "deploy/", ".ci/")
FILE_SUFFIX = re.compile(r"\.(py|md|toml|json|cfg|txt|service|env|sh|ya?ml|png|js|html|css)$")
# `download.pytorch.org/whl/cpu`: a URL written without its scheme.
HOST_NAME = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)*\.(org|com|io|net|dev|ai|cn)(/|$)")
MIME_TYPE = re.compile(r"^(application|audio|image|multipart|text|video)/[a-z][a-z0-9.+-]*$")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
ENV_VAR = re.compile(r"\b(?:TTS|VOXTRIO|LOG|METRICS)_[A-Z0-9_]*[A-Z0-9]\b")
VOXTRIO_COMMAND = re.compile(r"\bvoxtrio (serve|say|tiny-model)\b([^`|;&#]*)")
NOX_SESSIONS = re.compile(r"\bnox\b[^`#\n]*?\s(?:-s|--sessions?)\s+([^`#\n]*)")


def doc_lines(doc: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, inside a fenced block), `\\`-continued lines joined."""
    lines: list[tuple[int, str, bool]] = []
    fenced = False
    pending: tuple[int, str] | None = None
    for number, text in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if text.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if pending is not None:
            number, text = pending[0], pending[1] + " " + text.strip()
            pending = None
        if fenced and text.endswith("\\"):
            pending = (number, text[:-1])
            continue
        lines.append((number, text, fenced))
    return lines


def where(doc: Path, line: int) -> str:
    return f"{doc.relative_to(ROOT)}:{line}"


# ---------------------------------------------------------------------------- paths


def module_path_exists(token: str) -> bool:
    """`server/_listener`, `speech/_pool.InstancePool.run`: a voxtrio module (and name)."""
    head, *attributes = token.split(".")
    for base in (ROOT / "voxtrio" / head, ROOT / head):
        if base.is_dir() and not attributes:
            return True
        module = base.with_name(base.name + ".py")
        if module.is_file():
            if not attributes:
                return True
            name = re.escape(attributes[0])
            text = module.read_text(encoding="utf-8")
            return (
                re.search(rf"^\s*(?:class|(?:async )?def) {name}\b|^{name}\b", text, re.M)
                is not None
            )
    return False


def path_exists(token: str, doc: Path) -> bool:
    pattern = re.sub(r"<[^>]+>", "*", token.rstrip("/"))  # placeholders: <date> -> *
    for base in (ROOT, doc.parent):
        if any(base.glob(pattern)) if "*" in pattern else (base / pattern).exists():
            return True
    if "/" not in token:  # a bare file name: anywhere in the package, tests or bench
        return any(any((ROOT / top).rglob(token)) for top in ("voxtrio", "tests", "bench"))
    if token.endswith(".py") and module_path_exists(token[:-3]):
        return True
    if module_path_exists(token):
        return True
    # A file inside an installed package the docs talk about (dashscope's SDK).
    package = token.split("/")[0]
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is not None and spec.submodule_search_locations:
        return (Path(next(iter(spec.submodule_search_locations))).parent / token).exists()
    return False


def path_tokens(text: str, fenced: bool) -> list[str]:
    """Path-like names on a line; `/abs`, `~/x` and `<dir>/x` are the machine's, not the tree's."""
    if fenced:
        candidates = text.split()
    else:
        links = re.findall(r"\]\(([^)\s]+)\)", text)
        candidates = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:|#", link)]
        candidates += re.findall(r"`([^`\s]+)`", text)
    tokens = []
    for token in candidates:
        if not token or "://" in token or token[0] in "/~$-<" or re.search(r"[()=:,'\"{}]", token):
            continue
        if fenced and not token.startswith(TOP_LEVEL):
            continue  # commands and their outputs; only paths into the tree are checked
        if HOST_NAME.match(token) or MIME_TYPE.match(token):
            continue
        if "/" in token or FILE_SUFFIX.search(token):
            tokens.append(token)
    return tokens


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_files_exist(doc: Path) -> None:
    """Every file path, link and module path a doc names exists in the tree."""
    missing = [
        f"{where(doc, number)}: `{token}` does not exist"
        for number, text, fenced in doc_lines(doc)
        for token in path_tokens(text, fenced)
        if token not in NOT_REPO_PATHS
        and not token.startswith(GENERATED)
        and not path_exists(token, doc)
    ]
    assert missing == [], "\n".join(missing)


# ---------------------------------------------------------------------------- nox


def nox_sessions() -> set[str]:
    """The sessions noxfile.py declares (`@nox.session`, `name=` honoured)."""
    names = set()
    for node in ast.walk(ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target) == "nox.session":
                    keywords = decorator.keywords if isinstance(decorator, ast.Call) else []
                    named = [k.value for k in keywords if k.arg == "name"]
                    names.add(ast.literal_eval(named[0]) if named else node.name)
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_nox_sessions_exist(doc: Path) -> None:
    """Every `nox -s NAME` a doc shows is a session of noxfile.py."""
    sessions = nox_sessions()
    missing = []
    for number, text, _ in doc_lines(doc):
        for match in NOX_SESSIONS.finditer(text):
            for word in match.group(1).split():
                name = word.strip("`).,")
                if not re.fullmatch(r"[a-z][\w-]*", name):
                    break  # `--`, `...`, a comment: the session list ended
                if name not in sessions:
                    missing.append(
                        f"{where(doc, number)}: nox session `{name}` is not in noxfile.py"
                    )
    assert missing == [], "\n".join(missing)


# ---------------------------------------------------------------------------- flags


def voxtrio_flags() -> dict[str, set[str]]:
    """Each `voxtrio` command's flags, from the real argparse parsers."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top = {o for a in parser._actions for o in a.option_strings}
    return {
        name: top | {o for a in sub._actions for o in a.option_strings}
        for name, sub in commands.choices.items()
    }


def declared_flags() -> set[str]:
    """Flags the bench harness, the test suites and noxfile.py declare with argparse/pytest."""
    found: set[str] = set()
    sources = [*(ROOT / "bench").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    for source in [*sources, ROOT / "noxfile.py"]:
        if source.name == Path(__file__).name:
            continue
        for call in re.findall(r"(?:add_argument|addoption)\(([^)]*)\)", source.read_text()):
            found.update(re.findall(r"[\"'](--[a-z][a-z0-9-]+)[\"']", call))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cli_flags_exist(doc: Path) -> None:
    """A flag after `voxtrio serve|say|tiny-model` is that command's; any other is some
    voxtrio command's, the bench's or the tests', or another program's listed above."""
    per_command = voxtrio_flags()
    known = set().union(*per_command.values()) | declared_flags() | OTHER_PROGRAMS_FLAGS
    wrong = []
    for number, text, _ in doc_lines(doc):
        attributed = set()
        for match in VOXTRIO_COMMAND.finditer(text):
            command = match.group(1)
            for flag in FLAG.findall(match.group(2)):
                attributed.add(flag)
                if flag not in per_command[command]:
                    wrong.append(f"{where(doc, number)}: `voxtrio {command}` has no {flag}")
        for flag in set(FLAG.findall(text)) - attributed - known:
            wrong.append(f"{where(doc, number)}: {flag} is no flag of voxtrio, bench or tests")
    assert wrong == [], "\n".join(sorted(wrong))


# ---------------------------------------------------------------------------- environment


def environment_readers() -> str:
    """The text of everything that may read an environment variable."""
    sources = [*(ROOT / "voxtrio").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    sources += [p for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name]
    sources += [ROOT / "noxfile.py", ROOT / ".ci" / "run"]
    return "\n".join(p.read_text(encoding="utf-8") for p in sources)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_environment_variables_exist(doc: Path) -> None:
    """Every TTS_*, VOXTRIO_*, LOG_*, METRICS_* variable a doc names is read somewhere."""
    settings = {option.env for option in OPTIONS if option.env}
    code = environment_readers()
    missing = [
        f"{where(doc, number)}: environment variable {name} is read by nothing"
        for number, text, _ in doc_lines(doc)
        for name in sorted(set(ENV_VAR.findall(text)))
        if name not in settings and not re.search(rf"\b{name}\b", code)
    ]
    assert missing == [], "\n".join(missing)


def test_docs_named_in_code_exist() -> None:
    """`docs/X.md` pointers in the package, pyproject.toml and noxfile.py lead somewhere."""
    sources = [*(ROOT / "voxtrio").rglob("*.py"), ROOT / "pyproject.toml", ROOT / "noxfile.py"]
    missing = [
        f"{source.relative_to(ROOT)}:{number}: {name} does not exist"
        for source in sources
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1)
        for name in re.findall(r"docs/[\w.-]+\.md", line)
        if not (ROOT / name).is_file()
    ]
    assert missing == [], "\n".join(missing)
