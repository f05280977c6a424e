"""Hostile-input probe: what a running server answers to the messages of issue 15.

    python -m bench hostile_input [--engine voxcpm --model DIR] [--upload]

Starts `voxtrio serve` on 127.0.0.1 (a subprocess, its own event loop) and, per attack,
sends its messages on a fresh connection while a bystander (another process, another
connection) pings every 5 ms. Per row: the close code (None: the connection stayed
open), the reply size in bytes, the stall (the longest gap between the bystander's
pongs while the attack was handled; a healthy loop answers in ~1 ms) and the answer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from ..harness import serving

PING_EVERY = 0.005


def unknown_keys(size: int) -> str:
    """A tts_request whose params carry distinct unknown keys ("n0":0, ...) to `size` bytes."""
    head = '{"type":"tts_request","request_id":"k","params":{"text":"Hi.",'
    keys, total, n = [], len(head) + 2, 0
    while total < size:
        key = f'"n{n}":0'
        keys.append(key)
        total += len(key) + 1
        n += 1
    return head + ",".join(keys) + "}}"


def dash_unknown_keys(size: int) -> str:
    """A run-task whose parameters carry distinct unknown keys to `size` bytes."""
    head = (
        '{"header":{"action":"run-task","task_id":"k","streaming":"duplex"},'
        '"payload":{"task_group":"audio","task":"tts","function":"SpeechSynthesizer",'
        '"input":{},"parameters":{'
    )
    keys, total, n = [], len(head) + 3, 0
    while total < size:
        key = f'"n{n}":0'
        keys.append(key)
        total += len(key) + 1
        n += 1
    return head + ",".join(keys) + "}}}"


def tts(rid: str, **params: Any) -> str:
    return json.dumps({"type": "tts_request", "request_id": rid, "params": params})


def run_task(task_id: str, **parameters: Any) -> dict[str, Any]:
    return {
        "header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "input": {},
            "parameters": {"format": "pcm", "sample_rate": 16000, **parameters},
        },
    }


def continue_task(task_id: str, text: str) -> str:
    return json.dumps(
        {
            "header": {"action": "continue-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {"input": {"text": text}},
        }
    )


def finish_task(task_id: str) -> dict[str, Any]:
    return {
        "header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {"input": {}},
    }


LONE = "\ud800"  # json.dumps writes it as the legal escape "\ud800"


def native_attacks(upload: bool, model: bool) -> list[tuple[str, list[str]]]:
    attacks = [
        ("1 surrogate request_id (tts_request)", [tts(LONE, text="Hi.")]),
        ("1 surrogate request_id (cancel)", [json.dumps({"type": "cancel", "request_id": LONE})]),
        ("1 surrogate request_id (invalid msg)", [tts("x" + LONE, text=5)]),
        ("1 surrogate unknown key", [tts("r", text="Hi.", **{LONE: 1})]),
        ("1 surrogate in text", [tts("r", text="Hi " + LONE + " there.")]),
        (
            "12 three field errors",
            [
                tts(
                    "r",
                    text="Hi.",
                    inference_timesteps=51,
                    retry_badcase_max_times=11,
                    normalize="yes",
                )
            ],
        ),
        ("12 length + type", [tts("r", text="a" * 5001, normalize="yes")]),
        ("12 range + unknown key", [tts("r", text="Hi.", cfg_value=99, cfg_valeu=2)]),
        ("3 unknown keys 240 kB (30k keys)", [unknown_keys(240_000)]),
        ("3 unknown keys 1 MiB", [unknown_keys((1 << 20) - 200)]),
    ]
    if upload:
        attacks.append(("3 unknown keys 13.5 MB", [unknown_keys(13_500_000)]))
    if model:  # the tokenizer's limit: only a real VoxCPM engine has one
        attacks += [
            ("9 a + 4999 combining marks", [tts("r", text="a" + "\u0301" * 4999, max_len=2)]),
            ("9 5000 digits, normalize", [tts("r", text="7" * 5000, normalize=True, max_len=2)]),
        ]
    return attacks


def dash_attacks(upload: bool) -> list[tuple[str, list[str]]]:
    attacks = [
        ("1 surrogate task_id", [json.dumps(run_task(LONE))]),
        ("1 surrogate parameter key", [json.dumps(run_task("t", **{LONE: 1}))]),
        (
            "1 surrogate continue text",
            [
                json.dumps(run_task("t")),
                continue_task("t", "Hi " + LONE + " there."),
                json.dumps(finish_task("t")),
            ],
        ),
        (
            "2 break 400 digits",
            [
                json.dumps(run_task("t", enable_ssml=True)),
                continue_task("t", f'<speak>A<break time="{"9" * 400}s"/>B</speak>'),
            ],
        ),
        ("3 unknown keys 240 kB (30k keys)", [dash_unknown_keys(240_000)]),
        ("3 unknown keys 1 MiB", [dash_unknown_keys((1 << 20) - 200)]),
    ]
    if upload:
        attacks.append(("3 unknown keys 13.5 MB", [dash_unknown_keys(13_500_000)]))
    return attacks


async def pinger(url: str, log: Path) -> None:
    """Ping every 5 ms until killed; log "wall-clock end of round trip, gap since the last"."""
    async with open_websocket_url(url) as ws:
        stamp = 0
        last = time.time()
        with log.open("a") as out:
            while True:
                stamp += 1
                await ws.send_message(json.dumps({"type": "ping", "timestamp": stamp}))
                await ws.get_message()
                now = time.time()
                out.write(f"{now} {now - last}\n")
                out.flush()
                last = now
                await trio.sleep(PING_EVERY)


def stall_ms(log: Path, start: float, end: float) -> float:
    """The longest pong gap that overlaps [start, end]."""
    worst = 0.0
    for line in log.read_text().splitlines():
        stamp, gap = (float(x) for x in line.split())
        if stamp >= start and stamp - gap <= end:
            worst = max(worst, gap)
    return worst * 1000


async def attack(url: str, messages: list[str], dashscope: bool) -> dict[str, Any]:
    replies: list[str | bytes] = []
    close: int | None = None
    async with open_websocket_url(url, max_message_size=256 * 1024 * 1024) as ws:
        for message in messages:
            await ws.send_message(message)
        with trio.move_on_after(60):
            try:
                while True:
                    reply = await ws.get_message()
                    replies.append(reply)
                    if _terminal(reply, dashscope):
                        break
            except ConnectionClosed as exc:
                close = exc.reason.code if exc.reason else None
    texts = [r for r in replies if isinstance(r, str)]
    answer = texts[-1] if texts else ""
    return {"close": close, "answer": answer, "bytes": sum(len(r) for r in replies)}


def _terminal(reply: str | bytes, dashscope: bool) -> bool:
    if isinstance(reply, bytes):
        return False
    event = json.loads(reply)
    if dashscope:
        return event["header"]["event"] in ("task-failed", "task-finished")
    return event.get("type") in ("error", "complete")


def summarise(answer: str, dashscope: bool) -> str:
    if not answer:
        return "-"
    event = json.loads(answer)
    if dashscope:
        head = event["header"]
        return f"{head.get('error_code', head['event'])}: {head.get('error_message', '')[:150]}"
    if event.get("type") == "error":
        return f"{event['error']['code']}: {event['error']['message'][:150]}"
    return event.get("type", "?")


async def probe(ws_url: str, upload: bool, model: bool, log: Path) -> None:
    base = "/".join(ws_url.split("/", 3)[:3])
    runs = ((False, native_attacks(upload, model)), (True, dash_attacks(upload)))
    for dashscope, attacks in runs:
        url = base + ("/api-ws/v1/inference" if dashscope else "/tts")
        for label, messages in attacks:
            await trio.sleep(0.3)
            start = time.time()
            result = await attack(url, messages, dashscope)
            await trio.sleep(0.3)  # the pong that ends the longest gap may come after
            stall = stall_ms(log, start, time.time() - 0.3)
            endpoint = "dashscope" if dashscope else "native"
            print(
                f"{endpoint:9} | {label:38} | close {result['close']!s:4} | "
                f"reply {result['bytes']:>10} B | stall {stall:7.1f} ms | "
                f"{summarise(result['answer'], dashscope)}",
                flush=True,
            )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="synthetic")
    parser.add_argument("--model", help="VoxCPM checkpoint (with --engine voxcpm)")
    parser.add_argument("--upload", action="store_true", help="--allow-voice-upload (13.5 MB)")
    parser.add_argument("--pinger", nargs=2, metavar=("URL", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pinger:
        trio.run(pinger, args.pinger[0], Path(args.pinger[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--engine", args.engine]
        if args.model:
            flags += ["--model", args.model]
        if args.upload:
            flags += ["--allow-voice-upload", "--voices-dir", str(Path(tmp) / "voices")]
        with serving(flags, workdir=Path(tmp)) as server:
            url = server.url
            log = Path(tmp) / "pongs"
            # The bystander runs in its own process: the probe's own work on huge replies
            # must not count as the server's stall.
            bystander = subprocess.Popen(
                [sys.executable, "-m", "bench", "hostile_input", "--pinger", url, str(log)]
            )
            try:
                trio.run(probe, url, args.upload, args.model is not None, log)
            finally:
                bystander.kill()
                bystander.wait()
