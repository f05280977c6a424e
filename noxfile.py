"""Developer sessions: `nox -s tests` (the CI gate), `nox -s demo` (the main job, offline)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
# A session whose interpreter is missing fails: "skipped" would exit 0 having run nothing.
nox.options.error_on_missing_interpreters = True

SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
# Sessions run on the interpreter nox itself runs under when voxtrio supports it (a
# machine with only 3.12 or 3.13 needs nothing else), else on 3.11, which must then be
# installed. `nox -P 3.13 -s tests` picks another.
_RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
PYTHON = _RUNNING if _RUNNING in SUPPORTED_PYTHONS else SUPPORTED_PYTHONS[0]
nox.options.sessions = ["lint", "typecheck", "tests"]

ROOT = Path(__file__).parent
# A CPU build of torch: on Linux, PyPI's `torch` is the CUDA build (several GB of
# nvidia packages), so it comes from PyTorch's own CPU index where that answers, else
# from the default index (a local wheel cache, or PyPI's build). On a GPU machine set
# VOXTRIO_TORCH to the build you want (or "skip" to keep the environment's own torch).
TORCH = os.environ.get("VOXTRIO_TORCH", "torch==2.13.0")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
VOXCPM = "voxcpm==2.0.3"
# The default test run prints its slowest tests (issue 23: which ones make it slow).
DURATIONS = "--durations=15"


class _NoUvNotice(logging.Filter):
    """nox logs "uv binary not found." on every run; these sessions use venv + pip."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "uv binary not found."


logging.getLogger("nox").addFilter(_NoUvNotice())


def _answers(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except OSError:  # URLError, timeouts, DNS failures
        return False


def install_torch(session: nox.Session) -> None:
    """torch: the CPU build from PyTorch's index where it answers, else the default index."""
    if TORCH == "skip":
        return
    if "VOXTRIO_TORCH" not in os.environ and _answers(f"{TORCH_CPU_INDEX}/torch/"):
        session.log(f"installing {TORCH} (CPU build) from {TORCH_CPU_INDEX}")
        session.install(TORCH, "--index-url", TORCH_CPU_INDEX)
    else:
        session.log(f"installing {TORCH} from the default index (about 2 minutes)")
        session.install(TORCH)


def install_runtime(session: nox.Session, *extras: str) -> None:
    """Install voxtrio with the lean voxcpm stack (see pyproject.toml)."""
    install_torch(session)
    # --no-deps: voxcpm's declared dependencies are its training/demo stack.
    session.install("--no-deps", VOXCPM)
    spec = f".[{','.join(extras)}]" if extras else "."
    session.log(f"installing voxtrio ({spec}) and its dependencies")
    session.install("-e", spec)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default test run (CI): everything but the suites marked slow; the 15 slowest listed."""
    install_runtime(session, "test")
    session.run(
        "pytest",
        "-m",
        "not slow and not cluster",
        # The framework plugins' suite needs their extras: `nox -s integrations`.
        "--ignore=tests/integrations",
        DURATIONS,
        *session.posargs,
        env={"TQDM_DISABLE": "1"},
    )


@nox.session(python=PYTHON)
def integrations(session: nox.Session) -> None:
    """The Pipecat and LiveKit plugins in the real frameworks against the tiny checkpoint.

    Installs the extras (pipecat-ai, livekit-agents, pinned in pyproject.toml). Under
    CI=true a missing framework fails rather than skips.
    """
    install_runtime(session, "test", "pipecat", "livekit")
    # docs/OPENAI.md's LiveKit snippet (tests/integrations/test_openai_examples.py) uses
    # LiveKit's own OpenAI plugin: the tests need it, voxtrio[livekit] does not.
    session.install("livekit-plugins-openai==1.8.9")
    session.run("pytest", "tests/integrations", *session.posargs, env={"TQDM_DISABLE": "1"})


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """The suites marked slow."""
    install_runtime(session, "test")
    session.run("pytest", "-m", "slow", *session.posargs, env={"TQDM_DISABLE": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (with the ASYNC rules) over the code and tests; the layer contracts (pyproject)."""
    session.install("ruff", "import-linter")
    session.run("ruff", "check", "voxtrio", "tests", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "voxtrio", "tests", "bench", "noxfile.py")
    # import-linter reads the source, never imports it: the package only has to be
    # findable, so skip its (large) dependencies.
    session.install("--no-deps", "-e", ".")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy over the package, strict ([tool.mypy] in pyproject.toml): 0 errors."""
    # aio: voxtrio.aioclient's websockets; the plugins' frameworks are left out (see pyproject).
    install_runtime(session, "aio", "typecheck")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job, offline: build a tiny checkpoint, serve it, speak a sentence to a WAV."""
    install_runtime(session)
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    model_dir = out / "tiny-voxcpm2"
    wav = out / "hello.wav"
    session.run("voxtrio", "tiny-model", str(model_dir), "--force")
    session.run(
        "python",
        "-m",
        "voxtrio.tools._demo",
        "--model",
        str(model_dir),
        "--text",
        "Hello from voxtrio, a streaming speech server on Trio.",
        "-o",
        str(wav),
        env={"TQDM_DISABLE": "1"},
    )
    session.log(f"wrote {wav}")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """A bench scenario: `nox -s bench -- [SCENARIO] [args]` runs `python -m bench ...`.

    With no scenario, `server`: the tiny checkpoint + synthetic engine on CPU
    (`-- --quick` is shorter); it writes bench/results/<date>-<engine>.json + .png
    and appends a table to docs/BENCHMARKS.md. `-- --help` lists the scenarios.
    """
    install_runtime(session)
    session.install("psutil", "matplotlib")
    session.run("python", "-m", "bench", *session.posargs, env={"TQDM_DISABLE": "1"})


@nox.session(python=PYTHON)
def stress(session: nox.Session) -> None:
    """Reliability at length: fuzzing, misbehaving clients, engine faults, then a soak.

    Runs `pytest -m slow tests/stress`, then `python -m tests.stress.soak` (2 minutes on
    the tiny checkpoint), and rewrites docs/RELIABILITY.md with the figures; the soak's
    JSON and PNG go to bench/results/. Arguments after `--` go to the soak driver
    (e.g. `nox -s stress -- --duration 600`).
    """
    install_runtime(session, "test")
    session.install("matplotlib")  # the soak's PNG
    figures = ROOT / "bench" / "results" / "stress-figures.json"
    figures.unlink(missing_ok=True)
    env = {"TQDM_DISABLE": "1", "VOXTRIO_STRESS_FIGURES": str(figures)}
    session.run("pytest", "-m", "slow", "tests/stress", env=env)
    session.run(
        "python",
        "-m",
        "tests.stress.soak",
        "--duration",
        "120",
        "--figures",
        str(figures),
        "--doc",
        str(ROOT / "docs" / "RELIABILITY.md"),
        *session.posargs,
        env=env,
    )


@nox.session(python=PYTHON)
def cluster(session: nox.Session) -> None:
    """Three instances on the tiny checkpoint behind HAProxy (deploy/haproxy.cfg), on 127.0.0.1.

    Needs Debian's haproxy (installed here when missing and running as root). Prints the
    figures (requests per instance, failures, time to recover) and writes them to
    bench/results/cluster-figures.json; docs/DEPLOY.md quotes them.
    """
    if not shutil.which("haproxy") and not Path("/usr/sbin/haproxy").exists():
        if os.geteuid() != 0:
            session.error("haproxy is missing: sudo apt-get install haproxy")
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "haproxy", external=True)
    install_runtime(session, "test")
    figures = ROOT / "bench" / "results" / "cluster-figures.json"
    env = {"TQDM_DISABLE": "1", "VOXTRIO_CLUSTER_FIGURES": str(figures)}
    session.run("pytest", "-m", "cluster", "-s", "tests/cluster", *session.posargs, env=env)
