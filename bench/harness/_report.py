"""Where results go: JSON under bench/results/, a PNG beside it, a table in docs/BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from . import _stats

ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("voxtrio", "voxcpm", "torch", "trio", "trio-websocket", "wsproto", "numpy")


def machine() -> dict[str, Any]:
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def commit() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": head, "dirty": bool(status) if status is not None else None}


def command_line(argv: Sequence[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m bench", *args])


def result_path(out_dir: Path, label: str, *, today: dt.date | None = None) -> Path:
    """bench/results/<date>-<label>.json; -2, -3... when that name is taken."""
    stem = f"{(today or dt.date.today()).isoformat()}-{label}"
    path = out_dir / f"{stem}.json"
    counter = 2
    while path.exists():
        path = out_dir / f"{stem}-{counter}.json"
        counter += 1
    return path


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_engine(result: dict[str, Any], path: Path) -> Path:
    """Time to first audio and aggregate throughput against concurrency, server vs engine."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    for run in result["runs"]:
        workers = run["workers"]
        closed = [lv for lv in run["levels"] if lv["mode"] == "closed"]
        xs = [lv["concurrency"] for lv in closed]
        for side, style in (("server", "-"), ("baseline", "--")):
            name = "voxtrio" if side == "server" else "engine direct"
            tag = f"{name}, W={workers}"
            p50 = [lv[side]["ttfa_ms"]["p50"] for lv in closed]
            p95 = [lv[side]["ttfa_ms"]["p95"] for lv in closed]
            (line,) = left.plot(xs, p50, style, marker="o", label=f"{tag} p50")
            left.plot(xs, p95, style, marker="^", color=line.get_color(), alpha=0.5)
            tput = [lv[side]["audio_s_per_s"] for lv in closed]
            right.plot(xs, tput, style, marker="o", color=line.get_color(), label=tag)
    levels = [lv for run in result["runs"] for lv in run["levels"]]
    ticks = sorted({lv["concurrency"] for lv in levels if lv["concurrency"]})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrency (closed loop)")
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("time to first audio, ms (o p50, ^ p95)")
    right.set_ylabel("audio seconds per wall second")
    right.set_ylim(bottom=0)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(result["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_synthetic(result: dict[str, Any], path: Path) -> Path:
    """Inter-chunk jitter and CPU against concurrent streams (synthetic engine)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    levels = result["levels"]
    xs = [lv["streams"] for lv in levels]
    # Log scale: floor at 0.1 ms so a perfect level still has a point.
    p50 = [max(lv["jitter_ms"]["p50"] or 0.1, 0.1) for lv in levels]
    p99 = [max(lv["jitter_ms"]["p99"] or 0.1, 0.1) for lv in levels]
    left.plot(xs, p50, marker="o", label="jitter p50")
    left.plot(xs, p99, marker="^", label="jitter p99")
    left.axhline(_stats.JITTER_P99_MS, color="red", linestyle=":", label="p99 target")
    left.set_ylabel("|gap - 160 ms|, ms")
    left.set_yscale("log")
    server_cpu = [lv["usage"]["server"]["cpu_cores"] for lv in levels]
    client_cpu = [lv["usage"]["client"]["cpu_cores"] for lv in levels]
    right.plot(xs, server_cpu, marker="o", label="server CPU (cores)")
    right.plot(xs, client_cpu, marker="s", label="load generator CPU (cores)")
    right.set_ylabel("CPU cores")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent real-time streams")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(result["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- markdown


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[ok]


def engine_markdown(result: dict[str, Any], *, json_name: str, png_name: str | None) -> str:
    """The engine suite's tables; `json_name`/`png_name` are paths relative to the doc."""
    s = result["settings"]
    lines = [
        f"### {result['title']}",
        "",
        f"`{result['command']}`",
        "",
        f"Commit {_f((result['commit']['sha'] or '')[:10])}"
        f"{' (dirty)' if result['commit']['dirty'] else ''}; {result['machine']['cpu']}, "
        f"{result['machine']['usable_cpus']} CPUs; device {result['device']}"
        f"{' (' + result['gpu'] + ')' if result.get('gpu') else ''}; torch threads "
        f"{result['torch_threads']}; max_len {s['max_len']}, text set `{s['text_set']}`, "
        f"{s['repeat']} interleaved round(s). Raw figures: [{Path(json_name).name}]({json_name}).",
        "",
        "Time to first audio (ms) and per-request RTF, voxtrio vs the engine called directly:",
        "",
        "| W | level | n | err | p50 | p95 | p99 | engine p50 | engine p95 | overhead p50 "
        "| ratio | RTF p50 | RTF p95 | engine RTF p50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        for lv in run["levels"]:
            sv, bl = lv["server"], lv["baseline"]
            lines.append(
                f"| {run['workers']} | {lv['label']} | {sv['requests']} | {sv['errors']} "
                f"| {_f(sv['ttfa_ms']['p50'])} | {_f(sv['ttfa_ms']['p95'])} "
                f"| {_f(sv['ttfa_ms']['p99'])} | {_f(bl['ttfa_ms']['p50'])} "
                f"| {_f(bl['ttfa_ms']['p95'])} | {_f(lv['ttfa_overhead']['ms'], 2)} ms "
                f"| {_f(lv['ttfa_overhead']['ratio'], 3)} | {_f(sv['rtf']['p50'], 3)} "
                f"| {_f(sv['rtf']['p95'], 3)} | {_f(bl['rtf']['p50'], 3)} |"
            )
    lines += [
        "",
        "Throughput (audio seconds per wall second), requests per second, resources:",
        "",
        "| W | level | audio s/s | engine audio s/s | ratio | req/s | server CPU cores "
        "| server RSS MB | engine CPU cores | client CPU cores | other processes' cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        for lv in run["levels"]:
            sv, bl = lv["server"], lv["baseline"]
            su, bu = sv.get("usage", {}), bl.get("usage", {})
            lines.append(
                f"| {run['workers']} | {lv['label']} | {_f(sv['audio_s_per_s'], 2)} "
                f"| {_f(bl['audio_s_per_s'], 2)} | {_f(lv['throughput_ratio'], 3)} "
                f"| {_f(sv['requests_per_s'], 2)} "
                f"| {_f(su.get('server', {}).get('cpu_cores'), 2)} "
                f"| {_f(su.get('server', {}).get('rss_peak_mb'), 0)} "
                f"| {_f(bu.get('baseline', {}).get('cpu_cores'), 2)} "
                f"| {_f(su.get('client', {}).get('cpu_cores'), 2)} "
                f"| {_f(su.get('other_processes_cores'), 2)} |"
            )
    for run in result["runs"]:
        for lv in run["levels"]:
            extra = lv["ttfa_overhead"]
            pairs, total = extra.get("pairs_ms"), extra.get("pairs_total_ms")
            if pairs and total:
                lines += [
                    "",
                    f"W={run['workers']}, {lv['label']}, {pairs['n']} paired requests "
                    f"(server minus engine, same job back to back): first audio "
                    f"{_f(pairs['p50'], 2)} ms p50 (p5 {_f(pairs['p5'], 2)}, p95 "
                    f"{_f(pairs['p95'], 2)}); whole request {_f(total['p50'], 1)} ms p50 "
                    f"(p5 {_f(total['p5'], 1)}, p95 {_f(total['p95'], 1)}).",
                ]
    lines += ["", "Targets:", ""]
    for target in result["targets"]:
        lines.append(f"- {target['name']}: {_verdict(target['met'])} ({target['detail']})")
    if png_name:
        lines += ["", f"![{result['title']}]({png_name})"]
    return "\n".join(lines) + "\n"


def synthetic_markdown(result: dict[str, Any], *, json_name: str, png_name: str | None) -> str:
    """The synthetic suite's tables; `json_name`/`png_name` are paths relative to the doc."""
    s = result["settings"]
    lines = [
        f"### {result['title']}",
        "",
        f"`{result['command']}`",
        "",
        f"Commit {_f((result['commit']['sha'] or '')[:10])}"
        f"{' (dirty)' if result['commit']['dirty'] else ''}; {result['machine']['cpu']}, "
        f"{result['machine']['usable_cpus']} CPUs. Synthetic engine at RTF "
        f"{s['synthetic_rtf']} (one {s['chunk_ms']:g} ms chunk every {s['chunk_ms']:g} ms), "
        f"{s['stream_chunks']} chunks per stream, starts spread over one chunk period; "
        "jitter from kernel receive times (all gaps, and `steady`: after every stream "
        "started, before any ended), `read`: when the client read the frame. "
        f"Raw figures: [{Path(json_name).name}]({json_name}).",
        "",
        "| streams | err | TTFA p50 ms | jitter p50 ms | jitter p99 ms | jitter max ms "
        "| p99 < 20 ms | steady p99 ms | read p99 ms | server CPU cores | server RSS MB "
        "| client CPU cores | client loop lag p99 ms | other processes' cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in result["levels"]:
        u = lv["usage"]
        lines.append(
            f"| {lv['streams']} | {lv['errors']} | {_f(lv['ttfa_ms']['p50'])} "
            f"| {_f(lv['jitter_ms']['p50'], 2)} | {_f(lv['jitter_ms']['p99'], 2)} "
            f"| {_f(lv['jitter_ms']['max'], 1)} | {_f(lv['meets_jitter'])} "
            f"| {_f(lv.get('jitter_steady_ms', {}).get('p99'), 2)} "
            f"| {_f(lv.get('jitter_read_ms', {}).get('p99'), 2)} "
            f"| {_f(u['server']['cpu_cores'], 2)} | {_f(u['server']['rss_peak_mb'], 0)} "
            f"| {_f(u['client']['cpu_cores'], 2)} | {_f(u['client_loop_lag_ms']['p99'], 2)} "
            f"| {_f(u['other_processes_cores'], 2)} |"
        )
    idle = result.get("idle")
    if idle:
        held = idle["streams_while_held"]
        lines += [
            "",
            f"Idle connections: {idle['opened']}/{idle['requested']} opened in "
            f"{_f(idle['open_seconds'], 2)} s; server RSS {_f(idle['server_rss_before_mb'], 1)}"
            f" -> {_f(idle['server_rss_held_mb'], 1)} MB = "
            f"**{_f(idle['per_connection_kb'], 1)} KB per connection**; "
            f"{_f(idle['server_rss_after_close_mb'], 1)} MB after closing them. "
            f"While they were held, {held['streams']} streams: jitter p50 "
            f"{_f(held['jitter_ms']['p50'], 2)} ms, p99 {_f(held['jitter_ms']['p99'], 2)} ms, "
            f"{held['errors']} errors.",
        ]
    lines += ["", "Targets:", ""]
    for target in result["targets"]:
        lines.append(f"- {target['name']}: {_verdict(target['met'])} ({target['detail']})")
    if png_name:
        lines += ["", f"![{result['title']}]({png_name})"]
    return "\n".join(lines) + "\n"


def append_to_doc(doc: Path, section: str) -> None:
    """Append a results section under the doc's "## Results" heading (created if absent)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if "\n## Results" not in text:
        text = text.rstrip("\n") + "\n\n## Results\n"
    doc.write_text(text.rstrip("\n") + "\n\n" + section)
