"""The offer of a person when the model keeps failing, carried out without the model.

:class:`Escalation` counts a call's failed turns (:mod:`relay.call.trouble` says what a failure
is). The first failure gets the agent's apology; the second in a row gets, instead, the offer of
a person: a transfer to the agent's ``person_number`` or, when it has none, taking a message. The
caller's answer is read without the model: a clear "no" goes back to the model, anything else
(a "yes", something unclear, or silence) is taken as agreement. A message is the caller's next
words, stored with the ``take_message`` tool against the number they call from.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any, Protocol

import orjson
import structlog

from relay.call.trouble import Offer, Trouble, answer_to_offer, wants_person
from relay.call.turn import TurnHost, call_tool
from relay.llm.types import ToolCall

log = structlog.get_logger("relay.call.escalation")

#: The outcome of a call the model's failures ended (or that hung up while it was failing).
OUTCOME = "llm-failure"


class EscalationHost(TurnHost, Protocol):
    """What the offer of a person needs from its call, besides what a turn needs."""

    @property
    def caller_name(self) -> str: ...

    def say(self, text: str) -> None: ...
    def start_turn(self, text: str, *, lang: str | None, received: float) -> None: ...
    def stop_turn(self) -> None: ...
    def spawn(self, coro: Awaitable[Any]) -> None: ...
    def end_call(self, line: str, data: dict[str, Any], *, outcome: str) -> None: ...


class Escalation:
    """One call's failed turns, and the offer of a person they lead to."""

    def __init__(self, host: EscalationHost) -> None:
        self._host = host
        self.state = Trouble()

    @property
    def offered(self) -> bool:
        """Waiting for the caller's answer to an offer (or for their message)."""
        return self.state.offer is not Offer.NONE

    @property
    def failing(self) -> bool:
        """The last turn failed, or an offer is open: the call would end as ``llm-failure``."""
        return bool(self.state.consecutive) or self.offered

    def failed(self, kind: str, error: str) -> str:
        """Count a failed turn; the line the caller hears instead of an answer."""
        host, agent = self._host, self._host.agent
        log.warning("turn_failed_apologised", error=error[:300], kind=kind)
        host.deps.llm_failures.add(kind)
        offer = self.state.failed(kind)
        offered = ("person" if agent.person_number else "message") if offer else None
        host.event(
            "llm_failure",
            {"kind": kind, "error": error[:500], "consecutive": self.state.consecutive,
             "offered": offered},
        )  # fmt: skip
        if not offer:
            return agent.apology_line
        if agent.person_number:
            self.state.offer = Offer.PERSON
            return agent.offer_person_line.replace("{person_name}", agent.person_name)
        self.state.offer = Offer.MESSAGE
        return agent.offer_message_line

    def succeeded(self) -> None:
        self.state.succeeded()

    def answer(self, text: str, *, lang: str | None, received: float) -> None:
        """The caller's words while an offer is open."""
        host, offer = self._host, self.state.offer
        host.stop_turn()
        if offer is Offer.TAKING:
            host.transcript.user(text, lang=lang, prompt_received_at=received)
            self.state.offer = Offer.NONE
            host.spawn(self._take_message(text))
            return
        if not answer_to_offer(text):
            host.event("llm_failure_offer", {"offer": offer.value, "accepted": False})
            self.state.declined()
            host.start_turn(text, lang=lang, received=received)
            return
        host.transcript.user(text, lang=lang, prompt_received_at=received)
        self.accept("caller agreed")

    def asked_for_person(self, text: str, *, lang: str | None, received: float) -> bool:
        """After a failed turn, a caller asking for a person gets one without the model (which
        could not call the transfer tool): True if so."""
        if not self.state.consecutive or self.offered or not wants_person(text):
            return False
        host = self._host
        host.stop_turn()
        host.transcript.user(text, lang=lang, prompt_received_at=received)
        self.state.offer = Offer.PERSON if host.agent.person_number else Offer.MESSAGE
        self.accept("caller asked for a person")
        return True

    def silence(self) -> bool:
        """The caller said nothing: True if an offer was open (and is now carried out)."""
        if self.state.offer not in (Offer.PERSON, Offer.MESSAGE):
            return False
        self.accept("caller said nothing")
        return True

    def accept(self, why: str) -> None:
        host, offer = self._host, self.state.offer
        host.event("llm_failure_offer", {"offer": offer.value, "accepted": True, "why": why})
        if offer is Offer.PERSON:
            self.state.offer = Offer.NONE
            data = {
                "reasonCode": "live-agent-handoff", "reason": OUTCOME,
                "summary": "The assistant could not answer (the language model was failing); "
                           "the caller accepted a person.",
                "callSid": host.call_sid, "agent": host.agent.name,
            }  # fmt: skip
            host.end_call(host.agent.transfer_line, data, outcome=OUTCOME)
        elif offer is Offer.MESSAGE:
            self.state.offer = Offer.TAKING
            host.say(host.agent.take_message_line)

    async def _take_message(self, text: str) -> None:
        """Store the caller's words with the ``take_message`` tool (when the process has it),
        then say goodbye and end the call."""
        host = self._host
        tool = host.deps.tools.get("take_message")
        if tool is not None:
            name = host.caller_name or "Caller"
            arguments = orjson.dumps({"name": name, "phone": "this number", "reason": text})
            call = ToolCall(
                f"call_llm_failure_{uuid.uuid4().hex[:8]}", tool.name, arguments.decode()
            )
            host.event("tool_call", {"id": call.id, "name": call.name, "arguments": call.arguments})
            try:
                result = await call_tool(host, call, {tool.name: tool}, None)
            except Exception as exc:  # the caller still gets a goodbye
                log.error("message_not_taken", error=repr(exc))
            else:
                host.event(
                    "tool_result",
                    {"id": call.id, "name": call.name, "content": result.content,
                     "data": result.data},
                )  # fmt: skip
        else:
            host.event("message_left", {"text": text})
        data = {
            "reasonCode": "end-call",
            "reason": OUTCOME,
            "summary": "The caller left a message.",
        }
        host.end_call(host.agent.message_taken_line, data, outcome=OUTCOME)
