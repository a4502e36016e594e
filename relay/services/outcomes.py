"""What a call achieved, derived from what happened, never guessed.

The sources are the call's recorded events (``tool_result`` of each tool the model called,
``llm_failure``/``llm_error``, the frames), the side-effect ledger (a side effect counts only
when the ledger says it was ``done``) and the ending the session recorded (``transferred``,
``hung-up``, ``caller-silent``, ``server-shutdown``...). Several outcomes may hold at once.

The rules work on plain mappings, so they apply equally to a stored call and to a recording
file (``relay.recordings.format.Recording``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

#: Every outcome, in the order they are listed.
OUTCOMES: Final = (
    "quoted",
    "booked",
    "rescheduled",
    "cancelled",
    "message-taken",
    "transferred",
    "sms-sent",
    "e-mail-sent",
    "answered-only",
    "abandoned",
    "llm-failure",
)

#: The outcome a tool's successful result gives.
TOOL_OUTCOMES: Final[Mapping[str, str]] = {
    "quote_piano_move": "quoted",
    "book_move": "booked",
    "book_appointment": "booked",
    "reschedule_appointment": "rescheduled",
    "cancel_appointment": "cancelled",
    "take_message": "message-taken",
    "send_quote_sms": "sms-sent",
    "send_quote_email": "e-mail-sent",
}

#: Endings where the caller never engaged: the call is abandoned unless something was done.
SILENT_ENDINGS: Final = frozenset({"caller-silent", "no-input", "silence"})
#: Event kinds that record a failed model turn (the ending ``llm-failure`` counts too).
LLM_FAILURE_EVENTS: Final = frozenset({"llm_failure", "llm_error"})
#: The event kinds :func:`derive` reads; of ``frame_out`` only the ``end`` frames that hand the
#: call to a person (:func:`reads`).
EVENT_KINDS: Final = (
    frozenset({"tool_result", "message_left", "llm_response", "frame_in", "frame_out"})
    | LLM_FAILURE_EVENTS
)


def reads(kind: str, json_text: str) -> bool:
    """Whether :func:`derive` could use this stored event (its data as JSON text): a cheap test
    that skips the reply's token frames, which are most of a call's events."""
    return kind != "frame_out" or "live-agent-handoff" in json_text


_ACHIEVEMENTS: Final = frozenset(OUTCOMES) - {"answered-only", "abandoned", "llm-failure"}


def derive(
    call: Mapping[str, Any],
    events: Iterable[Mapping[str, Any]],
    ledger: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """The outcomes of one call, in the order of :data:`OUTCOMES`.

    ``call`` is the calls row (``outcome`` is how the session ended, ``status``), ``events`` its
    events in order (``kind``, ``data``), ``ledger`` its side-effect rows (``tool``, ``status``).
    """
    found: set[str] = set()
    done_side_effects = {row["tool"] for row in ledger if row.get("status") == "done"}
    ledger_tools = {row["tool"] for row in ledger}
    prompts = 0
    answered = False
    handoff = False
    for event in events:
        kind = event.get("kind")
        data = event.get("data") or {}
        if kind == "tool_result":
            outcome = _tool_outcome(data, done_side_effects, ledger_tools)
            if outcome is not None:
                found.add(outcome)
        elif kind in LLM_FAILURE_EVENTS:
            found.add("llm-failure")
        elif kind == "message_left" and str(data.get("text") or "").strip():
            found.add("message-taken")  # left with the session itself (no take_message tool)
        elif kind == "llm_response":
            if data.get("complete") and (data.get("pieces") or data.get("tool_calls")):
                answered = True
        elif kind == "frame_in":
            frame = _frame(data.get("raw"))
            if frame.get("type") == "prompt" and frame.get("last", True) is not False:
                if str(frame.get("voicePrompt") or "").strip():
                    prompts += 1
            elif frame.get("type") == "dtmf":
                prompts += 1
        elif kind == "frame_out":
            frame = _frame(data.get("raw"))
            if frame.get("type") == "end" and "live-agent-handoff" in str(frame.get("handoffData")):
                handoff = True
    ending = call.get("outcome") or ""
    if ending == "transferred" or call.get("status") == "transferred" or handoff:
        found.add("transferred")
    if ending == "llm-failure":
        found.add("llm-failure")
    if not found & _ACHIEVEMENTS:
        if prompts == 0 or ending in SILENT_ENDINGS or not answered:
            found.add("abandoned")
        else:
            found.add("answered-only")
    return [outcome for outcome in OUTCOMES if outcome in found]


def _tool_outcome(data: Mapping[str, Any], done: set[str], ledger_tools: set[str]) -> str | None:
    name = str(data.get("name") or "")
    outcome = TOOL_OUTCOMES.get(name)
    if outcome is None:
        return None
    result = data.get("data")
    result = result if isinstance(result, Mapping) else {}
    if "error" in result or result.get("unknown"):
        return None
    if outcome == "quoted" and (result.get("needs_inspection") or "quote_id" not in result):
        return None  # a crane job has no phone price: nothing was quoted
    if name in ledger_tools and name not in done:
        return None  # the ledger says this side effect did not happen
    return outcome


def _frame(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str) or not raw.startswith("{"):
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
