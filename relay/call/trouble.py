"""What a call does when the model fails: apologise, then offer a person.

A failed turn (an error, a stall past the turn budget, an empty reply) gets the agent's apology.
After two failed turns in a row the agent stops apologising and offers a person instead: a
transfer to the agent's number, or taking a message when it has none. The caller's answer to
that offer is understood without the model (which is failing): a clear "no" carries on with the
model, anything else (a "yes", something unclear, silence) is taken as agreement.
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from relay.errors import FirstTokenTimeout, LLMError

#: Failed turns in a row after which a person is offered instead of another apology.
OFFER_AFTER: Final = 2

_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
_YES: Final = frozenset(
    [
        "yes",
        "yeah",
        "yep",
        "yup",
        "sure",
        "okay",
        "ok",
        "please",
        "alright",
        "right",
        "absolutely",
        "definitely",
        "go",
        "ahead",
        "si",
        "sí",
        "oui",
        "ja",
    ]
)
_NO: Final = frozenset(["no", "nope", "nah", "don't", "dont", "not", "never"])
#: Words that, from a caller the model has just failed, mean "let me talk to a person".
_PERSON: Final = re.compile(
    r"\b(?:person|human|operator|receptionist|manager)\b"
    r"|\b(?:talk|speak|through|transfer|connect)\b.*\b(?:someone|somebody|office|staff)\b"
)


class FailureCounter:
    """LLM failures of every call in this process, by kind (read by the metrics endpoint)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, kind: str) -> None:
        self._counts[kind] += 1

    def counts(self) -> dict[str, int]:
        """A copy: ``{kind: failures}``."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())


def failure_kind(exc: BaseException) -> str:
    """A short, stable name for why a turn failed (the ``kind`` of ``llm_failure`` events)."""
    kind = getattr(exc, "kind", None)  # the LLM client may name it itself
    if isinstance(kind, str) and kind:
        return kind
    if isinstance(exc, FirstTokenTimeout):
        return "first-token-timeout"
    if isinstance(exc, LLMError):
        if exc.status is not None:
            return f"http-{exc.status}"
        return "stream-error"
    return "internal-error"


class Offer(enum.Enum):
    NONE = "none"
    PERSON = "person"  # "shall I put you through?" asked, waiting for the answer
    MESSAGE = "message"  # "shall I take a message?" asked, waiting for the answer
    TAKING = "taking"  # the caller's next words are the message


@dataclass
class Trouble:
    """One call's state in the trouble policy."""

    consecutive: int = 0
    offer: Offer = Offer.NONE
    failures: Counter[str] = field(default_factory=Counter)

    def failed(self, kind: str) -> bool:
        """Count a failed turn; True when a person should be offered now."""
        self.failures[kind] += 1
        self.consecutive += 1
        return self.consecutive >= OFFER_AFTER and self.offer is Offer.NONE

    def succeeded(self) -> None:
        self.consecutive = 0

    def declined(self) -> None:
        """The caller said no: carry on with the model; one more failure offers again."""
        self.offer = Offer.NONE
        self.consecutive = OFFER_AFTER - 1


def answer_to_offer(text: str) -> bool:
    """Whether the caller's words accept an offer: False only for a clear no."""
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    if not words:
        return True
    said_no = any(w in _NO for w in words)
    said_yes = any(w in _YES for w in words)
    return not said_no or (said_yes and words[0] in _YES)


def wants_person(text: str) -> bool:
    """Whether the caller asks for a person ("can I talk to someone?", "a real person please")."""
    return _PERSON.search(text.lower()) is not None
