"""The call's history: one list of typed messages, each with its stored turn row.

What the model is sent must obey OpenAI's order rule: an assistant message with ``tool_calls`` is
followed at once by one ``tool`` message per call id, before any other message. Here that holds
by construction: :meth:`Transcript.add_tool_calls` appends, in the same step, a placeholder tool
message for every call (saying the call was not done because the caller spoke), and
:meth:`Transcript.answer` later fills a placeholder in place. A user message that arrives while
a tool runs therefore always lands after the answers, never between the call and its answer.

What the model wrote is not always fit to be sent back. A tool call whose arguments are not a
JSON object (a model cut off mid-call) is sent as ``{}``: strict servers (vLLM, SGLang) parse the
arguments of past calls and refuse the whole request otherwise, and the call's answer already
says what was wrong; the stored row keeps what the model wrote. A call id longer than OpenAI
accepts (40 characters) becomes a short one made from it, the same in the call, its answer, the
stored rows and a resumed call.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import orjson

#: What a tool message says until its tool has answered, and for good if it never does.
NOT_DONE = "Not done: the caller spoke before this finished."

#: The longest tool-call id OpenAI accepts in a request ("string too long. Expected a string
#: with maximum length 40").
MAX_CALL_ID: Final = 40


def call_id(raw: str) -> str:
    """A tool-call id as the model may be sent it: ``raw`` itself when short enough, else a short
    id made from it, the same every time (so a call and its answer, and a resumed call, agree)."""
    if len(raw) <= MAX_CALL_ID:
        return raw
    return "call_" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def sendable_arguments(arguments: str) -> str:
    """A past call's arguments as the model may be sent them: ``arguments`` when they are a JSON
    object, else ``{}`` (the call's answer says what was wrong with them)."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return "{}"
    return arguments if isinstance(parsed, dict) else "{}"


class Role(enum.StrEnum):
    SYSTEM = "system"  # a note for the model mid-call (a supervisor's whisper)
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ToolCallItem:
    """One function call of an assistant message. ``id`` and ``arguments`` are the model's own
    (``id`` shortened by :func:`call_id` in what is sent and stored)."""

    id: str
    name: str
    arguments: str

    def openai(self) -> dict[str, Any]:
        """The call as the model is sent it in the history."""
        return self._dict(sendable_arguments(self.arguments))

    def stored(self) -> dict[str, Any]:
        """The call as its turn row keeps it: the arguments as the model wrote them."""
        return self._dict(self.arguments)

    def _dict(self, arguments: str) -> dict[str, Any]:
        return {
            "id": call_id(self.id),
            "type": "function",
            "function": {"name": self.name, "arguments": arguments},
        }


@dataclass(eq=False, slots=True)
class Message:
    """One message of the history and the turn row it is stored as (``row``, kept in step)."""

    role: Role
    content: str
    row: dict[str, Any]
    tool_calls: tuple[ToolCallItem, ...] = ()  # assistant messages only
    tool_call_id: str | None = None  # tool messages only
    answered: bool = True  # False for a tool message still waiting for its tool
    # An assistant line sent as a talk cycle of its own (after a ``last:true``): a keypad
    # option, a re-prompt, a last line. An interrupt during it concerns it alone.
    opens_cycle: bool = False
    # The message as the model is sent it, built once per change: requests share it (never
    # changed in place, so a request already serialised or recorded keeps what it said).
    _wire: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def seq(self) -> int:
        seq: int = self.row["seq"]
        return seq

    @property
    def spoken(self) -> str:
        """What was sent to the caller's ear for this message (assistant messages)."""
        return str(self.row.get("spoken_text") or "")

    def set_content(self, text: str) -> None:
        self.content = text
        self.row["content"] = text
        self._wire = None

    def set_tool_calls(self, calls: Sequence[ToolCallItem]) -> None:
        self.tool_calls = tuple(calls)
        self.row["tool_calls"] = [call.stored() for call in calls]
        self._wire = None

    def openai(self) -> dict[str, Any]:
        """This message as the model is sent it. Treat it as read-only: it is shared by every
        request until the message changes (then a new dict is built)."""
        if self._wire is None:
            message: dict[str, Any] = {"role": self.role.value, "content": self.content}
            if self.tool_calls:
                message["tool_calls"] = [call.openai() for call in self.tool_calls]
            if self.tool_call_id is not None:
                message["tool_call_id"] = call_id(self.tool_call_id)
            self._wire = message
        return self._wire


class StoredTurn(Protocol):
    """A stored turn row, as a resumed session reads it back (``relay.storage.models.Turn``)."""

    @property
    def call_sid(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def tool_calls(self) -> list[Any] | None: ...
    @property
    def tool_call_id(self) -> str | None: ...
    @property
    def tool_name(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...


@dataclass
class Transcript:
    """The history of one call. ``record`` stores a turn row (an upsert by call and seq)."""

    record: Callable[[dict[str, Any]], None]
    now: Callable[[], datetime]
    call_sid: str = ""
    session_id: str = ""
    messages: list[Message] = field(default_factory=list)
    next_seq: int = 0

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def last(self) -> Message | None:
        return self.messages[-1] if self.messages else None

    # -- adding ----------------------------------------------------------------------------

    def _add(self, role: Role, content: str, fields: dict[str, Any]) -> Message:
        row = {
            "call_sid": self.call_sid, "session_id": self.session_id, "seq": self.next_seq,
            "role": role.value, "content": content, "created_at": self.now(), **fields,
        }  # fmt: skip
        self.next_seq += 1
        message = Message(role, content, row, tool_call_id=fields.get("tool_call_id"))
        self.messages.append(message)
        self.record(row)
        return message

    def system(self, text: str, **fields: Any) -> Message:
        """A note for the model from here on (the caller never hears it)."""
        return self._add(Role.SYSTEM, text, fields)

    def user(self, text: str, **fields: Any) -> Message:
        return self._add(Role.USER, text, fields)

    def assistant(self, text: str = "", *, opens_cycle: bool = False, **fields: Any) -> Message:
        """An assistant message; ``spoken_text`` defaults to ``text`` (what was said).
        ``opens_cycle``: said as a talk cycle of its own, not as part of an answer."""
        fields.setdefault("spoken_text", text)
        message = self._add(Role.ASSISTANT, text, fields)
        message.opens_cycle = opens_cycle
        return message

    def add_tool_calls(
        self, into: Message | None, calls: Sequence[ToolCallItem]
    ) -> tuple[Message, list[Message]]:
        """Attach ``calls`` to the assistant message ``into`` and append, at once, one placeholder
        tool message per call. Returns the assistant message and the placeholders, in order.

        ``into`` must be the last message for the calls to belong to it; otherwise (or with no
        message) a new, empty assistant message carries them, so the order rule always holds.
        """
        if into is None or into is not self.last or into.role is not Role.ASSISTANT:
            into = self.assistant("")
        into.set_tool_calls(calls)
        self.record(into.row)
        placeholders = []
        for call in calls:
            placeholder = self._add(
                Role.TOOL, NOT_DONE, {"tool_call_id": call_id(call.id), "tool_name": call.name}
            )
            placeholder.answered = False
            placeholders.append(placeholder)
        return into, placeholders

    def answer(self, placeholder: Message, content: str) -> None:
        """Fill a tool message in place with its tool's result."""
        placeholder.set_content(content)
        placeholder.answered = True
        self.record(placeholder.row)

    def say(self, message: Message, text: str) -> None:
        """Add words said outside the model's stream (a filler line) to ``message``."""
        message.set_content(message.content + text)
        message.row["spoken_text"] = message.spoken + text
        self.record(message.row)

    # -- reading -----------------------------------------------------------------------------

    def openai(self, leave_out: Message | None = None) -> list[dict[str, Any]]:
        """The history as the model is sent it (without the system prompt), less ``leave_out``
        (a line said while the model had not answered yet, which its answer continues)."""
        out = []
        for m in self.messages:
            wire = m._wire or m.openai()
            # An assistant message nothing was heard of and nothing was done by: left out.
            if (wire["content"] or m.role is not Role.ASSISTANT or m.tool_calls) and (
                m is not leave_out
            ):
                out.append(wire)
        return out

    def recent_user_text(self, *, messages: int = 2, chars: int = 300) -> str:
        """The caller's latest words, with a little recent context (the retrieval query)."""
        parts: list[str] = []
        for message in reversed(self.messages):
            if message.role is Role.USER and message.content:
                parts.append(message.content)
                if len(parts) == messages or sum(len(p) for p in parts) > chars:
                    break
        return " ".join(reversed(parts))

    # -- barge-in ----------------------------------------------------------------------------

    def cut_to_heard(self, heard: str) -> list[Message]:
        """Cut the assistant's last talk cycle down to what the caller heard: its messages
        since the last user message, the last line said as a cycle of its own, or the last
        message an earlier interrupt cut (which keeps what that interrupt said was heard).
        Returns the messages changed (already recorded).

        ``heard`` (Twilio's ``utteranceUntilInterrupt``) measures how much of what was said
        was heard; its words are never kept (see :func:`heard_of`). Each row's ``heard_text``
        keeps it as it came, split across the cycle's messages."""
        spoken: list[Message] = []
        for message in reversed(self.messages):
            if message.role is Role.USER or message.row.get("interrupted"):
                break
            if message.role is Role.ASSISTANT and message.spoken:
                spoken.append(message)
                if message.opens_cycle:
                    break
        spoken.reverse()
        kept, parts = heard_of([message.spoken for message in spoken], heard)
        for message, text, part in zip(spoken, kept, parts, strict=True):
            message.set_content(text)
            message.row.update(heard_text=part, interrupted=True)
            self.record(message.row)
        return spoken

    # -- a resumed call ------------------------------------------------------------------------

    def load(self, turns: Iterable[StoredTurn]) -> None:
        """Rebuild the history from stored rows, keeping the order rule even for rows written
        by an older version: each call's answer follows its call, stray answers are dropped and
        missing ones become :data:`NOT_DONE`."""
        rows = sorted(turns, key=lambda t: t.seq)
        # By the id the model is sent: rows of an older version may hold a longer one.
        answers = {
            call_id(t.tool_call_id): t for t in rows if t.role == Role.TOOL and t.tool_call_id
        }
        top = -1
        for turn in rows:
            top = max(top, turn.seq)
            if turn.role == Role.TOOL:
                continue  # placed after the assistant message that called it
            role = Role(turn.role) if turn.role in Role._value2member_map_ else Role.USER
            row = {
                "call_sid": turn.call_sid, "seq": turn.seq, "session_id": turn.session_id,
                "role": role.value, "content": turn.content, "created_at": turn.created_at,
                "spoken_text": turn.content if role is Role.ASSISTANT else None,
            }  # fmt: skip
            message = Message(role, turn.content, row)
            self.messages.append(message)
            for raw in turn.tool_calls or ():
                call = _tool_call_item(raw)
                if call is None:
                    continue
                message.tool_calls = (*message.tool_calls, call)
                message._wire = None
                answer = answers.pop(call_id(call.id), None)
                content = answer.content if answer is not None else NOT_DONE
                tool_row = {
                    "call_sid": turn.call_sid, "seq": answer.seq if answer else None,
                    "session_id": turn.session_id, "role": "tool", "content": content,
                    "tool_call_id": call_id(call.id), "tool_name": call.name,
                    "created_at": answer.created_at if answer else turn.created_at,
                }  # fmt: skip
                self.messages.append(
                    Message(Role.TOOL, content, tool_row, tool_call_id=call_id(call.id))
                )
        self.next_seq = top + 1
        # Answers with no stored row get a seq now (recorded, so the next resume finds them).
        for message in self.messages:
            if message.row.get("seq") is None:
                message.row["seq"] = self.next_seq
                self.next_seq += 1
                self.record(message.row)


def _tool_call_item(raw: Any) -> ToolCallItem | None:
    """A call of a stored row, as the model wrote it (``ToolCallItem.openai`` makes it fit to be
    sent); None for an item that is not a call."""
    if not isinstance(raw, dict):
        return None
    function = raw.get("function")
    if not isinstance(function, dict) or not isinstance(raw.get("id"), str):
        return None
    return ToolCallItem(
        id=raw["id"],
        name=str(function.get("name", "")),
        arguments=str(function.get("arguments", "")),
    )


def heard_of(said: Sequence[str], heard: str) -> tuple[list[str], list[str]]:
    """What the caller heard of each of ``said`` (the texts of one talk cycle, in order), going
    by ``heard``, Twilio's account of what played; and ``heard`` split across them.

    The kept text is always a start of what was said, in its own characters. ``heard`` may
    differ from it in case, punctuation and spacing, so the two are compared with those left
    out; when ``heard`` is not a start of what was said (the caller's side can send anything
    there, even words relay never said), only its length is used: what was said is cut to it,
    at the end of a word."""
    if not said:
        return [], []
    whole = " ".join(said)
    starts: list[int] = []
    at = 0
    for text in said:
        starts.append(at)
        at += len(text) + 1
    spoken, spoken_at = _loose(whole)
    words, words_at = _loose(heard)
    common = 0
    for a, b in zip(spoken, words, strict=False):
        if a != b:
            break
        common += 1
    if words and common == len(words):
        end = spoken_at[common - 1] + 1
        if not heard.rstrip()[-1].isalnum():  # "...three movers." keeps the full stop
            while end < len(whole) and not (whole[end].isalnum() or whole[end].isspace()):
                end += 1
        # Each message's part of heard starts where the first letter said in it was heard.
        firsts = (bisect_left(spoken_at, start) for start in starts[1:])
        cuts = [words_at[i] if i < common else len(heard) for i in firsts]
    else:
        matched = spoken_at[common - 1] + 1 if common else 0
        end = max(matched, _words_within(whole, len(heard)))
        cuts = [min(start, len(heard)) for start in starts[1:]]
    kept = [text[: max(0, end - start)] for text, start in zip(said, starts, strict=True)]
    bounds = [0, *cuts, len(heard)]
    return kept, [heard[a:b] for a, b in itertools.pairwise(bounds)]


def _loose(text: str) -> tuple[str, list[int]]:
    """``text``'s letters and digits, case-folded, and where each came from in ``text``."""
    folded: list[str] = []
    where: list[int] = []
    for index, char in enumerate(text):
        if char.isalnum():
            lower = char.casefold()
            folded.append(lower)
            where.extend([index] * len(lower))
    return "".join(folded), where


def _words_within(text: str, length: int) -> int:
    """The end of the last whole word of ``text`` within its first ``length`` characters."""
    if length >= len(text):
        return len(text)
    head = text[:length]
    if not text[length].isspace():  # the cut falls inside a word: leave the word out
        head = head[: max(head.rfind(" "), 0)]
    return len(head.rstrip())
