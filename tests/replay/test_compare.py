"""What counts as a change: the masker and the comparison of LLM requests."""

from __future__ import annotations

from typing import Any

import orjson

from relay.llm.types import ChatRequest
from relay.replay.compare import (
    Item,
    Masker,
    compare_requests,
    compare_transcripts,
    current_layout,
)


def test_the_time_line_is_not_a_divergence() -> None:
    def body(when: str, text: str = "Hello") -> dict[str, Any]:
        system = f"You are Kerry.\n\nCurrent date and time: {when}. Caller ID: +61412345678."
        request = ChatRequest(
            model="m",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
        )
        return request.body()

    mask = Masker()
    assert (
        compare_requests(
            body("Wednesday 11 March 2026, 09:30 AM AEDT"),
            body("Friday 13 March 2026, 04:12 PM AEDT"),
            mask,
        )
        is None
    )
    summary, diff = compare_requests(body("x"), body("x", "Goodbye"), mask) or ("", "")
    assert summary == "messages differ (1 line)"
    assert "-[1] user: Hello" in diff and "+[1] user: Goodbye" in diff


def test_random_references_are_ignored_and_other_numbers_are_not() -> None:
    mask = Masker()
    said = "Quote Q482913, booking 482913 (4 8 2 9 1 3), $1,250 for 12500 cents, 12:30."
    assert mask(said) == (
        "Quote <ignored>, booking <ignored> (<ignored>), $1,250 for 12500 cents, 12:30."
    )
    assert Masker(references=False)(said) == said
    assert Masker([r"\bX\d+"])("X12 Q482913") == "<ignored> <ignored>"


def test_a_redacted_recordings_masks_are_stripped_to_compare_but_printed_whole() -> None:
    def body(system: str, text: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        return ChatRequest(model="m", messages=messages).body()

    system = 'Caller ID: +61*******78. Known caller: {"name":"[name]","id":7}'
    mask = Masker(redacted=True)
    # The agent says a mask again without its marks: no change.
    assert compare_requests(body(system, "I'm [name]."), body(system, "I'm name."), mask) is None
    _, diff = compare_requests(body(system, "Hi"), body(system, "Bye"), mask) or ("", "")
    assert diff.splitlines() == [
        "--- recorded",
        "+++ now",
        "@@ -1,2 +1,2 @@",
        ' [0] system: Caller ID: +61*******78. Known caller: {"name":"[name]","id":7}',
        "-[1] user: Hi",
        "+[1] user: Bye",
    ]


def test_a_request_recorded_with_the_facts_at_the_end_of_the_prompt_is_no_change() -> None:
    """Until 7 December the call's facts ended the agent's system prompt; now they follow it in
    a message of their own. A recording made before replays without a change; a change of
    the facts themselves is still one."""

    def body(*system: str) -> dict[str, Any]:
        messages = [*({"role": "system", "content": s} for s in system),
                    {"role": "user", "content": "Hi"},
                    {"role": "system", "content": "Current date and time: now."}]  # fmt: skip
        return ChatRequest(model="m", messages=messages).body()

    prompt = "You are Kerry.\n\nBe brief."
    facts = 'Caller ID: +61412345678. Known caller: {"name":"Sarah","id":7}'
    then, now = body(f"{prompt}\n\n{facts}"), body(prompt, facts)
    assert current_layout(then["messages"]) == now["messages"]
    assert compare_requests(then, now, Masker()) is None
    assert compare_requests(now, now, Masker()) is None
    outbound = "Number called (an outbound call): +61411000222."
    assert (
        compare_requests(body(f"{prompt}\n\n{outbound}"), body(prompt, outbound), Masker()) is None
    )
    # A prompt whose last paragraph is not the facts is left as it is.
    assert current_layout(body(prompt)["messages"]) == body(prompt)["messages"]
    summary, diff = compare_requests(then, body(prompt, "Caller ID: +61412345678."), Masker()) or (
        "", "")  # fmt: skip
    assert summary == "messages differ (1 line)"
    assert '-[1] system: Caller ID: +61412345678. Known caller: {"name":"Sarah","id":7}' in diff
    assert "+[1] system: Caller ID: +61412345678." in diff.splitlines()


def _switch(code: str = "es-ES") -> Item:
    arguments = orjson.dumps({"language": code}).decode()
    content = f"Switched to Spanish ({code})."
    return Item(
        "tool",
        f"switch_language({arguments})",
        ("tool", "switch_language", arguments, content),
        True,
    )


def _language(code: str = "es-ES") -> Item:
    return Item("language", f"switches to {code}", ("language", code))


def _changes(recorded: list[Item], now: list[Item]) -> list[tuple[Item | None, Item | None]]:
    caller = Item("caller", "Spanish please")
    return compare_transcripts([caller, *recorded], [caller, *now], server_side=True)[1]


def test_a_language_switch_recorded_after_the_next_tool_call_is_no_change() -> None:
    failed = Item("error", "LLM failed: empty", ("error",), True)
    recorded = [_switch(), _language(), _switch(), _language(), _switch(), failed, _language()]
    now = [_switch(), _switch(), _language(), _switch(), _language(), failed, _language()]
    assert _changes(recorded, now) == []


def test_a_language_switch_that_went_missing_or_changed_is_still_a_change() -> None:
    recorded = [_switch(), _language(), _switch(), _language()]
    assert len(_changes(recorded, [_switch(), _switch(), _language()])) == 1
    assert len(_changes(recorded, [_switch(), _switch(), _language(), _language("fr-FR")])) == 1
    said = Item("agent", "Claro.", ("agent", "Claro."))
    # Past what the agent said, the order still counts.
    assert _changes([_switch(), _language(), said], [_switch(), said, _language()]) != []


def test_a_message_number_counts_the_database_and_is_ignored() -> None:
    mask = Masker()
    recorded = "Message taken (number 3). Tell the caller someone will call them back."
    assert mask(recorded) == mask(recorded.replace("number 3", "number 1"))
    assert mask("Moving 3 pianos (number 3)") == "Moving 3 pianos (number 3)"
