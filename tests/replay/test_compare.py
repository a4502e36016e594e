"""What counts as a change: the masker and the comparison of LLM requests."""

from __future__ import annotations

from typing import Any

from relay.llm.types import ChatRequest
from relay.replay.compare import Masker, compare_requests


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
