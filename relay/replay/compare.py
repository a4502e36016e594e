"""What changed: LLM requests against the recorded ones, and the call turn by turn.

A :class:`Masker` hides what must not count as a change (the current-time line, random
references, the recording's ``ignore`` patterns) before anything is compared.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.recordings.format import Recording, RecordingError
from relay.replay.script import parse_frame

_TIME_LINE = re.compile(r"Current date and time: [^.\n]*\.")
#: The references relay's tools make up at random (``relay.storage.business``): quote ids
#: (``Q482913``) and six-digit booking references, also as spelt out for speech
#: (``4 8 2 9 1 3``), and message numbers (``Message taken (number 3)``). Always ignored, so that a call exported as it is replays unchanged; in
#: cassette mode the new value is carried into the recorded answers that say it.
_MASK_MARKS = re.compile(r"[\[\]*]")
_SPACES = re.compile(r"[ \t]+")
REFERENCES = (
    r"\bQ\d{6}\b",
    r"(?<![\d.,$])\b\d{6}\b(?![.,]\d)",
    r"\b\d(?: \d){5}\b",
    # take_message's ticket: its number counts the tickets in the database (a replay's is new).
    r"Message taken \(number \d+\)",
)


@dataclass(frozen=True)
class Divergence:
    """An LLM request that is not the one recorded."""

    number: int
    summary: str
    diff: str


class Masker:
    """Hides what must not count as a change: the time line, random references and the
    ``ignore`` patterns (the recording's and the command line's)."""

    def __init__(
        self,
        patterns: Iterable[str] = (),
        *,
        references: bool = True,
        redacted: bool = False,
        fillers: Iterable[str] = (),
    ) -> None:
        self.redacted = redacted
        #: Filler lines ("One moment while I check that."): said only when the model was slow
        #: that day, so whether a call has one says nothing about the agent (:meth:`add_fillers`).
        self.fillers: list[str] = []
        self.add_fillers(fillers)
        wanted = [*(REFERENCES if references else ()), *patterns]
        try:
            self.patterns = [re.compile(p) for p in dict.fromkeys(wanted)]
        except re.error as exc:
            raise RecordingError(f"bad ignore pattern: {exc}") from exc

    def add_fillers(self, lines: Iterable[str]) -> None:
        for line in lines:
            line = line.strip()
            if line and line not in self.fillers:
                self.fillers.append(line)
        self.fillers.sort(key=len, reverse=True)  # a longer line first, if one holds another

    def __call__(self, text: str) -> str:
        """``text`` as compared."""
        return self._mask(text, compared=True)

    def shown(self, text: str) -> str:
        """``text`` as printed in a difference: as :meth:`__call__` has it, but with a redacted
        recording's masks (``[name]``, ``+61*******78``) and any JSON brackets left whole."""
        return self._mask(text, compared=False)

    def _mask(self, text: str, *, compared: bool) -> str:
        text = _TIME_LINE.sub("Current date and time: (now).", text)
        for line in self.fillers:
            if line in text:
                text = text.replace(line + " ", "").replace(line, "")
        if self.redacted and compared:
            # A redacted recording's masks (``[name]``, ``**** *** *78``) are in the recorded
            # model answers, and the agent's speech filter drops their brackets and asterisks
            # when it says them again: compare without those marks.
            text = _SPACES.sub(" ", _MASK_MARKS.sub("", text))
        for pattern in self.patterns:
            text = pattern.sub("<ignored>", text)
        return text


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    text = (
        content
        if isinstance(content, str)
        else orjson.dumps(content).decode()
        if content is not None
        else ""
    )
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        text += f"\n{function.get('name')}({function.get('arguments')})"
    return text


def _render_messages(
    messages: Sequence[Mapping[str, Any]], mask: Callable[[str], str]
) -> list[str]:
    return [shown for _, shown in _rendered(messages, mask)]


def _rendered(
    messages: Sequence[Mapping[str, Any]], mask: Callable[[str], str]
) -> list[tuple[str, str]]:
    """The request's messages as lines: (what is compared, what is printed)."""
    show = mask.shown if isinstance(mask, Masker) else mask
    lines: list[tuple[str, str]] = []

    def add(compared: list[str], printed: list[str], head: str, indent: str = "    ") -> None:
        if len(printed) != len(compared):  # a mask that joined or split lines: print as compared
            printed = compared
        lines.append((head + compared[0], head + printed[0]))
        lines.extend(
            (indent + a, indent + b) for a, b in zip(compared[1:], printed[1:], strict=True)
        )

    for index, message in enumerate(messages):
        role = message.get("role")
        head = f"[{index}] {role}"
        if message.get("tool_call_id"):
            head += f" (answer to {message['tool_call_id']})"
        content = message.get("content")
        text = (
            content
            if isinstance(content, str)
            else ""
            if content is None
            else orjson.dumps(content).decode()
        )
        if text:
            add(mask(text).split("\n"), show(text).split("\n"), f"{head}: ")
        else:
            add([""], [""], f"{head}: ")
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            arguments = str(function.get("arguments"))
            name, tail = function.get("name"), f") as {call.get('id')}"
            lines.append(
                (
                    f"    calls {name}({mask(arguments)}{tail}",
                    f"    calls {name}({show(arguments)}{tail}",
                )
            )
    return lines


def _unified(old: Sequence[tuple[str, str]], new: Sequence[tuple[str, str]]) -> list[str]:
    """A unified diff (one line of context) of what is compared, printing what is printed."""
    matcher = difflib.SequenceMatcher(None, [a for a, _ in old], [a for a, _ in new], False)
    out: list[str] = []
    for group in matcher.get_grouped_opcodes(1):
        if not out:
            out.extend(("--- recorded", "+++ now"))
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out.extend(" " + shown for _, shown in old[i1:i2])
                continue
            out.extend("-" + shown for _, shown in old[i1:i2])
            out.extend("+" + shown for _, shown in new[j1:j2])
    return out


def _range(start: int, stop: int) -> str:
    """A hunk's range as ``diff -u`` writes it (as :func:`difflib.unified_diff` does)."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def _tool_names(body: Mapping[str, Any]) -> list[str]:
    return sorted(str((t.get("function") or {}).get("name")) for t in body.get("tools") or [])


def render_request(body: Mapping[str, Any], mask: Callable[[str], str]) -> str:
    lines = _render_messages(body.get("messages") or [], mask)
    lines.append(f"tools: {', '.join(_tool_names(body)) or 'none'}")
    return "\n".join(lines)


#: How the call's facts begin (relay.call.session): a caller ID, or a known caller alone.
_FACTS = re.compile(r"(?:Caller ID|Number called \(an outbound call\)|Known caller): ")


def current_layout(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A recorded request's messages in today's layout. Until 7 December the call's facts (the
    caller ID, a known caller) ended the agent's system prompt, after a blank line; now they are
    a system message of their own after it, so that the prompt and the tool schemas a chat
    template puts after it are one prefix for every caller. The model is told the same; a
    recording made before is compared as if made now rather than reported as changed."""
    if not messages or messages[0].get("role") != "system":
        return list(messages)
    content = messages[0].get("content")
    if not isinstance(content, str):
        return list(messages)
    prompt, blank, facts = content.rpartition("\n\n")
    if not blank or not _FACTS.match(facts):
        return list(messages)
    return [
        {**messages[0], "content": prompt},
        {"role": "system", "content": facts},
        *messages[1:],
    ]


def compare_requests(
    recorded: Mapping[str, Any], now: Mapping[str, Any], mask: Callable[[str], str]
) -> tuple[str, str] | None:
    """(summary, diff) when the requests differ in their messages or tool names, else None.
    Both are read in today's layout (:func:`current_layout`): a request recorded before the
    call's facts had a message of their own is not a change."""
    problems: list[str] = []
    diff: list[str] = []
    old = _rendered(current_layout(recorded.get("messages") or []), mask)
    new = _rendered(current_layout(now.get("messages") or []), mask)
    if [a for a, _ in old] != [b for b, _ in new]:
        changed = sum(1 for a, b in zip(old, new, strict=False) if a[0] != b[0]) + abs(
            len(old) - len(new)
        )
        problems.append(f"messages differ ({changed} line{'s' if changed != 1 else ''})")
        diff.extend(_unified(old, new))
    old_tools, new_tools = _tool_names(recorded), _tool_names(now)
    if old_tools != new_tools:
        gone = sorted(set(old_tools) - set(new_tools))
        added = sorted(set(new_tools) - set(old_tools))
        problems.append("tools differ")
        if gone:
            diff.append(f"- tools no longer offered: {', '.join(gone)}")
        if added:
            diff.append(f"+ tools offered now: {', '.join(added)}")
    if not problems:
        return None
    return "; ".join(problems), "\n".join(diff)


# == what was said: transcripts and their comparison =====================================


@dataclass
class Item:
    """One line of a call as the comparison sees it."""

    kind: str  # caller | agent | tool | end | language | digits | error | supervisor
    text: str
    key: tuple[Any, ...] = ()
    server_side: bool = False  # only known from the server's own recording


def _handoff(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"raw": raw}
    if not isinstance(data, dict):
        return {"raw": raw}
    data.pop("callSid", None)  # differs on purpose with --url
    return data


def parse_arguments(raw: Any) -> Any:
    try:
        return orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        return raw


def transcript(
    events: Iterable[Mapping[str, Any]], mask: Callable[[str], str] = lambda s: s
) -> list[Item]:
    """The call as items in order: caller actions, agent talk cycles, tools, the console's
    supervisor commands, the end."""
    items: list[Item] = []
    cycle: list[str] | None = None
    cycle_at = 0
    tools: dict[str, int] = {}

    def close_cycle() -> None:
        nonlocal cycle
        if cycle is not None:
            text = "".join(cycle)
            if text:
                items[cycle_at] = Item("agent", text, ("agent", mask(text)))
            else:
                items[cycle_at] = Item("skip", "")
            cycle = None

    for event in events:
        kind, data = event.get("kind"), event.get("data") or {}
        if kind in ("frame_in", "frame_in_invalid"):
            frame = parse_frame(data.get("raw"))
            ftype = frame.get("type")
            if ftype == "prompt" and frame.get("last", True):
                items.append(Item("caller", str(frame.get("voicePrompt", ""))))
            elif ftype == "dtmf":
                items.append(Item("caller", f"[presses {frame.get('digit')}]"))
            elif ftype == "interrupt":
                items.append(
                    Item(
                        "caller",
                        f"[interrupts; heard {quoted(frame.get('utteranceUntilInterrupt'))}]",
                    )
                )
        elif kind == "frame_out":
            frame = parse_frame(data.get("raw"))
            ftype = frame.get("type")
            if ftype == "text":
                if cycle is None:
                    cycle, cycle_at = [], len(items)
                    items.append(Item("skip", ""))
                cycle.append(str(frame.get("token") or ""))
                if frame.get("last"):
                    close_cycle()
            elif ftype == "end":
                handoff = _handoff(frame.get("handoffData"))
                reason = handoff.get("reasonCode", "end")
                items.append(
                    Item(
                        "end",
                        f"{reason} {orjson.dumps(handoff).decode()}",
                        ("end", mask(orjson.dumps(handoff, option=orjson.OPT_SORT_KEYS).decode())),
                    )
                )
            elif ftype == "language":
                code = frame.get("ttsLanguage") or frame.get("transcriptionLanguage")
                items.append(Item("language", f"switches to {code}", ("language", code)))
            elif ftype == "sendDigits":
                items.append(
                    Item(
                        "digits", f"presses {frame.get('digits')}", ("digits", frame.get("digits"))
                    )
                )
        elif kind == "tool_call":
            tools[str(data.get("id"))] = len(items)
            name, arguments = data.get("name"), str(data.get("arguments"))
            items.append(
                Item(
                    "tool",
                    f"{name}({arguments}) → (no result)",
                    ("tool", name, mask(arguments), None),
                    True,
                )
            )
        elif kind == "tool_result":
            at = tools.get(str(data.get("id")))
            content = str(data.get("content") or "")
            if at is not None:
                old = items[at]
                name, arguments = old.key[1], old.key[2]
                items[at] = Item(
                    "tool",
                    old.text.rsplit(" → ", 1)[0] + f" → {quoted(content)}",
                    ("tool", name, arguments, mask(content)),
                    True,
                )
        elif kind == "llm_error":
            error = str(data.get("error") or "")
            items.append(Item("error", f"LLM failed: {shorten(error, 160)}", ("error",), True))
        elif kind == "supervisor":
            command, argument = str(data.get("kind") or ""), str(data.get("argument") or "")
            text = f"{command} {quoted(argument)}" if argument else command
            items.append(Item("supervisor", text, ("supervisor", command, mask(argument)), True))
    close_cycle()
    return [item for item in items if item.kind != "skip"]


def quoted(text: Any) -> str:
    return '"' + str(text or "").replace("\n", " ") + '"'


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Line:
    mark: str  # " " caller, "=" same, "-" recorded only, "+" now only
    kind: str
    text: str


def _segments(items: list[Item]) -> list[tuple[Item | None, list[Item]]]:
    """The items split at each caller action: (the caller's item, what followed it)."""
    segments: list[tuple[Item | None, list[Item]]] = [(None, [])]
    for item in items:
        if item.kind == "caller":
            segments.append((item, []))
        else:
            segments[-1][1].append(item)
    return segments


def _switches_in_place(items: list[Item]) -> list[Item]:
    """The items with each language switch right after the ``switch_language`` call that made
    it. The frame goes out once the tool is done, and it may reach the record after the
    model's next tool call or a failure (in cassette mode the answers come at once): when,
    within a turn, says nothing about the agent. A switch is moved back only past tool calls,
    failures and other switches, so one that went missing or changed language still shows."""
    out: list[Item] = []
    paired: set[int] = set()  # ids of the switch_language calls already given their frame
    for item in items:
        if item.kind != "language":
            out.append(item)
            continue
        code = str(item.key[1]) if len(item.key) > 1 else ""
        at = len(out)
        candidates: list[int] = []
        while at > 0 and out[at - 1].kind in ("tool", "error", "language"):
            at -= 1
            before = out[at]
            switch = before.kind == "tool" and before.key[1:2] == ("switch_language",)
            if switch and id(before) not in paired:
                candidates.append(at)
        if not candidates:
            out.append(item)
            continue
        # The earliest unpaired call naming this language, else the earliest unpaired one.
        candidates.reverse()
        chosen = next((c for c in candidates if code and code in out[c].text), candidates[0])
        paired.add(id(out[chosen]))
        out.insert(chosen + 1, item)
    return out


def compare_transcripts(
    recorded: list[Item], now: list[Item], *, server_side: bool
) -> tuple[list[Line], list[tuple[Item | None, Item | None]]]:
    """A turn-by-turn listing and the changed pairs (recorded, now).

    Both sides carry the same caller actions (they were sent again), so the agent's items are
    compared caller turn by caller turn. Without the server's own record (``--url``), tool
    calls and LLM failures are left out on both sides.
    """

    def keep(item: Item) -> bool:
        return server_side or not item.server_side

    lines: list[Line] = []
    changes: list[tuple[Item | None, Item | None]] = []
    old_segments, new_segments = _segments(recorded), _segments(now)
    for index in range(max(len(old_segments), len(new_segments))):
        old_caller, old_items = old_segments[index] if index < len(old_segments) else (None, [])
        new_caller, new_items = new_segments[index] if index < len(new_segments) else (None, [])
        if old_caller is not None:
            lines.append(Line(" " if new_caller is not None else "-", "caller", old_caller.text))
        elif new_caller is not None:
            lines.append(Line("+", "caller", new_caller.text))
        old = _switches_in_place([i for i in old_items if keep(i)])
        new = _switches_in_place([i for i in new_items if keep(i)])
        matcher = difflib.SequenceMatcher(
            None, [i.key for i in old], [i.key for i in new], autojunk=False
        )
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                lines.extend(Line("=", i.kind, i.text) for i in old[i1:i2])
                continue
            lines.extend(Line("-", i.kind, i.text) for i in old[i1:i2])
            lines.extend(Line("+", i.kind, i.text) for i in new[j1:j2])
            olds, news = old[i1:i2], new[j1:j2]
            for n in range(max(len(olds), len(news))):
                changes.append(
                    (olds[n] if n < len(olds) else None, news[n] if n < len(news) else None)
                )
    return lines, changes


def history_changes(
    recorded: Recording, replayed: Recording, mask: Callable[[str], str]
) -> list[str]:
    """Differences between the stored conversation histories (what the model will be sent)."""

    def rows(recording: Recording) -> list[str]:
        out = []
        for turn in recording.turns:
            text = f"#{turn['seq']} {turn['role']}"
            if turn.get("tool_name"):
                text += f" {turn['tool_name']}"
            text += f": {quoted(mask(str(turn.get('content') or '')))}"
            if turn.get("interrupted"):
                text += f" (interrupted; heard {quoted(mask(str(turn.get('heard_text') or '')))})"
            if turn.get("superseded"):
                text += " (superseded)"
            out.append(text)
        return out

    old, new = rows(recorded), rows(replayed)
    if old == new:
        return []
    return [
        line
        for line in difflib.unified_diff(old, new, "recorded", "now", n=0, lineterm="")
        if line[:1] in "+-" and line[:3] not in ("---", "+++")
    ]
