"""One synthesis request, from admission to its one terminal message."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import attrs
import numpy as np
import structlog
import trio

from ._codecs import check_finite, float_to_pcm16
from ._engine import SynthesisSpec
from ._errors import ErrorCode, ProtocolError
from ._frames import FrameType, encode_frame
from ._messages import (
    CancelledResult,
    Complete,
    Error,
    ErrorBody,
    Progress,
    ProgressState,
    ServerMessage,
    SynthesisResult,
    Timings,
    TtsRequest,
    dump_message,
    error_message,
)
from ._replicas import Job, ReplicaPool
from ._writer import ConnectionGone, FrameWriter

log = structlog.get_logger("voxtrio.request")


def spec_for(request: TtsRequest) -> SynthesisSpec:
    p = request.params
    return SynthesisSpec(
        text=p.text,
        streaming=p.mode == "streaming",
        cfg_value=p.cfg_value,
        inference_timesteps=p.inference_timesteps,
        normalize=p.normalize,
        denoise=p.denoise,
        retry_badcase=p.retry_badcase,
        retry_badcase_max_times=p.retry_badcase_max_times,
        retry_badcase_ratio_threshold=p.retry_badcase_ratio_threshold,
        # Without a seed each request gets a fresh one, reported back so it can be replayed.
        seed=p.seed if p.seed is not None else secrets.randbits(63),
        max_len=p.max_len if p.max_len is not None else 4096,
    )


@attrs.define
class RequestRun:
    """The state of one request while it runs on its own task."""

    request: TtsRequest
    writer: FrameWriter
    pool: ReplicaPool
    progress_interval: float
    accepted_at: float = attrs.field(factory=trio.current_time)
    queue_ms: float = 0.0
    first_audio_at: float | None = None
    chunks: int = 0
    samples: int = 0
    _last_progress: tuple[str, float] | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def _ms_since_accepted(self, when: float) -> float:
        return round((when - self.accepted_at) * 1000, 3)

    async def send(self, message: ServerMessage) -> None:
        await self.writer.send(dump_message(message))

    async def progress(self, state: ProgressState, value: float, message: str = "") -> None:
        value = round(min(max(value, 0.0), 1.0), 4)
        if self._last_progress == (state, value):
            return
        self._last_progress = (state, value)
        await self.send(Progress(self.request_id, state, value, message))

    async def synthesize(self) -> SynthesisResult:
        spec = spec_for(self.request)
        await self.progress("queued", 0.0, "waiting for a model replica")
        async with self.pool.run(spec, request_id=self.request_id) as (job, chunks):
            self.queue_ms = self._ms_since_accepted(trio.current_time())
            await self.progress("processing", 0.0, "generating")
            pieces: list[bytes] = []
            failure: BaseException | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_progress, job)
                try:
                    async for chunk in chunks:
                        pcm = self._to_pcm(chunk)
                        if spec.streaming:
                            await self._send_chunk(pcm, is_final=False)
                        else:
                            pieces.append(pcm)
                except (ProtocolError, ConnectionGone) as exc:
                    # Raised outside the nursery, so callers see it bare, not in a group.
                    failure = exc
                nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
            # The channel closes only once the thread is done, so the outcome is known.
            await job.done.wait()
            self._raise_if_failed(job)
        if spec.streaming:
            await self._send_chunk(b"", is_final=True)
        else:
            await self.progress("encoding", 1.0, "sending audio")
            await self._send_whole(b"".join(pieces))
        total_ms = self._ms_since_accepted(trio.current_time())
        duration = self.samples / self.pool.sample_rate
        compute = (job.finished_at or 0.0) - (job.started_at or 0.0)
        return SynthesisResult(
            duration=round(duration, 6),
            sample_rate=self.pool.sample_rate,
            samples=self.samples,
            chunks=self.chunks,
            seed=spec.seed,
            timings=Timings(
                queue_ms=self.queue_ms,
                first_audio_ms=(
                    self._ms_since_accepted(self.first_audio_at) if self.first_audio_at else None
                ),
                total_ms=total_ms,
                rtf=round(compute / duration, 4) if duration > 0 else None,
            ),
        )

    def _to_pcm(self, chunk: np.ndarray) -> bytes:
        try:
            check_finite(chunk)
        except ValueError:
            raise ProtocolError(
                ErrorCode.GENERATION_FAILED,
                "the model produced invalid (non-finite) audio; nothing of it was sent",
                request_id=self.request_id,
            ) from None
        self.chunks += 1
        self.samples += int(chunk.shape[0])
        return float_to_pcm16(chunk)

    def _raise_if_failed(self, job: Job) -> None:
        assert job.result is not None
        try:
            job.result.unwrap()
        except Exception as exc:
            log.warning("generation_failed", error=repr(exc))
            raise ProtocolError(
                ErrorCode.GENERATION_FAILED,
                f"generation failed: {type(exc).__name__}: {exc}"[:500],
                request_id=self.request_id,
            ) from exc
        if job.stopped:
            raise ProtocolError(
                ErrorCode.GENERATION_FAILED,
                "generation stopped before it finished",
                request_id=self.request_id,
            )

    async def _send_chunk(self, pcm: bytes, *, is_final: bool) -> None:
        metadata = {
            "request_id": self.request_id,
            "sequence": self.chunks - 1 if not is_final else self.chunks,
            "sample_rate": self.pool.sample_rate,
            "is_final": is_final,
        }
        await self.writer.send(encode_frame(FrameType.STREAMING_CHUNK, metadata, pcm))
        if self.first_audio_at is None and pcm:
            self.first_audio_at = trio.current_time()

    async def _send_whole(self, pcm: bytes) -> None:
        metadata = {
            "request_id": self.request_id,
            "sample_rate": self.pool.sample_rate,
            "duration": round(self.samples / self.pool.sample_rate, 6),
        }
        await self.writer.send(encode_frame(FrameType.NON_STREAMING, metadata, pcm))
        self.first_audio_at = trio.current_time()

    async def _report_progress(self, job: Job) -> None:
        while True:
            await trio.sleep(self.progress_interval)
            expected = job.expected_steps or 0
            if expected and job.steps:
                await self.progress(
                    "generating", job.steps / expected, f"{job.steps}/{expected} steps"
                )


@attrs.define(eq=False)
class RequestControl:
    """How the connection stops a running request, and why."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    reason: Literal["cancel", "shutdown"] | None = None

    def stop(self, reason: Literal["cancel", "shutdown"]) -> None:
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()


async def run_request(
    request: TtsRequest,
    *,
    writer: FrameWriter,
    pool: ReplicaPool,
    control: RequestControl,
    progress_interval: float,
) -> None:
    """Run one request and send exactly one terminal message (unless the peer is gone).

    Never raises (but Cancelled, when the whole connection goes): errors become
    the request's `error` message.
    """
    cancel_scope = control.scope
    run = RequestRun(request, writer, pool, progress_interval)
    started = time.perf_counter()
    fields: dict[str, Any] = {"mode": request.params.mode, "text_chars": len(request.params.text)}
    outcome = "disconnected"
    try:
        terminal: ServerMessage
        try:
            with cancel_scope:
                result = await run.synthesize()
            if cancel_scope.cancelled_caught and control.reason == "shutdown":
                raise ProtocolError(
                    ErrorCode.SHUTTING_DOWN,
                    "the server is shutting down and the drain deadline passed",
                    details={"retry_after_ms": 1000},
                )
            if cancel_scope.cancelled_caught:
                terminal, outcome = Complete(run.request_id, CancelledResult()), "cancelled"
            else:
                terminal, outcome = Complete(run.request_id, result), "ok"
                fields.update(
                    audio_seconds=result.duration,
                    first_audio_ms=result.timings.first_audio_ms,
                    queue_ms=result.timings.queue_ms,
                    rtf=result.timings.rtf,
                )
        except ProtocolError as exc:
            exc.request_id = run.request_id
            terminal, outcome = error_message(exc), str(exc.code)
        except ConnectionGone:
            raise
        except Exception as exc:
            log.exception("request_crashed")
            terminal, outcome = (
                Error(
                    run.request_id,
                    ErrorBody(ErrorCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}"),
                ),
                str(ErrorCode.INTERNAL_ERROR),
            )
        await run.send(terminal)
    except ConnectionGone as exc:
        outcome = "disconnected"
        fields["reason"] = str(exc)
    finally:
        log.info(
            "request_finished",
            outcome=outcome,
            chunks=run.chunks,
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            **fields,
        )
