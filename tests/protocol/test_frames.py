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
