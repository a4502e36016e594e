"""The outcome rules, token usage and cost arithmetic, the ``[analysis]`` profile section and the
webhook signature, on plain data."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.agents import AgentProfile, AnalysisSection, load_profile
from relay.errors import ConfigError
from relay.services import costs, webhooks
from relay.services.analysis import checked, schema
from relay.services.outcomes import derive

REPO = Path(__file__).resolve().parents[2]


def prompt(text: str) -> dict[str, Any]:
    raw = orjson.dumps({"type": "prompt", "voicePrompt": text, "last": True}).decode()
    return {"kind": "frame_in", "data": {"raw": raw}}


def answered(*pieces: str) -> dict[str, Any]:
    return {"kind": "llm_response", "data": {"pieces": list(pieces), "tool_calls": [],
                                             "complete": True}}  # fmt: skip


def result(name: str, data: dict[str, Any] | None) -> dict[str, Any]:
    return {"kind": "tool_result", "data": {"name": name, "data": data, "content": "..."}}


CALL = {"outcome": "hung-up", "status": "completed"}


def test_an_answered_call_with_nothing_done_is_answered_only() -> None:
    assert derive(CALL, [prompt("Do you go to Geelong?"), answered("Yes.")]) == ["answered-only"]


@pytest.mark.parametrize(
    ("call", "events"),
    [
        pytest.param(CALL, [], id="hung-up-before-speaking"),
        pytest.param({"outcome": "caller-silent"}, [prompt("hello"), answered("Hi")], id="silent"),
        pytest.param(CALL, [prompt("hello")], id="hung-up-before-an-answer"),
    ],
)
def test_abandoned(call: dict[str, Any], events: list[dict[str, Any]]) -> None:
    assert derive(call, events) == ["abandoned"]


def test_tool_results_give_outcomes_only_when_they_succeeded() -> None:
    events = [
        prompt("quote and book please"),
        answered("Sure."),
        result("quote_piano_move", {"quote_id": "Q1", "total": "$350"}),
        result("book_move", {"error": "not confirmed"}),  # a read-back, not a booking
        result("send_quote_sms", {"error": "send outcome unknown", "unknown": True}),
        result("send_quote_email", {"email": "a@b.co", "quote_id": "Q1"}),
        result("take_message", {"ticket_id": 3}),
        {"kind": "llm_error", "data": {"error": "boom"}},
    ]
    assert derive(CALL, events) == ["quoted", "message-taken", "e-mail-sent", "llm-failure"]


def test_a_crane_quote_is_not_quoted_and_the_ledger_has_the_last_word() -> None:
    events = [
        prompt("crane job"),
        answered("No phone price."),
        result("quote_piano_move", {"quote_id": "Q2", "needs_inspection": True}),
        result("book_appointment", {"booking_ref": "123456"}),
    ]
    ledger = [{"tool": "book_appointment", "status": "failed"}]
    assert derive(CALL, events, ledger) == ["answered-only"]
    ledger = [{"tool": "book_appointment", "status": "done"}]
    assert derive(CALL, events, ledger) == ["booked"]


def test_transferred_from_the_ending_or_the_end_frame() -> None:
    assert derive({"outcome": "transferred"}, [prompt("a person please")]) == ["transferred"]
    end = orjson.dumps(
        {"type": "end", "handoffData": '{"reasonCode":"live-agent-handoff"}'}
    ).decode()
    events = [prompt("a person"), {"kind": "frame_out", "data": {"raw": end}}]
    assert derive({"outcome": "server-shutdown"}, events) == ["transferred"]


def test_usage_from_the_stream_and_estimated_without_it() -> None:
    request = {"kind": "llm_request", "data": {"body": {"model": "gpt-4o-mini-2024-07-18",
               "messages": [{"role": "user", "content": "x" * 400}]}}}  # fmt: skip
    with_usage = {"kind": "llm_response", "data": {"pieces": ["Hi"], "usage": {
        "prompt_tokens": 1000, "completion_tokens": 50,
        "prompt_tokens_details": {"cached_tokens": 800}, "estimated": False}}}  # fmt: skip
    without = {"kind": "llm_response", "data": {"pieces": ["a" * 40]}}
    usage = costs.usage_of([request, with_usage, request, without])
    model = usage["models"]["gpt-4o-mini-2024-07-18"]
    assert model == {"requests": 2, "prompt_tokens": 1000 + 108, "cached_tokens": 800,
                     "completion_tokens": 60, "estimated_requests": 1}  # fmt: skip
    assert usage["estimated"] is True

    prices = costs.load_prices(REPO / "data" / "prices.toml")
    cost = costs.cost_of(prices, usage, minutes=3, sms_bodies=["short", "ć" * 71])
    # gpt-4o-mini: 308 fresh x 0.15 + 800 cached x 0.075 + 60 x 0.60, per million
    assert cost["llm"] == pytest.approx((308 * 0.15 + 800 * 0.075 + 60 * 0.60) / 1e6, abs=1e-8)
    assert cost["minutes"] == 3 and cost["conversation_relay"] == pytest.approx(0.21)
    assert cost["sms_segments"] == 3  # 1 + a 71-character UCS-2 text in 2 segments
    assert cost["total"] == pytest.approx(cost["llm"] + 0.21 + 3 * 0.0515, abs=1e-6)
    assert cost["unpriced_models"] == []
    assert costs.cost_of(prices, {"models": {"llama-3": model}})["unpriced_models"] == ["llama-3"]


def test_a_request_never_answered_is_not_counted_one_cut_off_is_estimated() -> None:
    """A request the server failed outright (an HTTP 500 on every attempt: not complete, no
    words, no call) was never billed: no tokens, no request. One relay stopped after the first
    words was (the prompt was read and tokens streamed): estimated, as one without usage."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 400}]}
    request = {"kind": "llm_request", "data": {"body": body}}
    failed = {"kind": "llm_response", "data": {"pieces": [], "tool_calls": [],
              "finish_reason": None, "attempts": None, "complete": False,
              "model": "gpt-4o-mini", "usage": None}}  # fmt: skip
    cut_off = {"kind": "llm_response", "data": {"pieces": ["a" * 40], "tool_calls": [],
               "finish_reason": None, "attempts": None, "complete": False,
               "model": "gpt-4o-mini", "usage": None, "stop": "price"}}  # fmt: skip

    nothing = costs.usage_of([request, failed])
    assert nothing == {"models": {}, "requests": 0, "prompt_tokens": 0, "cached_tokens": 0,
                       "completion_tokens": 0, "estimated": False}  # fmt: skip
    prices = costs.load_prices(REPO / "data" / "prices.toml")
    assert costs.cost_of(prices, nothing)["llm"] == 0

    usage = costs.usage_of([request, failed, request, cut_off])
    assert usage["models"] == {"gpt-4o-mini": {"requests": 1, "prompt_tokens": 108,
        "cached_tokens": 0, "completion_tokens": 10, "estimated_requests": 1}}  # fmt: skip
    assert usage["estimated"] is True


def test_sms_segments_count_gsm_7_septets_and_ucs_2_code_units() -> None:
    # é and ü are in GSM-7's basic set: 160 characters, one segment (not three of UCS-2).
    text = (
        "Hi José Müller, your Keystone quote Q482913: $544 including GST for the upright piano, "
        "Brunswick to Geelong. Questions? Call us on 03 9000 1234."
    )
    assert len(text) == 144 and costs.sms_segments(text + "ñ" * 16) == 1
    assert costs.sms_segments(text + "ñ" * 17) == 2
    basic = "ΔΦΓΛΩΠΨΣΘΞ£¥§¿¡ÄÖÑÜäöñüàèéùìòÇØøÅåÆæßÉ@_"  # 40 characters of the basic set
    assert costs.sms_segments(basic * 4) == 1 and costs.sms_segments(basic * 4 + "a") == 2
    # The extension table (^ { } \ [ ~ ] | € and form feed) takes two septets a character.
    assert [costs.sms_segments(c * 80) for c in "^{}\\[~]|€\f"] == [1] * 10  # 160 septets
    assert [costs.sms_segments(c * 81) for c in "{€"] == [2, 2]
    assert costs.sms_segments("{" * 160) == 3  # 320 septets: 153 + 153 + 14
    # An escape pair is never split across segments: 306 septets, but the "{" after 152 plain
    # ones starts the second segment, and the last "a" takes a third.
    assert costs.sms_segments("a" * 152 + "{" + "a" * 152) == 3
    assert costs.sms_segments("a" * 151 + "{" + "a" * 152) == 2
    # Anything else is UCS-2, counted in UTF-16 code units: an emoji is two.
    assert [costs.sms_segments("ć" * n) for n in (70, 71, 134, 135)] == [1, 2, 2, 3]
    assert costs.sms_segments("🎹" * 35) == 1 and costs.sms_segments("🎹" * 36) == 2
    # ... and a surrogate pair is never split: 134 units, but the emoji after 66 starts the
    # second segment.
    assert costs.sms_segments("ć" * 66 + "🎹" + "ć" * 66) == 3
    assert costs.sms_segments("ć" * 65 + "🎹" + "ć" * 66) == 2


def test_a_price_table_named_by_a_setting_must_exist_and_none_means_unknown_costs(
    tmp_path: Path,
) -> None:
    typo = tmp_path / "typo.toml"
    with pytest.raises(ConfigError) as raised:
        costs.load_prices(typo, setting="RELAY_PRICES")
    assert str(raised.value) == f"RELAY_PRICES={typo}: no such price table"

    # The default place, empty: no price table. Nothing is free, everything is unknown.
    missing = costs.load_prices(tmp_path / "prices.toml")
    assert missing.found is False
    usage = {"models": {"gpt-4o-mini": {"prompt_tokens": 1000, "completion_tokens": 50}}}
    cost = costs.cost_of(missing, usage, minutes=2, sms_bodies=["short"])
    assert cost["unpriced_models"] == ["gpt-4o-mini"] and cost["no_price_table"] is True
    assert (cost["minutes"], cost["sms_segments"]) == (2, 1)

    shipped = costs.load_prices(REPO / "data" / "prices.toml", setting="RELAY_PRICES")
    assert shipped.found is True and "no_price_table" not in costs.cost_of(shipped, usage)


def test_sms_segments_and_session_minutes() -> None:
    assert [costs.sms_segments("a" * n) for n in (1, 160, 161, 306, 307)] == [1, 1, 2, 2, 3]
    sessions = [
        {"started_at": "2026-01-01T10:00:00+00:00", "ended_at": "2026-01-01T10:00:05+00:00"},
        {"started_at": "2026-01-01T10:01:00+00:00", "ended_at": "2026-01-01T10:03:01+00:00"},
        {"started_at": "2026-01-01T10:05:00+00:00", "ended_at": None},
    ]
    assert costs.session_minutes(sessions) == 1 + 3


def test_a_broken_price_table_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[models."x"]\nprompt = "cheap"\n')
    with pytest.raises(ConfigError, match=r"prices\.toml"):
        costs.load_prices(path)
    assert costs.load_prices(tmp_path / "absent.toml").models == {}


def test_costs_per_outcome_and_per_booking() -> None:
    rows = [
        {"agent": "a", "outcomes": ["quoted", "booked"], "cost": {"total": 0.3, "currency": "USD"}},
        {"agent": "a", "outcomes": ["quoted"], "cost": {"total": 0.1, "currency": "USD"}},
        {"agent": "b", "outcomes": ["abandoned"], "cost": {"total": 0.2, "currency": "USD"}},
    ]
    report = costs.summarise(rows)
    assert report["calls"] == 3 and report["total"] == pytest.approx(0.6)
    assert report["per_booking"] == pytest.approx(0.6) and report["bookings"] == 1
    assert report["per_outcome"]["quoted"] == {"calls": 2, "per_call": pytest.approx(0.2)}
    assert report["agents"]["a"]["cost"] == pytest.approx(0.4)


def test_the_analysis_section_defaults_and_agent_fields(tmp_path: Path) -> None:
    shipped = load_profile(REPO / "prompts" / "piano-removals.toml")
    assert [f.name for f in shipped.analysis.all_fields()] == ["summary", "reason", "sentiment"]
    text = (REPO / "prompts" / "piano-removals.toml").read_text(encoding="utf-8")
    text += (
        '\n[analysis]\ninstructions = "Be brief."\n'
        '[[analysis.fields]]\nname = "reason"\ntype = "enum"\nvalues = ["quote", "booking", "other"]\n'
        '[[analysis.fields]]\nname = "piano_count"\ntype = "number"\n'
        '[[analysis.fields]]\nname = "needs_crane"\ntype = "boolean"\n'
    )
    path = tmp_path / "piano-removals.toml"
    path.write_text(text, encoding="utf-8")
    fields = load_profile(path).analysis.all_fields()
    assert [(f.name, f.type) for f in fields] == [
        ("summary", "text"), ("reason", "enum"), ("sentiment", "enum"),
        ("piano_count", "number"), ("needs_crane", "boolean"),
    ]  # fmt: skip
    parameters = schema(fields)
    assert parameters["required"] == [f.name for f in fields]
    assert parameters["properties"]["reason"] == {
        "type": "string",
        "enum": ["quote", "booking", "other"],
    }
    assert checked(fields, {"summary": "s", "reason": "nope", "sentiment": "neutral",
                            "piano_count": True, "needs_crane": False}) == {
        "summary": "s", "reason": None, "sentiment": "neutral", "piano_count": None,
        "needs_crane": False,
    }  # fmt: skip
    path.write_text(text + '[[analysis.fields]]\nname = "kind"\ntype = "enum"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="enum without values"):
        load_profile(path)
    with pytest.raises(ValueError):
        AgentProfile.model_validate({**shipped.model_dump(), "webhook_url": "ftp://x"})
    assert AnalysisSection().fields == []


def test_the_webhook_signature_is_hmac_sha256_of_t_dot_body() -> None:
    body = b'{"call_sid":"CA1"}'
    header = webhooks.signature("s3cret", body, timestamp=1_700_000_000)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert webhooks.verify("s3cret", header, body, now=1_700_000_100)
    assert not webhooks.verify("s3cret", header, body, now=1_700_000_000 + 301)  # too old
    assert not webhooks.verify("s3cret", "t=x,v1=y", body)


def test_an_llm_failure_ending_with_a_message_left_or_a_person() -> None:
    left = {"kind": "message_left", "data": {"text": "Call me back about my grand."}}
    assert derive({"outcome": "llm-failure"}, [prompt("hello"), left]) == [
        "message-taken", "llm-failure",
    ]  # fmt: skip
    end = orjson.dumps(
        {"type": "end", "handoffData": '{"reasonCode":"live-agent-handoff","reason":"llm-failure"}'}
    ).decode()
    events = [prompt("hello"), {"kind": "llm_failure", "data": {"kind": "timeout"}},
              {"kind": "frame_out", "data": {"raw": end}}]  # fmt: skip
    assert derive({"outcome": "llm-failure"}, events) == ["transferred", "llm-failure"]
