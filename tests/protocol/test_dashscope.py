"""The DashScope duplex protocol state machine (voxtrio.protocol._dashscope), without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voxtrio.protocol._dashscope import (
    DEFAULT_SAMPLE_RATE,
    CancelTask,
    DashScopeCapabilities,
    DashScopeErrorCode,
    DashScopeTask,
    FinishTask,
    SendEvent,
    SpeakSentence,
    StartTask,
    TaskState,
    count_characters,
    volume_to_gain,
)
from voxtrio.server._dashscope_audio import make_encoder

TID = "0123456789abcdef0123456789abcdef"


def run_task(task_id: str = TID, **parameters: Any) -> str:
    """run-task exactly as dashscope's Request.get_start_request builds it."""
    params: dict[str, Any] = {
        "voice": "default",
        "volume": 50,
        "text_type": "PlainText",
        "sample_rate": 22050,
        "rate": 1.0,
        "format": "mp3",
        "pitch": 1.0,
        "seed": 0,
        "type": 0,
    }
    params.update(parameters)
    params = {k: v for k, v in params.items() if v is not ...}
    return json.dumps(
        {
            "header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {
                "model": "cosyvoice-v2",
                "task_group": "audio",
                "task": "tts",
                "function": "SpeechSynthesizer",
                "input": {},
                "parameters": params,
            },
        }
    )


def continue_task(text: str | None = None, task_id: str = TID, flush: bool = False) -> str:
    data: dict[str, Any] = {"flush": True} if flush else {"text": text}
    return json.dumps(
        {
            "header": {"action": "continue-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {
                "model": "cosyvoice-v2",
                "task_group": "audio",
                "task": "tts",
                "function": "SpeechSynthesizer",
                "input": data,
            },
        }
    )


def finish_task(task_id: str = TID, directive: str | None = None) -> str:
    data = {} if directive is None else {"directive": directive}
    return json.dumps(
        {
            "header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
            "payload": {"input": data},
        }
    )


def events(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendEvent)]


def failure(actions: list[Any]) -> dict[str, Any]:
    (event,) = [e for e in events(actions) if e["header"]["event"] == "task-failed"]
    header: dict[str, Any] = event["header"]
    return header


def sentences(actions: list[Any]) -> list[SpeakSentence]:
    return [a for a in actions if isinstance(a, SpeakSentence)]


def started(caps: DashScopeCapabilities | None = None, **parameters: Any) -> DashScopeTask:
    task = DashScopeTask(caps or DashScopeCapabilities())
    actions = task.receive_text(run_task(**parameters))
    assert [type(a) for a in actions] == [StartTask, SendEvent], actions
    return task


# ---------------------------------------------------------------- run-task


def test_run_task_starts_with_the_sdk_defaults() -> None:
    task = DashScopeTask()
    start, reply = task.receive_text(run_task())
    assert isinstance(start, StartTask)
    assert start.task_id == TID
    assert start.model == "cosyvoice-v2"
    assert not start.model_known
    assert start.ignored == {}
    params = start.params
    assert (params.voice, params.format, params.sample_rate) == ("default", "mp3", 22050)
    assert (params.gain, params.rate, params.pitch, params.seed) == (1.0, 1.0, 1.0, 0)
    assert params.bit_rate is None
    assert not params.enable_ssml
    assert isinstance(reply, SendEvent)
    assert json.loads(reply.text) == {
        "header": {"task_id": TID, "event": "task-started", "attributes": {}},
        "payload": {},
    }
    assert task.state is TaskState.STARTED


def test_sdk_default_format_means_mp3_at_22050() -> None:
    # AudioFormat.DEFAULT sends format "Default" and sample_rate 0.
    task = DashScopeTask()
    start = task.receive_text(run_task(format="Default", sample_rate=0))[0]
    assert isinstance(start, StartTask)
    assert (start.params.format, start.params.sample_rate) == ("mp3", DEFAULT_SAMPLE_RATE)


@pytest.mark.parametrize(
    ("fmt", "expected"), [("pcm", "pcm16"), ("wav", "wav"), ("mp3", "mp3"), ("opus", "opus")]
)
def test_format_names_map_to_encoder_formats(fmt: str, expected: str) -> None:
    start = DashScopeTask().receive_text(run_task(format=fmt, sample_rate=16000))[0]
    assert isinstance(start, StartTask)
    assert start.params.format == expected
    encoder = make_encoder(start.params, input_rate=16000)
    try:
        assert encoder.format == expected
    finally:
        encoder.close()


def test_opus_bit_rate_is_kbps_on_the_wire() -> None:
    start = DashScopeTask().receive_text(run_task(format="opus", sample_rate=24000, bit_rate=32))[0]
    assert isinstance(start, StartTask)
    assert start.params.bit_rate == 32_000
    encoder = make_encoder(start.params, input_rate=16000)
    assert encoder.bit_rate == 32_000
    encoder.close()


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"format": "aac"}, "format", "must be one of pcm, wav, mp3, opus"),
        ({"sample_rate": 11025}, "sample_rate", "must be one of 8000"),
        ({"volume": 101}, "volume", "between 0 and 100"),
        ({"volume": "50"}, "volume", "must be an integer"),
        ({"rate": 3.0}, "rate", "between 0.5 and 2.0"),
        ({"rate": 1.2}, "rate", "1.2 is not supported"),
        ({"pitch": 0.8}, "pitch", "0.8 is not supported"),
        ({"voice": "longxiaochun"}, "voice", "unknown voice 'longxiaochun'"),
        ({"format": "opus", "bit_rate": 32000}, "bit_rate", "6-510 (kbit/s)"),
        ({"format": "mp3", "bit_rate": 100}, "bit_rate", "must be one of"),
        ({"format": "wav", "bit_rate": 64}, "bit_rate", "opus and mp3 only"),
        ({"seed": 70000}, "seed", "between 0 and 65535"),
        ({"enable_ssml": "true"}, "enable_ssml", "must be a boolean"),
        ({"speed": 1.0}, "speed", "unknown key"),
        ({"hot_fix": {"replace": []}}, "hot_fix", "unknown key"),
    ],
)
def test_bad_parameters_fail_the_task_and_name_the_field(
    params: dict[str, Any], field: str, words: str
) -> None:
    task = DashScopeTask()
    actions = task.receive_text(run_task(**params))
    assert [type(a) for a in actions] == [SendEvent]  # no StartTask, nothing to cancel
    header = failure(actions)
    assert header["task_id"] == TID
    assert header["error_code"] == "InvalidParameter"
    assert field in header["error_message"]
    assert words in header["error_message"]
    assert task.state is TaskState.IDLE
    # The connection is not broken: a good run-task starts now.
    assert isinstance(task.receive_text(run_task())[0], StartTask)


def test_refused_key_fails_every_run_task() -> None:
    task = DashScopeTask(auth_error="invalid API key")
    for _ in range(2):
        header = failure(task.receive_text(run_task()))
        assert (header["error_code"], header["error_message"]) == (
            "InvalidApiKey",
            "invalid API key",
        )
    assert task.state is TaskState.IDLE


def test_every_bad_parameter_is_reported_at_once() -> None:
    header = failure(DashScopeTask().receive_text(run_task(format="aac", sample_rate=5)))
    assert "parameters.format" in header["error_message"]
    assert "parameters.sample_rate" in header["error_message"]


def test_rate_and_pitch_pass_when_dsp_is_available() -> None:
    task = DashScopeTask(DashScopeCapabilities(dsp_available=True))
    start = task.receive_text(run_task(rate=1.25, pitch=0.9))[0]
    assert isinstance(start, StartTask)
    assert (start.params.rate, start.params.pitch) == (1.25, 0.9)
    assert start.params.needs_dsp


def test_harmless_extras_are_accepted_and_reported_for_the_log() -> None:
    task = DashScopeTask(DashScopeCapabilities(model_names=frozenset({"voxcpm"})))
    start = task.receive_text(
        run_task(
            word_timestamp_enabled=True,
            language_hints=["zh"],
            instruction="speak softly",
            text_type="PlainText",
            type=0,
        )
    )[0]
    assert isinstance(start, StartTask)
    assert start.params.word_timestamps  # used now, so not among the ignored
    assert start.ignored == {
        "language_hints": ["zh"],
        "instruction": "speak softly",
    }
    assert not start.model_known  # cosyvoice-v2: served, and flagged for the log


def test_unknown_top_level_keys_are_refused() -> None:
    """A key outside header and payload is a mistake, named in task-failed."""
    message = json.loads(run_task())
    message["junk"] = 1
    header = failure(DashScopeTask().receive_text(json.dumps(message)))
    assert "junk: unknown key" in header["error_message"]


def test_unknown_header_keys_and_attributes_are_ignored() -> None:
    """Relays add their own header keys and attributes; DashScope ignores them, so do we."""
    message = json.loads(run_task())
    message["header"]["x-trace-id"] = "abc"
    message["header"]["attributes"] = {"X-DashScope-DataInspection": "enable"}
    actions = DashScopeTask().receive_text(json.dumps(message))
    assert [e["header"]["event"] for e in events(actions)] == ["task-started"]


def test_known_header_keys_stay_strict() -> None:
    """A known header key with a wrong type is still refused."""
    message = json.loads(run_task())
    message["header"]["streaming"] = 1
    header = failure(DashScopeTask().receive_text(json.dumps(message)))
    assert "header.streaming" in header["error_message"]


def test_other_services_are_refused() -> None:
    message = json.loads(run_task())
    message["payload"]["function"] = "Recognition"
    header = failure(DashScopeTask().receive_text(json.dumps(message)))
    assert "payload.function must be 'SpeechSynthesizer'" in header["error_message"]


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"payload": {}}', "no header object"),
        ('{"header": {"action": "dance", "task_id": "t"}}', "unknown header.action 'dance'"),
    ],
)
def test_garbage_while_idle_gets_task_failed(frame: str, words: str) -> None:
    actions = DashScopeTask().receive_text(frame)
    header = failure(actions)
    assert words in header["error_message"]


def test_binary_frames_are_refused() -> None:
    task = DashScopeTask()
    assert "binary frames" in failure(task.receive_bytes(b"\x00\x01"))["error_message"]


# ---------------------------------------------------------------- text and sentences


def test_sentences_go_out_as_soon_as_they_are_complete() -> None:
    task = started()
    assert sentences(task.receive_text(continue_task("Hello there"))) == []
    (first,) = sentences(task.receive_text(continue_task(". How are")))
    assert (first.index, first.text) == (0, "Hello there.")
    (second,) = sentences(task.receive_text(continue_task(" you? I")))
    assert (second.index, second.text) == (1, "How are you?")
    actions = task.receive_text(finish_task())
    (third,) = sentences(actions)
    assert (third.index, third.text) == (2, "I")
    assert actions[-1] == FinishTask(TID, last_index=2)
    assert task.state is TaskState.FINISHING


def test_flush_speaks_what_is_buffered() -> None:
    task = started()
    task.receive_text(continue_task("no end yet"))
    (sentence,) = sentences(task.receive_text(continue_task(flush=True)))
    assert sentence.text == "no end yet"
    assert task.receive_text(continue_task(flush=True)) == []


def test_unspeakable_pieces_are_counted_but_not_spoken() -> None:
    task = started()
    actions = task.receive_text(continue_task("Hi. ... !!! "))
    actions += task.receive_text(finish_task())
    assert [s.text for s in sentences(actions)] == ["Hi."]
    done = task.sentence_audio_done(0, 100, 1000)
    assert events(done)[0]["payload"]["usage"]["characters"] == 3
    (finished,) = events(task.finished())
    assert finished["payload"]["usage"]["characters"] == len("Hi. ... !!! ")


def test_full_task_events_and_timeline() -> None:
    task = started()
    actions = task.receive_text(continue_task("First one. Second one."))
    actions += task.receive_text(finish_task())
    first, second = sentences(actions)
    begin = json.loads(task.begin_sentence(first).text)
    assert begin["header"] == {"task_id": TID, "event": "result-generated", "attributes": {}}
    assert begin["payload"]["output"] == {
        "sentence": {"index": 0, "words": [], "text": "First one.", "begin_time": 0},
        "type": "sentence-begin",
        "original_text": "First one.",
    }
    synthesis = json.loads(task.synthesis_event(TID, 0).text)
    assert synthesis["payload"]["output"] == {
        "sentence": {"index": 0, "words": []},
        "type": "sentence-synthesis",
    }
    (end0,) = events(task.sentence_audio_done(0, 24000, 16000))  # 1.5 s
    assert end0["payload"]["output"]["sentence"]["begin_time"] == 0
    assert end0["payload"]["output"]["sentence"]["end_time"] == 1500
    assert end0["payload"]["usage"] == {"characters": 10}
    assert (
        json.loads(task.begin_sentence(second).text)["payload"]["output"]["sentence"]["begin_time"]
        == 1500
    )
    (end1,) = events(task.sentence_audio_done(1, 8000, 16000))
    assert end1["payload"]["output"]["sentence"]["begin_time"] == 1500
    assert end1["payload"]["output"]["sentence"]["end_time"] == 2000
    assert end1["payload"]["usage"] == {"characters": 22}
    (finished,) = task.finished()
    assert isinstance(finished, SendEvent)
    assert json.loads(finished.text) == {
        "header": {"task_id": TID, "event": "task-finished", "attributes": {}},
        "payload": {"output": {"sentence": {"words": []}}, "usage": {"characters": 22}},
    }
    assert task.state is TaskState.IDLE


def test_connection_takes_another_task_after_task_finished() -> None:
    task = started()
    task.receive_text(continue_task("One."))
    task.receive_text(finish_task())
    task.sentence_audio_done(0, 10, 10)
    task.finished()
    actions = task.receive_text(run_task("another-task"))
    assert isinstance(actions[0], StartTask)
    (sentence,) = sentences(task.receive_text(continue_task("Again. ", task_id="another-task")))
    assert (sentence.task_id, sentence.index) == ("another-task", 0)  # indices restart


def test_sentences_must_be_reported_in_order() -> None:
    task = started()
    task.receive_text(continue_task("One. Two. "))
    with pytest.raises(ValueError, match="in order"):
        task.sentence_audio_done(1, 10, 10)


def test_finished_before_all_sentences_is_a_bug() -> None:
    task = started()
    task.receive_text(continue_task("One. "))
    task.receive_text(finish_task())
    with pytest.raises(RuntimeError, match="not done"):
        task.finished()


def test_characters_count_han_twice() -> None:
    assert count_characters("你好") == 4
    assert count_characters("中A文123") == 8
    assert count_characters("中文。") == 5
    assert count_characters("中 文。") == 6
    assert count_characters("かな") == 2  # kana count once


def test_text_limits() -> None:
    task = started(DashScopeCapabilities(max_text_chars=10, max_task_chars=15))
    header = failure(task.receive_text(continue_task("x" * 11)))
    assert "text too long" in header["error_message"]
    task = started(DashScopeCapabilities(max_text_chars=10, max_task_chars=15))
    task.receive_text(continue_task("x" * 10))
    actions = task.receive_text(continue_task("x" * 10))
    assert actions[0] == CancelTask(TID)
    assert "too much text" in failure(actions)["error_message"]


def test_long_sentences_are_cut_at_the_configured_length() -> None:
    task = started(DashScopeCapabilities(sentence_max_chars=20))
    actions = task.receive_text(continue_task("word " * 10))
    assert all(len(s.text) <= 20 for s in sentences(actions))


# ---------------------------------------------------------------- ordering rules


def test_continue_before_run_task_fails_that_task_id() -> None:
    task = DashScopeTask()
    header = failure(task.receive_text(continue_task("hi")))
    assert header["task_id"] == TID
    assert "no task is running" in header["error_message"]


def test_finish_before_run_task_fails() -> None:
    assert (
        "no task is running"
        in failure(DashScopeTask().receive_text(finish_task()))["error_message"]
    )


def test_second_run_task_fails_only_the_new_task() -> None:
    task = started()
    actions = task.receive_text(run_task("intruder"))
    assert [type(a) for a in actions] == [SendEvent]
    header = failure(actions)
    assert header["task_id"] == "intruder"
    assert "still running" in header["error_message"]
    # The running task goes on untouched.
    assert task.state is TaskState.STARTED
    assert sentences(task.receive_text(continue_task("Still here. ")))[0].index == 0


def test_same_id_run_task_fails_the_running_task() -> None:
    task = started()
    actions = task.receive_text(run_task())
    assert actions[0] == CancelTask(TID)
    assert failure(actions)["task_id"] == TID
    assert task.state is TaskState.IDLE


def test_wrong_task_id_is_refused_without_touching_the_running_task() -> None:
    task = started()
    actions = task.receive_text(continue_task("hi", task_id="other"))
    assert [type(a) for a in actions] == [SendEvent]
    assert failure(actions)["task_id"] == "other"
    assert task.state is TaskState.STARTED


def test_bad_message_for_the_running_task_stops_it() -> None:
    task = started()
    task.receive_text(continue_task("Some text. "))
    message = json.loads(continue_task("x"))
    message["payload"]["input"]["text"] = 5
    actions = task.receive_text(json.dumps(message))
    assert actions[0] == CancelTask(TID)
    assert "payload.input.text: must be a string" in failure(actions)["error_message"]
    assert task.state is TaskState.IDLE
    assert isinstance(task.receive_text(run_task())[0], StartTask)


def test_unattributable_garbage_stops_the_running_task() -> None:
    task = started()
    actions = task.receive_text("not json")
    assert actions[0] == CancelTask(TID)
    assert failure(actions)["task_id"] == TID


def test_continue_after_finish_fails_the_task() -> None:
    task = started()
    task.receive_text(finish_task())
    actions = task.receive_text(continue_task("late"))
    assert actions[0] == CancelTask(TID)
    assert "after finish-task" in failure(actions)["error_message"]


def test_repeated_finish_is_a_no_op() -> None:
    task = started()
    task.receive_text(continue_task("One."))
    assert isinstance(task.receive_text(finish_task())[-1], FinishTask)
    assert task.receive_text(finish_task()) == []
    assert task.state is TaskState.FINISHING


@pytest.mark.parametrize("finishing", [False, True])
def test_cancel_stops_at_once_with_task_finished(finishing: bool) -> None:
    task = started()
    task.receive_text(continue_task("One. Two three"))
    if finishing:
        task.receive_text(finish_task())
    actions = task.receive_text(finish_task(directive="cancel"))
    assert actions[0] == CancelTask(TID)
    (event,) = events(actions)
    assert event["header"]["event"] == "task-finished"
    assert event["payload"]["usage"]["characters"] == len("One. Two three")
    assert task.state is TaskState.IDLE
    # Late reports from the cancelled worker change nothing.
    assert task.sentence_audio_done(0, 10, 10) == []
    assert task.finished() == []


def test_messages_in_flight_for_an_ended_task_are_dropped() -> None:
    task = started()
    task.receive_text(continue_task("One. "))
    task.fail(DashScopeErrorCode.INTERNAL_ERROR, "engine broke")
    # The client sent these before it saw task-failed: no second task-failed.
    assert task.receive_text(continue_task("more")) == []
    assert task.receive_text(finish_task()) == []
    # Cancelled tasks too, and even once another task runs.
    task.receive_text(run_task("second"))
    task.receive_text(finish_task("second", directive="cancel"))
    task.receive_text(run_task("third"))
    assert task.receive_text(continue_task("late", task_id="second")) == []
    # Other ids still get their task-failed.
    assert failure(task.receive_text(continue_task("x", task_id="nobody")))["task_id"] == "nobody"


def test_unknown_directive_is_refused() -> None:
    task = started()
    actions = task.receive_text(finish_task(directive="pause"))
    assert "directive must be 'cancel'" in failure(actions)["error_message"]


def test_fail_ends_the_running_task() -> None:
    task = started()
    task.receive_text(continue_task("One. "))
    actions = task.fail(DashScopeErrorCode.INTERNAL_ERROR, "engine broke")
    assert actions[0] == CancelTask(TID)
    header = failure(actions)
    assert (header["error_code"], header["error_message"]) == ("InternalError", "engine broke")
    assert task.state is TaskState.IDLE
    assert task.fail(DashScopeErrorCode.INTERNAL_ERROR, "again") == []


def test_text_in_run_task_input_is_spoken() -> None:
    message = json.loads(run_task())
    message["payload"]["input"] = {"text": "Early text. "}
    actions = DashScopeTask().receive_text(json.dumps(message))
    assert [s.text for s in sentences(actions)] == ["Early text."]


# ---------------------------------------------------------------- SSML


def test_ssml_document_with_breaks_becomes_sentences_and_silences() -> None:
    task = started(enable_ssml=True)
    doc = (
        '<speak><break time="200ms"/>One. <break time="1s"/>'
        '<s>Two <sub alias="World Wide Web">WWW</sub></s><break time="500ms"/></speak>'
    )
    actions = sentences(task.receive_text(continue_task(doc)))
    assert [(s.text, s.silence_before_ms, s.silence_after_ms) for s in actions] == [
        ("One.", 200, 0),
        ("Two World Wide Web", 1000, 500),
    ]
    task.receive_text(finish_task())
    (end,) = events(task.sentence_audio_done(0, 1200, 1000))  # 200 ms silence + 1 s speech
    sentence = end["payload"]["output"]["sentence"]
    assert (sentence["begin_time"], sentence["end_time"]) == (200, 1200)
    (end,) = events(task.sentence_audio_done(1, 2500, 1000))  # 1 s + 1 s + 0.5 s
    sentence = end["payload"]["output"]["sentence"]
    assert (sentence["begin_time"], sentence["end_time"]) == (2200, 3200)
    # Tags are not billed; the spoken alias is.
    expected = count_characters("One. Two World Wide Web")
    (finished,) = events(task.finished())
    assert finished["payload"]["usage"]["characters"] == expected


def test_ssml_silence_only_document() -> None:
    task = started(enable_ssml=True)
    (only,) = sentences(task.receive_text(continue_task('<speak><break time="2s"/></speak>')))
    assert (only.text, only.silence_before_ms) == ("", 2000)


def test_plain_text_with_ssml_enabled_is_plain_text() -> None:
    # The SDK's call() always sets enable_ssml, for plain text too.
    task = started(enable_ssml=True)
    actions = task.receive_text(continue_task("5 < 6 is true. "))
    assert [s.text for s in sentences(actions)] == ["5 < 6 is true."]


def test_ssml_flushes_plain_text_before_it() -> None:
    task = started(enable_ssml=True)
    task.receive_text(continue_task("no end"))
    actions = sentences(task.receive_text(continue_task("<speak>Doc.</speak>")))
    assert [s.text for s in actions] == ["no end", "Doc."]


def test_other_markup_is_read_literally_when_ssml_is_off() -> None:
    """Without enable_ssml, text that is not a <speak> document stays plain text."""
    task = started()
    actions = task.receive_text(continue_task("<b>Hi.</b>"))
    actions += task.receive_text(finish_task())
    assert [s.text for s in sentences(actions)] == ["<b>Hi.</b>"]


def test_a_speak_document_is_ssml_even_when_ssml_is_off() -> None:
    """Relays send <speak> documents as PlainText: the markup is parsed, never spoken."""
    task = started()
    actions = task.receive_text(continue_task('<speak>Hi.<break time="200ms"/></speak>'))
    actions += task.receive_text(finish_task())
    assert [s.text for s in sentences(actions)] == ["Hi."]


def test_text_type_ssml_turns_ssml_on() -> None:
    """text_type SSML is DashScope's other switch for SSML."""
    task = started(text_type="SSML")
    actions = task.receive_text(continue_task("<p>Hi.</p>"))
    assert "invalid SSML" in failure(actions)["error_message"]  # parsed, not read aloud


GO_ZERO_PARAMETERS = {
    "text_type": "",
    "voice": "",
    "format": "",
    "sample_rate": 0,
    "volume": 0,
    "rate": 0,
    "pitch": 0,
}


def test_parameters_on_continue_and_finish_task_are_ignored() -> None:
    """Go relays send empty `parameters` beside `input`; the task keeps its own."""
    task = started()
    go_continue = json.loads(continue_task("Hello there."))
    go_continue["payload"]["parameters"] = GO_ZERO_PARAMETERS
    go_finish = json.loads(finish_task())
    go_finish["payload"]["parameters"] = GO_ZERO_PARAMETERS
    actions = task.receive_text(json.dumps(go_continue))
    actions += task.receive_text(json.dumps(go_finish))
    assert [s.text for s in sentences(actions)] == ["Hello there."]
    assert task.params is not None
    assert task.params.volume == 50


def test_integer_rate_and_pitch_are_accepted() -> None:
    """rate and pitch may come as JSON integers (Go's float64 1 marshals as 1)."""
    task = started(rate=1, pitch=1)
    assert task.params is not None
    assert (task.params.rate, task.params.pitch) == (1.0, 1.0)


def test_text_type_other_than_plaintext_or_ssml_is_refused() -> None:
    """text_type is checked: DashScope knows PlainText and SSML only."""
    actions = DashScopeTask().receive_text(run_task(text_type="Markdown"))
    assert "parameters.text_type" in failure(actions)["error_message"]


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ("<speak><prosody rate='fast'>x</prosody></speak>", "unsupported SSML element <prosody>"),
        ("<speak>unclosed", "malformed SSML"),
        (
            '<!DOCTYPE l [<!ENTITY a "aaaa">]><speak>&a;</speak>',
            "must not contain a DOCTYPE",
        ),
    ],
)
def test_bad_ssml_fails_the_task_without_breaking_the_connection(doc: str, words: str) -> None:
    task = started(enable_ssml=True)
    actions = task.receive_text(continue_task(doc))
    assert actions[0] == CancelTask(TID)
    header = failure(actions)
    assert header["error_code"] == "InvalidParameter"
    assert words in header["error_message"]
    assert isinstance(task.receive_text(run_task())[0], StartTask)


# ---------------------------------------------------------------- volume


@pytest.mark.parametrize(("volume", "gain"), [(0, 0.0), (25, 0.5), (50, 1.0), (100, 2.0)])
def test_volume_curve(volume: int, gain: float) -> None:
    assert volume_to_gain(volume) == gain
    start = DashScopeTask().receive_text(run_task(volume=volume))[0]
    assert isinstance(start, StartTask)
    assert start.params.gain == gain


def test_empty_text_on_finish_task_is_accepted_and_other_text_refused() -> None:
    """Go relays send finish-task with `"input": {"text": ""}`; real text there is a mistake."""
    task = started()
    go_finish = json.loads(finish_task())
    go_finish["payload"]["input"] = {"text": "late words"}
    assert (
        "payload.input.text" in failure(task.receive_text(json.dumps(go_finish)))["error_message"]
    )
    task = started()
    go_finish["payload"]["input"] = {"text": ""}
    events_sent = [e["header"]["event"] for e in events(task.receive_text(json.dumps(go_finish)))]
    assert "task-failed" not in events_sent
