"""docs/RELIABILITY.md, written from the stress suites' figures and a soak's summary."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

from .harness import HEAP_TOLERANCE, RSS_TOLERANCE

ROOT = Path(__file__).resolve().parents[2]

FIXED = "fixed in 6fd5115"
FIXED_LATER = "fixed in bc23cdc"
FIXED_CODECS = "fixed in aebba92"
FIXED_LIVENESS = "fixed (issue 24)"
FIXED_HOSTILE = "fixed (issue 15)"

# Every fault the suites found: what, where, the regression test that pins it, status.
FINDINGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "A WebSocket ping that reaches a connection the server is closing (idle timeout, "
        "write timeout, ping timeout, drain) crashes the whole server: trio-websocket "
        "0.12.2 answers it with a Pong wsproto refuses (python-trio/trio-websocket#184), "
        "raised in trio-websocket's own per-connection nursery, outside the error boundary",
        "voxtrio/_server.py `TtsServer.serve` (serve_websocket)",
        "test_client_ping_while_the_server_closes_does_not_crash_the_server",
        FIXED,
    ),
    (
        "A peer that resets its socket right after the handshake leaks its connection: "
        "`request.remote` (getpeername) raises ENOTCONN after `connections.add` and before "
        "the try/finally that discards it; active_connections stays up and counts against "
        "max_connections",
        "voxtrio/_server.py `TtsServer._handle`",
        "test_peer_reset_right_after_the_handshake_leaves_no_connection_behind",
        FIXED,
    ),
    (
        "An integer literal over 4300 digits makes json.loads raise a plain ValueError, "
        "which escapes the read loop: the connection closes with 1011 and its running "
        "requests die (both endpoints)",
        "voxtrio/protocol/_messages.py `parse_client_message`, "
        "voxtrio/protocol/_dashscope_messages.py `parse_dashscope_message`",
        "test_integer_literal_beyond_4300_digits_is_an_error_not_a_closed_connection`, "
        "`test_dashscope_integer_literal_beyond_4300_digits_is_task_failed",
        FIXED,
    ),
    (
        "A cancel that arrives after its request failed (RATE_LIMITED, INVALID_PARAMS from "
        "the encoder...) but before the terminal message went out is never answered: "
        "neither complete {cancelled} nor the UNKNOWN_REQUEST PROTOCOL.md section 8 promises",
        "voxtrio/_connection.py `_read_loop` (StopRequest) / voxtrio/_request.py",
        "test_cancel_that_loses_the_race_to_an_error_is_answered_with_unknown_request",
        FIXED,
    ),
    (
        "A DashScope client that stops reading (or closes mid-task) makes the worker's "
        "ConnectionGone leave the connection nursery as an ExceptionGroup: logged as "
        "connection_failed with a traceback, like a server bug",
        "voxtrio/_dashscope_server.py `DashScopeConnection._worker`",
        "test_dashscope_client_that_stops_reading_is_not_a_server_error",
        FIXED,
    ),
    (
        "A DashScope task whose client vanished is counted as status=ok in "
        "voxcpm_tts_requests_total (the native endpoint says disconnected)",
        "voxtrio/_dashscope_server.py `_worker` / `_record`",
        "test_dashscope_task_whose_client_vanished_counts_as_disconnected",
        FIXED,
    ),
    (
        "ConnectionGone raised by the progress reporter comes out of its nursery as an "
        "ExceptionGroup that `except ConnectionGone` misses: logged as request_crashed",
        "voxtrio/_speech.py `generate_utterance` / `_ProgressReporter`",
        "test_client_gone_during_progress_is_not_a_request_crash",
        FIXED,
    ),
    (
        "SSML `<break>` silence is encoded on the Trio thread: 120 s of silence in mp3 stalls "
        "every connection of the process for about a second",
        "voxtrio/_dashscope_server.py `_silence`, voxtrio/_speech.py `speak`",
        "test_ssml_silence_does_not_block_the_event_loop",
        FIXED,
    ),
    (
        "A DashScope task that fails (e.g. Throttling under load) just as its client "
        "vanishes: the task-failed write in `_worker`'s `except ProtocolError` branch raises "
        "ConnectionGone, which escapes the worker and is logged as connection_failed",
        "voxtrio/_dashscope_server.py `_worker` (the perform in `except ProtocolError`)",
        "test_dashscope_task_failing_after_its_client_vanished_is_not_a_server_error",
        FIXED_LATER,
    ),
    (
        "A cancel processed while its request is inside a shielded write (not yet settled) "
        "is lost when the request is then refused before its next checkpoint (RATE_LIMITED "
        "from pool.run): the terminal is the error and the cancel gets no UNKNOWN_REQUEST",
        "voxtrio/_request.py `run_request` / voxtrio/_connection.py `_stop`",
        "test_cancel_that_loses_the_race_to_a_refusal_is_answered_with_unknown_request",
        FIXED_LATER,
    ),
    (
        "libav's codec threads (2 per mp3/opus/flac encoder) outlive AudioEncoder.close(): "
        "the backend keeps its stream and container, so they live until the encoder object "
        "is freed; an encoder caught in a reference cycle keeps them while the server idles "
        "(the soak's thread count stayed above its warmed-up level)",
        "voxtrio/_codecs.py `_AvBackend.finish` / `close`",
        "test_closed_encoder_keeps_no_codec_threads",
        FIXED_CODECS,
    ),
    (
        "With --allow-voice-upload every message of both endpoints may be ~14 MB, and "
        "unfinished ones are parked without a server-wide bound: 99 connections took 2.2 GB",
        "voxtrio/server/_websocket.py `VoxWebSocketConnection`, `PartialMessageBudget`",
        "test_unfinished_messages_share_one_server_wide_budget`, "
        "`test_parked_partial_uploads_are_bounded_server_wide",
        FIXED_HOSTILE,
    ),
    (
        "80 slowloris connections fill the side port's 64 slots: /ready probes are reset "
        "and every refusal logs a warning",
        "voxtrio/ops/_http.py `_HttpServer.handle`",
        "test_health_checks_are_answered_under_slowloris`, "
        "`test_slowloris_on_the_side_port_leaves_ready_answering",
        FIXED_HOSTILE,
    ),
    (
        "An ID3 tag in front of AIFF/AU is sniffed as MP3 and libsndfile decodes the AIFF",
        "voxtrio/voices/_audio.py `sniff_format`",
        "test_id3_tag_does_not_smuggle_another_container`, "
        "`test_id3_prefixed_aiff_is_refused_by_voice_register",
        FIXED_HOSTILE,
    ),
    (
        "A frame in the same TCP write as the handshake is dropped (wsproto's server "
        "handshake discards h11's trailing data on accept): the request is never answered",
        "voxtrio/server/_websocket.py `HeadFirstStream`",
        "test_frame_in_the_handshake_write_is_answered` (and chaos `early_frame`",
        FIXED_HOSTILE,
    ),
    (
        "Framing violations (RSV bits, reserved opcode, unmasked or oversized control frame, "
        "bad close code, bad UTF-8) end in a TCP drop: trio-websocket only answers a close "
        "the peer sent, not the one wsproto raises on a parse failure",
        "voxtrio/server/_websocket.py `_handle_close_connection_event`",
        "test_framing_violation_gets_a_close_frame` (and chaos `framing_violation`",
        FIXED_HOSTILE,
    ),
    (
        "A flood of 1xx responses from an allow-listed origin is parsed without a checkpoint "
        "until the fetch deadline: a bystander's ping waited up to 361 ms",
        "voxtrio/voices/_fetch.py `_exchange`",
        "test_interim_response_flood_is_refused_promptly`, "
        "`test_interim_response_flood_does_not_stall_the_server",
        FIXED_HOSTILE,
    ),
    (
        "IPv6 forms of IPv4 addresses were judged as IPv6: NAT64 and IPv4-compatible forms "
        "of metadata addresses pass with allow-private on, 6to4 forms of loopback/private "
        "with it off (NAT64/compatible were refused only as 'reserved' ::/8)",
        "voxtrio/voices/_fetch.py `embedded_ipv4`",
        "test_embedded_metadata_is_refused_even_with_allow_private`, "
        "`test_ipv6_forms_of_ipv4_addresses_are_judged_by_the_ipv4_address",
        FIXED_HOSTILE,
    ),
    (
        "The misbehaving-clients audit failed a server that does not leak: RSS rises "
        "over the next one or two client mixes (allocator high-water, +15 %) then stays flat "
        "over 8 rounds while Python's heap stays within 1 %",
        "tests/stress/runs.py `chaos_rounds` (one warm-up round; now three, plus a heap check)",
        "test_hundreds_of_misbehaving_clients_leave_no_leaks",
        FIXED_HOSTILE,
    ),
    (
        "The write timeout was a deadline on a whole message: a client reading an 11 MB "
        "non-streaming WAV at ~5 MB/s was cut with 1006 although it never stopped reading",
        "voxtrio/server/_writer.py `FrameWriter.send`, voxtrio/server/_activity.py",
        "test_client_reading_a_large_message_slowly_is_not_dropped",
        FIXED_LIVENESS,
    ),
    (
        "The keepalive cut live peers: a pong queued behind the peer's own messages, which a "
        "busy server had not read yet (ping floods: 'ping timeout after 18 of 57 pongs'), and "
        "a ping queued behind megabytes of audio a client reads at its own pace (polite "
        "clients cut, client loop lag 0.29 s)",
        "voxtrio/server/_keepalive.py, voxtrio/server/_activity.py `PeerActivity`",
        "test_pong_queued_behind_the_peers_own_messages_does_not_drop_it`, "
        "`test_ping_behind_megabytes_a_client_reads_slowly_does_not_drop_it",
        FIXED_LIVENESS,
    ),
    (
        "The misbehaving-clients rounds ran 300 clients on the server's own event loop with 2 s "
        "deadlines: a client that reads, starved by the process it shared with the server, was "
        "cut as stalled (7-29 problems a run, polite clients closed with 1006)",
        "tests/stress/runs.py `chaos_rounds` (clients now in their own process, the server's "
        "default timeouts, its log matched to the clients)",
        "test_hundreds_of_misbehaving_clients_leave_no_leaks",
        FIXED_LIVENESS,
    ),
)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _leak_count(leaks: Any) -> int:
    if isinstance(leaks, dict | list):
        return len(leaks)
    return 0 if not leaks else 1


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {_n(v)}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def render(figures: dict[str, Any], soak: dict[str, Any] | None, png: Path | None) -> str:
    """The whole document."""
    today = datetime.date.today().isoformat()
    cpus = os.cpu_count()
    lines = [
        "# Reliability",
        "",
        "What voxtrio does with clients that vanish mid-sentence, send garbage, never read or",
        "cancel in storms, and with engines that fail, and the figures that show it. Written by",
        "`nox -s stress` (`tests/stress/report.py`); do not edit by hand.",
        "",
        f"Last run: {today}, {platform.system()} {platform.machine()}, {cpus} CPU cores, "
        f"Python {platform.python_version()}.",
        "",
        "## How to run",
        "",
        "```",
        "nox -s stress                       # everything below, then rewrites this page",
        "pytest -m slow tests/stress         # the heavy suites alone",
        "python -m tests.stress.soak --duration 120 --out bench/results   # the soak alone",
        "pytest tests/server/test_reliability.py  # the short versions (part of nox -s tests)",
        "```",
        "",
        "The heavy suites take sizes from the environment: `VOXTRIO_FUZZ_EXAMPLES` (1500),",
        "`VOXTRIO_STRESS_CLIENTS` (300), `VOXTRIO_STRESS_ROUNDS` (5).",
        "",
        "## Figures",
        "",
    ]
    lines += _produced_by(figures, soak)
    lines += _figures_table(figures, soak)
    lines += _fuzz_section(figures)
    lines += _clients_section(figures)
    lines += _faults_section(figures)
    lines += _hostile_section(figures)
    lines += _soak_section(soak, png)
    lines += _http_section()
    lines += _policy_section()
    lines += _findings_section()
    return "\n".join(lines) + "\n"


def _produced_by(figures: dict[str, Any], soak: dict[str, Any] | None) -> list[str]:
    run = figures.get("run")
    lines = ["Produced by (what `nox -s stress` runs):", "", "```"]
    if run:
        lines.append(f"VOXTRIO_STRESS_FIGURES=bench/results/stress-figures.json {run['command']}")
    if soak:
        lines.append(soak.get("command", "python -m tests.stress.soak"))
    lines.append("```")
    if run:
        lines += ["", f"pytest exit status {run['exit_status']}, finished {run['finished']}."]
    lines += [
        "",
        "Latencies come from a small shared machine (other work ran beside these runs): read",
        "them as orders of magnitude, not as benchmarks (docs/BENCHMARKS.md has those).",
        "",
    ]
    return lines


def _figures_table(figures: dict[str, Any], soak: dict[str, Any] | None) -> list[str]:
    rows = [
        "| suite | inputs / clients | requests | failures | leaks found |",
        "|---|---|---|---|---|",
    ]
    suites = (("fuzz_native", "native"), ("fuzz_dashscope", "DashScope"))
    for key, endpoint in suites:
        fig = figures.get(key)
        if fig:
            inputs = f"{_n(fig['inputs'])} inputs on {_n(fig['connections'])} connections"
            requests = _n(fig.get("requests", "-"))
            rows.append(
                f"| protocol fuzzing, {endpoint} | {inputs} | {requests} | {fig['failures']} | "
                f"{_leak_count(fig['leaks'])} |"
            )
    fig = figures.get("clients")
    if fig:
        rows.append(
            f"| misbehaving clients | {_n(fig['clients'])} clients in {fig['rounds']} rounds | "
            f"{_n(fig['requests'])} | {_client_failures(fig)} | {len(fig['leaks'])} |"
        )
    fig = figures.get("faults_scheduled")
    if fig:
        injected = sum(fig["faults"].values())
        rows.append(
            f"| engine faults | {injected} faults injected | {_n(fig['requests'])} | "
            f"{len(fig['server_errors'])} | {_leak_count(fig['leaks'])} |"
        )
    if soak:
        unexpected = sum(soak["unexpected"].values())
        rows.append(
            f"| soak, {soak['config']['duration']:g} s ({soak['config']['engine']}) | "
            f"{soak['config']['clients']} client loops | {_n(soak['requests'])} | "
            f"{unexpected + len(soak['server_errors'])} | {_leak_count(soak['leaks'])} |"
        )
    if len(rows) == 2:
        rows.append("| (no figures: run `nox -s stress`) | | | | |")
    return [*rows, ""]


def _first(items: list[str]) -> str:
    return f" (e.g. `{items[0][:240]}`)" if items else ""


def _client_failures(fig: dict[str, Any]) -> int:
    return len(fig["violations"]) + len(fig["server_errors"]) + len(fig["unanswered_cancels"])


def _fuzz_section(figures: dict[str, Any]) -> list[str]:
    lines = ["### Protocol fuzzing", ""]
    lines += [
        "Hypothesis generates and mutates messages for both endpoints: wrong JSON types for",
        "each field's schema, numbers out of range (huge ones too: thousands of digits,",
        "NaN / Infinity / 1e999 written out), deep JSON (10 to 10 000 levels), unknown and",
        "missing fields, unknown types and actions, duplicate and unknown request / task",
        "ids, binary frames where text is expected, SSML bombs (DTDs, entity expansion, deep",
        "nesting, thousands of elements, hours of breaks), invalid UTF-8 in text frames and",
        "oversized frames.",
        "Each message is followed by a sentinel (a ping, an unknown action) so every answer",
        "is attributed to its message. Every invalid message must get its specific error",
        "(task-failed on DashScope) or, for broken framing, a close; a valid one anything but",
        "INTERNAL_ERROR; every request exactly one terminal message; a bystander request on",
        "another connection all of its chunks; and the server, one instance for all",
        "examples, must end as it started.",
        "",
    ]
    for key, title in (("fuzz_native", "Native"), ("fuzz_dashscope", "DashScope")):
        fig = figures.get(key)
        if not fig:
            continue
        lines.append(f"- {title}: {_n(fig['inputs'])} inputs ({_counts(fig['by_kind'])}).")
        lines.append(f"  Answers: {_counts(fig['answers'])}.")
    return [*lines, ""]


def _clients_section(figures: dict[str, Any]) -> list[str]:
    fig = figures.get("clients")
    lines = ["### Misbehaving clients", ""]
    lines += [
        "Hundreds of clients at once, each with a behaviour: polite; gone mid-handshake,",
        "mid-frame or mid-stream (close frame, FIN or RST); text streams abandoned; never",
        "reading 19 MB of audio; reconnect storms; cancel storms (at once, later, twice, for",
        "unknown ids); pings without end; garbage beside a real request; DashScope tasks",
        "finished, cancelled or abandoned. The server runs in the test's process, alone on",
        "its event loop, with the synthetic engine (2 model instances) and its own default",
        "timeouts,",
        "so the audit can see its pool, connections and generators; each round's clients run",
        "in a process of their own (`python -m tests.stress.chaos`), as users' clients do.",
        "The server's log says whom it cut (ping timeout, write timeout), matched to the",
        "clients by port: a client that reads (polite, garbage, cancel storm, ping flood,",
        "early frame, DashScope polite) cut by the server is a failure.",
        "",
    ]
    if not fig:
        return [*lines, "(not run)", ""]
    lines += [
        f"- Clients: {_counts(fig['behaviours'])}.",
        f"- Native request outcomes: {_counts(fig['native_outcomes'])} (lost: the client "
        "left before its terminal message, which is allowed).",
        f"- DashScope task outcomes: {_counts(fig['dashscope_outcomes'])}.",
        f"- Exactly-one-terminal violations: {len(fig['violations'])}; server error logs: "
        f"{len(fig['server_errors'])}{_first(fig['server_errors'])}; leaks: {len(fig['leaks'])}.",
        f"- RSS after the {fig.get('warmup_rounds', 1)} warm-up rounds {fig['rss_warm_mb']} "
        f"MiB; after each round {', '.join(map(str, fig['rss_after_rounds_mb']))} MiB "
        f"(limit +{RSS_TOLERANCE:.0%}).",
    ]
    if fig.get("heap_warm_blocks"):
        lines.append(
            f"- Python heap (allocated blocks) after the warm-up {_n(fig['heap_warm_blocks'])}; "
            f"after each round {', '.join(map(_n, fig['heap_after_rounds_blocks']))} "
            f"(limit +{HEAP_TOLERANCE:.0%})."
        )
    lines.append(
        f"- Cancels that got neither complete {{cancelled}} nor UNKNOWN_REQUEST: "
        f"{len(fig['unanswered_cancels'])}{_first(fig['unanswered_cancels'])}."
    )
    if "server_cuts" in fig:
        timeouts = ", ".join(f"{k} {v:g} s" for k, v in fig.get("timeouts", {}).items())
        lines.append(
            f"- Clients the server cut: {_counts(fig['server_cuts']) or 'none'}; clients that "
            f"read among them: {len(fig['reading_clients_cut'])} ({timeouts})."
        )
        gave_up = fig["events"].get("gave up on a slow handshake", 0)
        lines.append(
            f"- Worst event-loop lag: server {fig['server_loop_lag_max_s']} s, clients "
            f"{fig['client_loop_lag_max_s']} s; clients that gave up on a handshake not "
            f"answered within 10 s: {gave_up}."
        )
    return [*lines, ""]


def _faults_section(figures: dict[str, Any]) -> list[str]:
    lines = ["### Engine faults", ""]
    lines += [
        "`tests.stress.harness.FaultyEngine` wraps an engine (the synthetic one, or the tiny",
        "checkpoint through real voxcpm) and raises, returns NaN audio or hangs at a given",
        "step, on a schedule or where the text says so.",
        "",
    ]
    fig = figures.get("faults_scheduled")
    if fig:
        lines.append(
            "- On a schedule (3 model instances of one slot each, 20 connections): "
            f"{_n(fig['requests'])} requests, "
            f"faults injected {_counts(fig['faults'])}; outcomes {_counts(fig['outcomes'])}: "
            "each fault failed exactly its own request with GENERATION_FAILED."
        )
    fig = figures.get("faults_hangs")
    if fig:
        lines.append(
            f"- Hangs: {fig['hangs']} in a row, each reported by /health as 503 `stalled` "
            f"{', '.join(f'{s:g}' for s in fig['seconds_to_503'])} s after it began "
            f"(stall timeout {fig['stall_timeout_s']:g} s); the other instances served "
            "meanwhile; a cancel still answered after --stop-timeout; the hung slot was "
            "never handed a second job and came back once its generation ended."
        )
    fig = figures.get("faults_tiny_checkpoint")
    if fig:
        lines.append(f"- Tiny checkpoint: native {fig['native']}, DashScope {fig['dashscope']}.")
    fig = figures.get("faults_dashscope")
    if fig:
        lines.append(f"- DashScope tasks with faulty sentences (faulty:outcome): {fig['tasks']}.")
    lines += [
        "- NaN audio: the request ends with GENERATION_FAILED and no frame carries any of",
        "  the poisoned chunk (streaming: the chunks before it only; non-streaming: none).",
        "",
    ]
    return lines


def _hostile_section(figures: dict[str, Any]) -> list[str]:
    """Issue 15's attacks, each against a server of its own (tests/stress/test_hostile.py)."""
    lines = ["### Hostile input", ""]
    fig = figures.get("hostile_uploads")
    if fig:
        lines.append(
            f"- Parked uploads: {fig['connections']} connections each parking "
            f"{fig['parked_mb_each']:g} MiB of an unfinished voice_register against a "
            f"{fig['budget_mb']:g} MiB budget: {fig['refused']} closed with 1009, RSS "
            f"+{fig['rss_growth_mb']} MiB at the peak."
        )
    fig = figures.get("hostile_slowloris")
    if fig:
        lines.append(
            f"- Side-port slowloris: {fig['connections']} connections trickling a byte each; "
            f"{fig['probes_ok']} of {fig['probes']} /ready probes answered 200; "
            f"{fig['shed_warnings']} shed warning(s) logged."
        )
    fig = figures.get("hostile_interim_flood")
    if fig:
        lines.append(
            f"- 1xx flood from an allow-listed origin: a bystander's ping p50 "
            f"{fig['ping_p50_ms']} ms, max {fig['ping_max_ms']} ms; the request got "
            f"`{fig['terminal']}`."
        )
    fig = figures.get("hostile_id3")
    if fig:
        lines.append(f"- ID3 + AIFF voice_register: `{fig['reply']}`.")
    embedded = sorted(k for k in figures if k.startswith("hostile_embedded_ipv4_"))
    for key in embedded:
        address = key.removeprefix("hostile_embedded_ipv4_")
        lines.append(f"- prompt_wav_url on [{address}]: `{figures[key]['reply']}`.")
    fig = figures.get("clients")
    if fig:
        behaviours = fig["behaviours"]
        lines.append(
            f"- In the misbehaving-clients rounds: {behaviours.get('early_frame', 0)} clients "
            f"sent their first request in the handshake's TCP write and "
            f"{behaviours.get('framing_violation', 0)} broke RFC 6455 framing (each must get "
            "its answer, or 1002/1007); violations are counted with the rounds' problems above."
        )
    if len(lines) == 2:
        return []
    return [*lines, ""]


def _soak_section(soak: dict[str, Any] | None, png: Path | None) -> list[str]:
    lines = ["### Soak", ""]
    if not soak:
        return [*lines, "(not run)", ""]
    config = soak["config"]
    lines += [
        f"`{soak.get('command', 'python -m tests.stress.soak')}`: {config['duration']:g} s of "
        f"mixed load from {config['clients']} client loops on `voxtrio serve` with the "
        f"{config['engine']} engine ({config['workers']} model instances), warm-up "
        f"{config['warmup_s']:g} s.",
        "",
        f"- Requests: {_n(soak['requests'])} ({_counts(soak['by_action'])}).",
        f"- Outcomes: {_counts(soak['outcomes'])}.",
        f"- Unexpected outcomes: {soak['unexpected'] or 'none'}; server error log lines: "
        f"{len(soak['server_errors'])}; SIGTERM drain exit code {soak.get('exit_code')}.",
        f"- First audio (ms): p50 {soak['first_audio_ms']['p50']}, p95 "
        f"{soak['first_audio_ms']['p95']}, p99 {soak['first_audio_ms']['p99']}.",
        f"- RSS: {soak['rss_warm_mb']} MiB after warm-up, {soak['rss_end_mb']} MiB at the end "
        f"(limit +{RSS_TOLERANCE:.0%}); threads {soak['threads_warm']} -> {soak['threads_end']}; "
        f"gauges at the end {soak['gauges_end']}.",
        f"- Leaks: {soak['leaks'] or 'none'}.",
        "",
        "| window start (s) | requests | unexpected | first audio p50 / p95 / p99 (ms) |",
        "|---|---|---|---|",
    ]
    for w in soak["windows"]:
        lines.append(
            f"| {w['start_s']:g} | {w['requests']} | {w['errors']} | "
            f"{w['p50']} / {w['p95']} / {w['p99']} |"
        )
    if png is not None:
        rel = os.path.relpath(png, ROOT / "docs")
        lines += ["", f"![soak: first audio, RSS and requests over time]({rel})"]
    return [*lines, ""]


HTTP_ATTACKS = Path(__file__).resolve().parents[2] / "bench" / "results" / "http-attacks.md"


def _http_section() -> list[str]:
    """`python -m bench http_attacks`'s before/after figures, kept in bench/results."""
    if not HTTP_ATTACKS.exists():
        return []
    return ["## HTTP attack families", "", *HTTP_ATTACKS.read_text().rstrip().splitlines(), ""]


def _policy_section() -> list[str]:
    return [
        "## What the audit checks",
        "",
        "After each run, once the clients are gone and the server has had its named deadline",
        "to notice (`settle_deadline`: write timeout + stop timeout + handshake timeout + 5 s):",
        "",
        "- `len(server.connections) == 0`, `pool.slots_busy == 0`, `pool.admitted == 0`,",
        "  `pool.waiting == 0`, and every engine's `open_generations == 0`;",
        "- the live gauges on /metrics (`voxcpm_tts_active_connections`, `_running_tasks`,",
        "  `_queue_length`, `_slots_busy`) read 0, parsed with prometheus_client;",
        "- threads: the model instances' threads are long-lived by design, so exactly `workers` of",
        "  them, the same objects, all alive; any other thread started since the server",
        "  started is a leak, except trio's idle thread-cache workers (named `Trio thread N`),",
        "  which trio reuses and ends after 10 s idle. A cached worker that is running",
        "  something carries its job's name instead, and counts as a leak;",
        f"- RSS within {RSS_TOLERANCE:.0%} of its warmed-up level, after `gc.collect()` and",
        "  glibc `malloc_trim(0)` (pages freed but not yet returned are not a leak). In-process",
        "  the first three rounds are the warm-up (the allocator's high-water mark settles over",
        "  a few mixes of clients) and the last round repeats the first; there, too, Python's",
        f"  heap (`sys.getallocatedblocks()`) within {HEAP_TOLERANCE:.0%} of its warmed-up",
        "  count, which no allocator behaviour can hide or fake. The soak pauses its",
        "  load after the warm-up phase and measures the idle server process then and at the",
        "  end (threads too: no more at the end than after the warm-up);",
        "- no error-level line in the server's log, and (soak) a SIGTERM drain that exits 0.",
        "",
        "Every client loop is bounded in count and time (a client stuck for 90 s is a",
        "failure), and everything runs on 127.0.0.1.",
        "",
    ]


def _findings_section() -> list[str]:
    lines = [
        "## Faults found",
        "",
        "Found by these suites while they were written. Each has a regression test in",
        "`tests/server/test_reliability.py`, named after what it caught, that failed before its",
        "fix.",
        "A fault not fixed yet has its test marked `xfail(strict=True)`: it XPASSes (and so",
        "fails) once the fix lands, and then the marker goes.",
        "",
        "| fault | where | regression test | status |",
        "|---|---|---|---|",
    ]
    for fault, where, test, status in FINDINGS:
        lines.append(f"| {fault} | {where} | `{test}` | {status} |")
    lines += [
        "",
        "Also seen, in a dependency, and accepted by the suites: a message far over the size",
        "limit may reach the client as 1006 rather than 1009, when the kernel's reset to the",
        "bytes still coming overtakes the close frame (trio-websocket closes the socket at",
        "once). Only that connection is affected.",
        "",
        "By design, not a fault: a generation that hangs holds its request until the client",
        "cancels or leaves (the cancel is answered after --stop-timeout, its slot stays",
        "taken until its thread really ends); /health turns 503 after --stall-timeout so the",
        "watchdog restarts the process.",
    ]
    return lines


def write_report(
    path: Path, figures: dict[str, Any], soak: dict[str, Any] | None, png: Path | None
) -> None:
    path.write_text(render(figures, soak, png))
