"""ConversationRelay frames: parsing what Twilio sends, serialising what we send."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from relay.errors import ProtocolError
from relay.protocol import frames as protocol


def raw(frame: Any) -> str:
    return orjson.dumps(frame).decode()


SETUP = {
    "type": "setup",
    "sessionId": "VX00000000000000000000000000000001",
    "accountSid": "AC00000000000000000000000000000000",
    "parentCallSid": "",
    "callSid": "CA00000000000000000000000000000001",
    "from": "+61412345678",
    "to": "+61390001234",
    "forwardedFrom": "",
    "callType": "PSTN",
    "callerName": "",
    "direction": "inbound",
    "callStatus": "RINGING",
    "customParameters": {"agent": "piano-removals", "resumed": "1"},
}


# -- valid frames -----------------------------------------------------------------------------


def test_setup_is_parsed_with_every_documented_field() -> None:
    frame = protocol.parse_inbound(raw(SETUP))

    assert isinstance(frame, protocol.Setup)
    assert frame.session_id == SETUP["sessionId"]
    assert frame.call_sid == SETUP["callSid"]
    assert frame.account_sid == SETUP["accountSid"]
    assert frame.from_ == "+61412345678"
    assert frame.to == "+61390001234"
    assert frame.call_type == "PSTN"
    assert frame.direction == "inbound"
    assert frame.call_status == "RINGING"
    assert frame.custom_parameters == {"agent": "piano-removals", "resumed": "1"}


def test_setup_ignores_fields_twilio_may_add() -> None:
    frame = protocol.parse_inbound(raw({**SETUP, "applicationSid": "AP1", "callControlId": "x"}))

    assert isinstance(frame, protocol.Setup)
    assert frame.call_sid == SETUP["callSid"]


def test_setup_needs_only_its_ids() -> None:
    frame = protocol.parse_inbound(raw({"type": "setup", "sessionId": "VX1", "callSid": "CA1"}))

    assert isinstance(frame, protocol.Setup)
    assert frame.custom_parameters == {}
    assert frame.from_ == ""


def test_prompt_keeps_the_transcript_exactly() -> None:
    frame = protocol.parse_inbound(
        raw(
            {
                "type": "prompt",
                "voicePrompt": "  a grand piano, please ",
                "lang": "en-AU",
                "last": True,
            }
        )
    )

    assert frame == protocol.Prompt(
        voice_prompt="  a grand piano, please ", lang="en-AU", last=True
    )


def test_partial_prompt_has_last_false() -> None:
    frame = protocol.parse_inbound(
        raw({"type": "prompt", "voicePrompt": "a gra", "lang": "en", "last": False})
    )

    assert isinstance(frame, protocol.Prompt)
    assert frame.last is False


@pytest.mark.parametrize("digit", ["0", "5", "9", "*", "#"])
def test_dtmf_digits(digit: str) -> None:
    assert protocol.parse_inbound(raw({"type": "dtmf", "digit": digit})) == protocol.Dtmf(
        digit=digit
    )


@pytest.mark.parametrize(
    ("duration", "expected"), [(1200, 1200.0), ("1200", 1200.0), (812.5, 812.5)]
)
def test_interrupt_duration_is_parsed_leniently(duration: Any, expected: float) -> None:
    frame = protocol.parse_inbound(
        raw(
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": "Sentence 2 of",
                "durationUntilInterruptMs": duration,
            }
        )
    )

    assert isinstance(frame, protocol.Interrupt)
    assert frame.utterance_until_interrupt == "Sentence 2 of"
    assert frame.duration_until_interrupt_ms == expected


def test_interrupt_with_nothing_heard() -> None:
    frame = protocol.parse_inbound(raw({"type": "interrupt", "utteranceUntilInterrupt": ""}))

    assert frame == protocol.Interrupt(
        utterance_until_interrupt="", duration_until_interrupt_ms=0.0
    )


def test_error_frame() -> None:
    description = 'Invalid message received, code: 64107, {"type":"text"}'
    frame = protocol.parse_inbound(raw({"type": "error", "description": description}))

    assert frame == protocol.Error(description=description)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("on", "on"), ("Hi, this is Kerry,", "Hi, this is Kerry,"), (148, "148"), (True, "true")],
)
def test_info_values_become_strings(value: Any, expected: str) -> None:
    frame = protocol.parse_inbound(
        raw({"type": "info", "name": "agentSpeaking", "value": value, "ts": 1752091234567})
    )

    assert isinstance(frame, protocol.Info)
    assert frame.value == expected
    assert frame.ts == 1752091234567


def test_info_timestamps_may_be_fractional() -> None:
    frame = protocol.parse_inbound(
        raw({"type": "info", "name": "agentSpeaking", "value": "off", "ts": 1752091234567.5})
    )

    assert frame == protocol.Info(name="agentSpeaking", value="off", ts=1752091234567.5)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            {"type": "prompt", "voicePrompt": "hi", "lang": None, "last": True},
            protocol.Prompt(voice_prompt="hi", lang="", last=True),
        ),
        (
            {"type": "prompt", "voicePrompt": "hi", "lang": "en-AU", "last": None},
            protocol.Prompt(voice_prompt="hi", lang="en-AU", last=True),
        ),
        # A null transcript is an empty one (an empty final prompt is noted and not answered).
        ({"type": "prompt", "voicePrompt": None, "last": True}, protocol.Prompt(voice_prompt="")),
        (
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": None,
                "durationUntilInterruptMs": None,
            },
            protocol.Interrupt(utterance_until_interrupt="", duration_until_interrupt_ms=0.0),
        ),
        (
            {"type": "info", "name": "agentSpeaking", "value": None, "ts": None},
            protocol.Info(name="agentSpeaking", value="", ts=None),
        ),
        ({"type": "error", "description": None}, protocol.Error(description="")),
        (
            {**SETUP, "callerName": None, "forwardedFrom": None, "customParameters": None},
            protocol.Setup(
                **{**SETUP, "callerName": "", "forwardedFrom": "", "customParameters": {}}
            ),
        ),
    ],
)
def test_a_null_optional_field_means_its_default(frame: dict[str, Any], expected: Any) -> None:
    assert protocol.parse_inbound(raw(frame)) == expected


def test_bytes_are_accepted() -> None:
    frame = protocol.parse_inbound(raw({"type": "dtmf", "digit": "1"}).encode())

    assert frame == protocol.Dtmf(digit="1")


def test_unknown_type_is_returned_not_raised() -> None:
    frame = protocol.parse_inbound(raw({"type": "turnState", "state": "listening"}))

    assert isinstance(frame, protocol.Unknown)
    assert frame.type == "turnState"
    assert frame.raw == {"type": "turnState", "state": "listening"}


# -- malformed frames -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json at all", "not JSON"),
        ("", "not JSON"),
        ('{"type": "prompt", "voicePrompt": "hi"', "not JSON"),
        ("[1, 2, 3]", "not a JSON object"),
        ('"prompt"', "not a JSON object"),
        ("null", "not a JSON object"),
        ("{}", "no string 'type'"),
        ('{"type": 7}', "no string 'type'"),
        ('{"type": null, "voicePrompt": "hi"}', "no string 'type'"),
    ],
)
def test_malformed_frames_raise_protocol_error(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as caught:
        protocol.parse_inbound(text)

    assert caught.value.raw == text


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "prompt"}, "voicePrompt"),
        ({"type": "prompt", "voicePrompt": 42}, "voicePrompt"),
        ({"type": "prompt", "voicePrompt": ["hi"]}, "voicePrompt"),
        ({"type": "prompt", "voicePrompt": "hi", "last": "maybe"}, "last"),
        ({"type": "dtmf"}, "digit"),
        ({"type": "dtmf", "digit": "12"}, "digit"),
        ({"type": "dtmf", "digit": "x"}, "digit"),
        ({"type": "dtmf", "digit": 5}, "digit"),
        ({"type": "interrupt", "durationUntilInterruptMs": "soon"}, "durationUntilInterruptMs"),
        ({"type": "setup", "sessionId": "VX1"}, "callSid"),
        (
            {"type": "setup", "sessionId": "VX1", "callSid": "CA1", "customParameters": {"n": 1}},
            "customParameters",
        ),
        (
            {"type": "setup", "sessionId": "VX1", "callSid": "CA1", "customParameters": "agent=x"},
            "customParameters",
        ),
        ({"type": "info", "name": "agentSpeaking", "value": "on", "ts": "yesterday"}, "ts"),
        ({"type": "info", "name": "agentSpeaking", "value": "on", "ts": [1]}, "ts"),
        # null stands for a missing value: what is required stays required
        ({"type": "setup", "sessionId": "VX1", "callSid": None}, "callSid"),
        ({"type": "dtmf", "digit": None}, "digit"),
        ({"type": "prompt", "voicePrompt": {"text": "hi"}}, "voicePrompt"),
    ],
)
def test_known_types_with_wrong_fields_raise_protocol_error(
    frame: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProtocolError, match=f"invalid {frame['type']} frame") as caught:
        protocol.parse_inbound(raw(frame))

    assert field in str(caught.value)


def test_a_huge_frame_is_refused_before_parsing() -> None:
    text = raw({"type": "prompt", "voicePrompt": "la " * protocol.MAX_FRAME_BYTES, "last": True})

    with pytest.raises(ProtocolError, match="exceeds") as caught:
        protocol.parse_inbound(text)

    assert caught.value.raw is not None
    assert len(caught.value.raw) <= 200  # the error keeps a sample, not the whole frame


def test_a_frame_just_under_the_limit_is_parsed() -> None:
    head = raw({"type": "prompt", "voicePrompt": "", "last": True})
    text = head.replace('""', '"' + "a" * (protocol.MAX_FRAME_BYTES - len(head)) + '"', 1)
    assert len(text) == protocol.MAX_FRAME_BYTES

    frame = protocol.parse_inbound(text)

    assert isinstance(frame, protocol.Prompt)


# -- outbound frames --------------------------------------------------------------------------


def test_text_token_is_never_trimmed() -> None:
    assert orjson.loads(protocol.Text(token=" there,").to_json()) == {
        "type": "text",
        "token": " there,",
        "last": False,
    }


def test_final_empty_text() -> None:
    assert (
        protocol.outbound(protocol.Text(token="", last=True))
        == '{"type":"text","token":"","last":true}'
    )


def test_text_options_use_twilio_names_and_unset_ones_are_left_out() -> None:
    frame = protocol.Text(token="One moment.", lang="es-ES", preemptible=True)

    assert orjson.loads(frame.to_json()) == {
        "type": "text", "token": "One moment.", "last": False, "lang": "es-ES", "preemptible": True,
    }  # fmt: skip


def test_text_token_must_not_be_null() -> None:
    with pytest.raises(ValidationError):
        protocol.Text(token=None)  # type: ignore[arg-type]


def test_outbound_frames_forbid_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        protocol.Text(token="hi", volume=11)  # type: ignore[call-arg]


def test_play() -> None:
    frame = protocol.Play(source="https://api.twilio.com/cowbell.mp3", loop=2)

    assert orjson.loads(frame.to_json()) == {
        "type": "play",
        "source": "https://api.twilio.com/cowbell.mp3",
        "loop": 2,
    }
    with pytest.raises(ValidationError):
        protocol.Play(source="file:///etc/passwd")
    with pytest.raises(ValidationError):
        protocol.Play(source="https://x.test/a.mp3", loop=1001)


def test_send_digits() -> None:
    assert orjson.loads(protocol.SendDigits(digits="9www123#").to_json()) == {
        "type": "sendDigits",
        "digits": "9www123#",
    }
    for bad in ("", "12a", "1 2"):
        with pytest.raises(ValidationError):
            protocol.SendDigits(digits=bad)


def test_language_needs_at_least_one_language() -> None:
    frame = protocol.Language(tts_language="es-ES", transcription_language="es-ES")

    assert orjson.loads(frame.to_json()) == {
        "type": "language",
        "ttsLanguage": "es-ES",
        "transcriptionLanguage": "es-ES",
    }
    assert orjson.loads(protocol.Language(tts_language="it-IT").to_json()) == {
        "type": "language",
        "ttsLanguage": "it-IT",
    }
    with pytest.raises(ValidationError):
        protocol.Language()


def test_end_carries_handoff_data_as_a_string() -> None:
    data = raw({"reasonCode": "live-agent-handoff", "reason": "caller asked for a person"})

    sent = orjson.loads(protocol.End(handoff_data=data).to_json())

    assert sent == {"type": "end", "handoffData": data}
    assert orjson.loads(sent["handoffData"])["reasonCode"] == "live-agent-handoff"
    assert orjson.loads(protocol.End().to_json()) == {"type": "end"}


# -- late 2026: configUpdated (inbound) and config / hints / extended language (outbound) -------


@pytest.mark.parametrize(
    ("frame", "via", "details"),
    [
        (
            {"type": "configUpdated", "ttsProvider": "Google", "voice": "en-AU-Neural2-A"},
            "frame",
            {"ttsProvider": "Google", "voice": "en-AU-Neural2-A"},
        ),
        (
            {"type": "info", "name": "configUpdated", "value": {"transcriptionProvider": "Google"}},
            "info",
            {"transcriptionProvider": "Google"},
        ),
        (
            {
                "type": "info",
                "name": "configUpdated",
                "value": '{"tts": {"provider": "Amazon"}}',
                "ts": 1,
            },
            "info",
            {"provider": "Amazon"},
        ),
        (
            {"type": "info", "name": "configUpdated", "value": "failover"},
            "info",
            {"value": "failover"},
        ),
        ({"type": "configUpdated", "config": [1, 2]}, "frame", {}),
    ],
)
def test_config_updated_is_accepted_in_both_readings(
    frame: dict[str, Any], via: str, details: dict[str, str]
) -> None:
    parsed = protocol.parse_inbound(raw(frame))

    assert isinstance(parsed, protocol.ConfigUpdated)
    assert parsed.type == "configUpdated"
    assert (parsed.via, parsed.details, parsed.payload) == (via, details, frame)


def test_other_info_frames_stay_info() -> None:
    assert protocol.parse_inbound(raw({"type": "info", "name": "tokensPlayed", "value": "Hi"})) == (
        protocol.Info(name="tokensPlayed", value="Hi")
    )


def test_config_frame_uses_twilio_attribute_names_and_sends_only_what_changes() -> None:
    assert orjson.loads(protocol.config_frame(dtmf_detection=True).to_json()) == {
        "type": "config",
        "dtmfDetection": True,
    }
    frame = protocol.config_frame(
        interruptible="none", report_input_during_agent_speech="speech", speech_timeout="auto",
        eot_threshold=0.7, ignore_backchannel=True, echo_prompt_filtering=True,
        interrupt_sensitivity="low", language="es-ES", voice="v", tts_text_normalization="on",
    )  # fmt: skip
    assert orjson.loads(frame.to_json()) == {
        "type": "config", "interruptible": "none", "reportInputDuringAgentSpeech": "speech",
        "speechTimeout": "auto", "eotThreshold": 0.7, "ignoreBackchannel": True,
        "echoPromptFiltering": True, "interruptSensitivity": "low", "language": "es-ES",
        "voice": "v", "ttsTextNormalization": "on",
    }  # fmt: skip
    assert protocol.is_mid_call(frame)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"language": "es-ES"},
        {"interruptible": "sometimes"},
        {"eot_threshold": 1.5},
        {"speech_timeout": -1},
        {"interrupt_sensitivity": "max"},
    ],
)
def test_invalid_config_frames_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        protocol.config_frame(**settings)
    with pytest.raises(ValidationError):
        protocol.Config.model_validate({"type": "config", "dtmfDetection": True, "bogus": 1})


def test_hints_frame() -> None:
    frame = protocol.hints_frame(["Brunswick", " Mornington  Peninsula ", "", "Brunswick"])

    assert orjson.loads(frame.to_json()) == {
        "type": "hints",
        "hints": "Brunswick,Mornington Peninsula",
    }
    assert orjson.loads(protocol.hints_frame(["Geelong"], language="en-AU").to_json()) == {
        "type": "hints",
        "hints": "Geelong",
        "language": "en-AU",
    }
    assert protocol.is_mid_call(frame)
    with pytest.raises(ValueError, match="comma"):
        protocol.hints_frame(["Brunswick, VIC"])
    with pytest.raises(ValidationError):
        protocol.hints_frame([" "])


def test_the_extended_language_frame_declares_and_switches() -> None:
    plain = protocol.language_frame(tts_language="it-IT", transcription_language="it-IT")
    assert not plain.declares and not protocol.is_mid_call(plain)
    assert orjson.loads(plain.to_json()) == {
        "type": "language",
        "ttsLanguage": "it-IT",
        "transcriptionLanguage": "it-IT",
    }

    frame = protocol.language_frame(
        tts_language="fr-FR", transcription_language="fr-FR", voice="v", tts_provider="ElevenLabs",
        transcription_provider="Deepgram", speech_model="nova-3-general",
    )  # fmt: skip
    assert frame.declares and protocol.is_mid_call(frame)
    assert orjson.loads(frame.to_json()) == {
        "type": "language", "ttsLanguage": "fr-FR", "transcriptionLanguage": "fr-FR",
        "voice": "v", "ttsProvider": "ElevenLabs", "transcriptionProvider": "Deepgram",
        "speechModel": "nova-3-general",
    }  # fmt: skip
    with pytest.raises(ValidationError, match="ttsLanguage"):
        protocol.language_frame(transcription_language="fr-FR", voice="v")
    with pytest.raises(ValidationError, match="transcriptionLanguage"):
        protocol.language_frame(tts_language="fr-FR", speech_model="nova-3-general")


@pytest.mark.parametrize(
    ("description", "kind"),
    [
        ('Invalid message received, code: 64107, {"type":"config","dtmfDetection":true}', "config"),
        ('Invalid message received, code: 64107, {"type":"hints","hints":"a"', "hints"),
        ("Invalid message received, code: 64107", ""),
        ("Something else, code: 64101", None),
    ],
)
def test_rejected_frame_type(description: str, kind: str | None) -> None:
    assert protocol.rejected_frame_type(protocol.Error(description=description)) == kind


def test_record_of_keeps_the_size_and_at_most_the_cap() -> None:
    assert protocol.record_of('{"type":"dtmf","digit":"1"}') == {
        "raw": '{"type":"dtmf","digit":"1"}',
        "size": 27,
    }
    big = "é" * 10_000
    record = protocol.record_of(big)
    assert record == {"raw": "é" * protocol.RECORD_CAP, "size": 20_000, "truncated": True}
    binary = protocol.record_of(b"\xff\xfeab")
    assert binary == {"raw": "\ufffd\ufffdab", "size": 4, "binary": True}
    assert protocol.record_of("\ud800x")["raw"] == "?x"  # no lone surrogate reaches storage
