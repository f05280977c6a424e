"""deploy/: the systemd units and the example environment file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from voxtrio._config import OPTIONS, Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "voxtrio.service"
TEMPLATE = DEPLOY / "voxtrio@.service"
ENV_FILE = DEPLOY / "voxtrio.env"
EXEC = "/opt/voxtrio/venv/bin/voxtrio"

# Variables the deployment needs beyond voxtrio._config.OPTIONS.
EXTRA_VARIABLES = (
    "TTS_API_KEYS",
    "TTS_API_KEY_FILE",
    "METRICS_ENABLED",
    "METRICS_PORT",
    "TTS_DRAIN_TIMEOUT",
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Section -> key -> values in order (systemd allows repeated keys)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"continuation lines are not expected: {line!r}"
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        assert section is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a KEY=VALUE line: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, key: str, section: str = "Service") -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


_SPAN_UNITS = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}


def seconds(span: str) -> float:
    """A systemd time span ("90", "90s", "20min", "1min 30s") in seconds."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, span
    for number, unit in parts:
        total += float(number) * _SPAN_UNITS[unit]
    return total


def env_assignments(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(active, commented) KEY=value pairs of an EnvironmentFile."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        match = re.fullmatch(r"(#)?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            target = commented if match.group(1) else active
            target[match.group(2)] = match.group(3)
        else:
            assert not line or line.startswith("#"), f"not KEY=value: {line!r}"
    return active, commented


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT)


@pytest.fixture(scope="module")
def template() -> Unit:
    return parse_unit(TEMPLATE)


def test_unit_is_type_notify_for_the_main_process(unit: Unit) -> None:
    """READY=1 after warm-up: Type=notify, and only the main process may notify."""
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"


def test_unit_has_a_watchdog(unit: Unit) -> None:
    """WatchdogSec is set, so a stalled engine (no WATCHDOG=1) gets restarted."""
    assert 5 <= seconds(one(unit, "WatchdogSec")) <= 120


def test_unit_restarts_on_failure(unit: Unit) -> None:
    """Crashes and watchdog kills restart the service; a clean stop does not."""
    assert one(unit, "Restart") == "on-failure"


def test_unit_runs_voxtrio_serve_from_the_venv(unit: Unit) -> None:
    """ExecStart is the venv's console script."""
    assert one(unit, "ExecStart") == f"{EXEC} serve"


def test_unit_reads_the_optional_environment_file(unit: Unit) -> None:
    """Settings come from /etc/voxtrio/voxtrio.env, which may be absent ("-")."""
    assert one(unit, "EnvironmentFile") == "-/etc/voxtrio/voxtrio.env"


def test_unit_runs_as_a_dedicated_user(unit: Unit) -> None:
    """Never root: a system user (or DynamicUser)."""
    dynamic = unit["Service"].get("DynamicUser", ["no"]) == ["yes"]
    assert dynamic or one(unit, "User") == "voxtrio"


def test_start_timeout_covers_the_model_load(unit: Unit) -> None:
    """TimeoutStartSec exceeds the default load + warm-up timeout."""
    assert seconds(one(unit, "TimeoutStartSec")) > Settings().load_timeout


def test_stop_timeout_covers_the_drain(unit: Unit) -> None:
    """TimeoutStopSec exceeds the drain plus stopping the replicas, so SIGTERM can finish."""
    defaults = Settings()
    drain = getattr(defaults, "drain_timeout", 30.0)
    assert seconds(one(unit, "TimeoutStopSec")) > drain + 2 * defaults.stop_timeout
    assert one(unit, "KillSignal") == "SIGTERM"


def test_reload_sends_sighup(unit: Unit) -> None:
    """`systemctl reload` re-reads the key file via SIGHUP to the main process."""
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_unit_is_hardened(unit: Unit) -> None:
    """The usual sandboxing is on and no capability is kept."""
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
    }
    assert {key: one(unit, key) for key in expected} == expected
    assert set(one(unit, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_gpu_device_nodes_are_allowed(unit: Unit) -> None:
    """The NVIDIA devices stay reachable: allowed by driver name, PrivateDevices off."""
    allowed = {value.split()[0] for value in unit["Service"]["DeviceAllow"]}
    assert {"char-nvidia-frontend", "char-nvidia-uvm"} <= allowed
    assert unit["Service"].get("PrivateDevices", ["no"]) == ["no"]


def test_state_and_cache_are_writable_and_used(unit: Unit) -> None:
    """Models and compiled kernels live in systemd-managed writable directories."""
    assert one(unit, "StateDirectory") == "voxtrio"
    assert one(unit, "CacheDirectory") == "voxtrio"
    environment = dict(value.split("=", 1) for value in unit["Service"]["Environment"])
    assert environment["HF_HOME"].startswith("/var/lib/voxtrio/")
    assert environment["TORCHINDUCTOR_CACHE_DIR"].startswith("/var/cache/voxtrio/")


def test_objects_come_from_one_trimmable_glibc_arena(unit: Unit) -> None:
    """PYTHONMALLOC=malloc and one arena: what a burst of connections frees can go back
    (the server's malloc_trim reaches it), so memory returns near the fresh server's."""
    environment = dict(value.split("=", 1) for value in unit["Service"]["Environment"])
    assert environment["PYTHONMALLOC"] == "malloc"
    assert environment["MALLOC_ARENA_MAX"] == "1"


def test_file_descriptor_limit_is_raised(unit: Unit) -> None:
    """Many connections need more than the default 1024 descriptors."""
    assert int(one(unit, "LimitNOFILE")) >= 16384


def test_template_pins_one_gpu_and_its_ports(template: Unit) -> None:
    """voxtrio@N sees GPU N only and listens on its own ports."""
    environment = dict(value.split("=", 1) for value in template["Service"]["Environment"])
    assert environment["CUDA_VISIBLE_DEVICES"] == "%i"
    assert environment["TTS_DEVICE"] == "cuda"
    assert environment["TTS_PORT"] == "876%i"
    assert environment["METRICS_PORT"] == "909%i"
    assert template["Service"]["EnvironmentFile"] == [
        "-/etc/voxtrio/voxtrio.env",
        "-/etc/voxtrio/voxtrio-%i.env",
    ]


def test_template_matches_the_single_unit_otherwise(unit: Unit, template: Unit) -> None:
    """Apart from the per-GPU settings the two units carry the same [Service] settings."""
    per_instance = {"Environment", "EnvironmentFile", "ExecStartPre"}
    single = {k: v for k, v in unit["Service"].items() if k not in per_instance}
    instance = {k: v for k, v in template["Service"].items() if k not in per_instance}
    assert instance == single
    assert set(unit["Service"]["Environment"]) <= set(template["Service"]["Environment"])
    assert template["Unit"].keys() == unit["Unit"].keys()
    assert template["Install"] == unit["Install"]


def test_env_file_lists_every_setting() -> None:
    """Every environment variable in voxtrio._config.OPTIONS, and the deployment's, is there."""
    active, commented = env_assignments(ENV_FILE)
    documented = active.keys() | commented.keys()
    expected = {option.env for option in OPTIONS if option.env} | set(EXTRA_VARIABLES)
    assert sorted(expected - documented) == []


def test_env_file_defaults_match_the_code() -> None:
    """A commented-out line shows the real default of its setting."""
    _, commented = env_assignments(ENV_FILE)
    defaults = Settings()
    for option in OPTIONS:
        value = commented.get(option.env) if option.env else None
        if not option.env or not value or getattr(defaults, option.name) is None:
            continue  # settings off by default show an example value instead
        parsed = load_settings(None, {option.env: value})
        assert getattr(parsed, option.name) == getattr(defaults, option.name), option.env


def test_env_file_active_settings_are_valid() -> None:
    """The settings the example turns on load without a ConfigError."""
    active, _ = env_assignments(ENV_FILE)
    known = {option.env for option in OPTIONS}
    load_settings(None, {key: value for key, value in active.items() if key in known})


def verify(unit_path: Path) -> list[str]:
    """systemd-analyze verify's complaints, minus the venv not being installed here."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).splitlines()
    if any("Failed to initialize manager" in line for line in output):
        pytest.skip("systemd-analyze cannot run a manager here: " + " ".join(output)[:200])
    return [line for line in output if line and f"Command {EXEC} is not executable" not in line]


needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_systemd
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd itself accepts every line of voxtrio.service."""
    path = tmp_path / "voxtrio.service"
    shutil.copy(UNIT, path)
    assert verify(path) == []


@needs_systemd
def test_template_instance_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd accepts voxtrio@.service instantiated for GPU 3."""
    path = tmp_path / "voxtrio@3.service"
    shutil.copy(TEMPLATE, path)
    assert verify(path) == []


@needs_systemd
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The verify check is not vacuous: a bad value is reported."""
    path = tmp_path / "broken.service"
    path.write_text(UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=maybe"))
    assert any("NoNewPrivileges" in line or "boolean" in line for line in verify(path))
