"""The promises a call keeps whatever the model says (issue 15), call side.

:class:`relay.call.speech.Speech` filters one reply; :class:`Promises` is what it checks against,
for the whole call:

- **amounts**: every amount of money in this call's tool results (a quote, a service's price, a
  surcharge), collected as the results arrive (and, on a resumed call, from the stored tool
  answers). The turn adds the amounts in the passages retrieved from the business's own documents
  for that turn; for an agent with a price tool those may not be said as the caller's price
  (:func:`states_price`): an insurance limit in the documents is not a quote.
- **booked**: a booking tool succeeded in this call: a result whose data carries a
  ``booking_ref`` and no ``error`` (``book_move``, ``book_appointment``,
  ``reschedule_appointment``; a booking found again is the same) or ``appointment_status``
  listing the caller's existing bookings (telling a caller about a booking they have is not a
  made-up claim). Refusals, "not confirmed" answers and errors do not count.
- **trips**: how often each guard stopped a reply, for the ``session_end`` summary.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from relay.agents import AgentProfile
from relay.call.speech import Speech, amounts_in

__all__ = [
    "BOOKING_TOOLS",
    "NOTES_HEAD",
    "NOTES_TAIL",
    "PRICE_TOOLS",
    "SEND_TOOLS",
    "Opening",
    "Promises",
    "booking_tool",
    "price_tool",
    "states_price",
]

#: Tools that price something, in order of preference for a re-ask after the price guard.
PRICE_TOOLS = ("quote_piano_move", "find_available_slots")
#: Tools that make (or move) a booking, in order of preference for a re-ask.
BOOKING_TOOLS = ("book_move", "book_appointment", "reschedule_appointment")


def price_tool(agent: AgentProfile) -> str | None:
    """The tool a re-ask requires after an unpriced amount: the profile's ``price_tool``, else
    the first known price tool the agent has (None: the agent cannot price anything)."""
    if agent.price_tool:
        return agent.price_tool if agent.price_tool in agent.tools else None
    return next((name for name in PRICE_TOOLS if name in agent.tools), None)


#: Words that make a sentence a statement of what the caller's job costs: an amount after one
#: of them in the same sentence must come from a tool ("the total for the move is $X").
PRICE_WORDS = frozenset(
    {"price", "priced", "cost", "costs", "total", "quote", "quoted", "fee", "charge", "charges"}
)
#: Words that, right before an amount, make it what the job comes to ("it'll be $X", "that's
#: $X"). Not "it's" or "is": "it's insured up to $50,000", "cover is $50,000 per piano".
PRICE_LEADS = (
    ("comes", "to"), ("come", "to"), ("will", "be"), ("it'll", "be"), ("that'll", "be"),
    ("would", "be"), ("it'd", "be"), ("that'd", "be"), ("that's",), ("that", "is"), ("pay",),
)  # fmt: skip
_EDGES = ".,;:!?\"'()[]{}\u201c\u201d"


def states_price(words: Sequence[str]) -> bool:
    """Whether a sentence whose words before an amount are ``words`` states the caller's price
    with that amount."""
    bare = [w.replace("\u2019", "'").strip(_EDGES).lower() for w in words]
    if PRICE_WORDS.intersection(bare):
        return True
    return any(tuple(bare[-len(lead) :]) == lead for lead in PRICE_LEADS)


#: Tools that send the caller a text or an e-mail: a claim that one went needs one to succeed.
SEND_TOOLS: Final = frozenset({"send_quote_sms", "send_quote_email"})


def booking_tool(agent: AgentProfile) -> str | None:
    return next((name for name in BOOKING_TOOLS if name in agent.tools), None)


#: Tools whose results are the business's documents, not something a tool worked out.
KNOWLEDGE_TOOLS: Final = frozenset({"search_knowledge"})


def _books(data: Mapping[str, Any] | None) -> bool:
    if not data or "error" in data:
        return False
    if data.get("booking_ref"):
        return True
    bookings = data.get("bookings")
    return isinstance(bookings, list) and bool(bookings)


@dataclass
class Promises:
    """What this call's tools have established, and how often the guards had to step in."""

    amounts: set[Decimal] = field(default_factory=set)
    # Amounts a search of the business's documents returned: documents' amounts, not prices.
    searched: set[Decimal] = field(default_factory=set)
    booked: bool = False
    # A text or an e-mail went to the caller (a send tool's answer without an error; an unknown
    # outcome, a refusal or a failure is not one).
    sent: bool = False
    trips: Counter[str] = field(default_factory=Counter)

    def saw_result(self, content: str, data: Mapping[str, Any] | None, tool: str = "") -> None:
        """A tool result arrived: its amounts may be said; a booking it made may be claimed.
        A search of the documents (``search_knowledge``) gives the documents' amounts: said as
        what they are, like the passages retrieved for a turn, never as the caller's price."""
        if tool in KNOWLEDGE_TOOLS:
            self.searched |= amounts_in(content)
        else:
            self.amounts |= amounts_in(content)
        if _books(data):
            self.booked = True
        if tool in SEND_TOOLS and data and "error" not in data:
            self.sent = True

    def saw_history(self, answers: Iterable[str]) -> None:
        """A resumed call: the amounts in the tool answers stored by the earlier session(s)."""
        for content in answers:
            self.amounts |= amounts_in(content)

    def speech(self, agent: AgentProfile, documents: str = "") -> Speech:
        """A filter for one reply of ``agent``; ``documents``: the passages retrieved for this
        turn (the business's own words, whose amounts may be said too; for an agent with a
        price tool, not as the caller's price)."""
        extra = _document_amounts(documents) if documents and agent.price_guard else frozenset()
        return Speech(
            max_words=agent.max_reply_words or None,
            allowed_amounts=lambda: self.amounts,
            document_amounts=extra,
            searched_amounts=lambda: self.searched,
            price_statement=states_price if price_tool(agent) is not None else None,
            booked=lambda: self.booked,
            sent=lambda: self.sent,
            guard_prices=agent.price_guard,
            guard_bookings=agent.booking_guard,
            guard_messages=agent.message_guard,
        )

    def summary(self) -> dict[str, int]:
        return {"price": self.trips["price"], "booking": self.trips["booking"],
                "message": self.trips["message"], "echo": self.trips["echo"]}  # fmt: skip


@functools.lru_cache(maxsize=256)
def _document_amounts(documents: str) -> frozenset[Decimal]:
    """The amounts written in a turn's passages. The same passages come back turn after turn
    (the index keeps its answers), and scanning them is a regex pass over kilobytes of text
    on the way from the caller's words to the model's request; so it is done once."""
    return frozenset(amounts_in(documents))


#: The start of the per-turn system message (relay.call.session): a reply beginning with it is
#: the model reading its notes back to the caller.
NOTES_HEAD = "Current date and time:"
#: Its last line: small models read a system message after the caller's words aloud unless told.
NOTES_TAIL = "(Notes for you, never to be read out.)"


#: The tag a Hermes-style chat template (Qwen's, among others) puts before a tool call's JSON.
CALL_TAG = "<tool_call>"


class Opening:
    """The first characters of a model's reply, held until they show what the reply is:
    ``"say"`` (words for the caller), ``"echo"`` (the per-turn notes read back: a small model
    given a system message after the caller's words did that, word for word) or ``"call"`` (a
    tool call written as JSON text, which a server did not parse: no speech ever starts
    with ``{``; nor with :data:`CALL_TAG`, the Hermes chat templates' wrapper that Qwen and
    others write around it when the server runs without their template's tool parsing)."""

    def __init__(self) -> None:
        self.raw = ""
        self.kind: str | None = None

    def feed(self, text: str) -> str | None:
        """The reply's kind once it is known, else None (keep holding)."""
        self.raw += text
        head = self.raw.lstrip()
        if not head:
            return None
        if head.startswith("{") or head[: len(CALL_TAG)].lower() == CALL_TAG:
            self.kind = "call"
        elif head.startswith(NOTES_HEAD):
            self.kind = "echo"
        elif NOTES_HEAD.startswith(head) or CALL_TAG.startswith(head.lower()):
            return None
        else:
            self.kind = "say"
        return self.kind

    def tool_call(self, known: Iterable[str]) -> tuple[str, str] | None:
        """A ``{"name": ..., "arguments": {...}}`` reply as (name, arguments JSON), if it names a
        known tool."""
        import json

        body = self.raw.lstrip()
        if body[: len(CALL_TAG)].lower() == CALL_TAG:
            body = body[len(CALL_TAG) :].lstrip()
        try:
            value, _ = json.JSONDecoder().raw_decode(body)
        except ValueError:
            return None
        if not isinstance(value, dict) or value.get("name") not in set(known):
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            return str(value["name"]), arguments
        if not isinstance(arguments, dict):
            return None
        return str(value["name"]), json.dumps(arguments)
