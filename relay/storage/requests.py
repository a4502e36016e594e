"""How ``llm_request`` events store the request body: in full once, then as a delta.

Every LLM request of a session carries the whole conversation so far, so storing each body in
full costs O(history) per turn to copy, serialise and write, O(history²) per call in the
database. :class:`RequestLog` (one per session) stores the first body in full and each later
one as the difference from the session's previous request:

``{"body": {...}}``
    the whole body, as before (the first request of a session, and every request in files
    and imported recordings).
``{"delta": {"base": SEQ, "messages": [...], "body": {...}, "keys": [...]}}``
    ``base`` is the event ``seq`` of the session's previous ``llm_request``. ``messages``
    lists the messages in order, each either a message object (new or changed since the base)
    or ``[start, stop]``: the base's messages ``start`` to ``stop - 1``. ``body`` holds the
    other top-level fields whose values differ from the base's (absent when none do), ``keys``
    the body's top-level keys in order when they differ from the base's (absent otherwise).

Readers never see a delta: :func:`expand_requests` turns the events of a call back into full
bodies, and the repository and :func:`relay.recordings.format.load_call` apply it, so exported files
(format version 1), replay and everything else read ``{"body": {...}}`` as they always did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: How far ahead in the previous request a changed or new message is looked for.
_WINDOW = 8


class RequestLog:
    """The ``data`` of one session's ``llm_request`` events, each after the first a delta."""

    __slots__ = ("_base", "_fields", "_keys", "_messages", "_pending")

    def __init__(self) -> None:
        self._base: int | None = None  # event seq of the previous request
        self._keys: list[str] = []
        self._fields: dict[str, Any] = {}
        # Frozen copies of the previous request's messages (the history dicts change later).
        self._messages: list[dict[str, Any]] = []
        self._pending: tuple[list[str], dict[str, Any], list[dict[str, Any]]] | None = None

    def record(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The event data for ``body``; call :meth:`stored` with the event's seq next."""
        keys = list(body)
        fields = {k: v for k, v in body.items() if k != "messages"}
        messages: Sequence[dict[str, Any]] = body.get("messages") or []
        if self._base is None:
            snapshot = [{**m} for m in messages]
            self._pending = (keys, fields, snapshot)
            return {"body": {k: snapshot if k == "messages" else v for k, v in body.items()}}
        items, snapshot = _diff(self._messages, messages)
        delta: dict[str, Any] = {"base": self._base, "messages": items}
        previous = self._fields
        changed = {
            k: v
            for k, v in fields.items()
            if k not in previous or (previous[k] is not v and previous[k] != v)
        }
        if changed:
            delta["body"] = changed
        if keys != self._keys:
            delta["keys"] = keys
        self._pending = (keys, fields, snapshot)
        return {"delta": delta}

    def stored(self, seq: int) -> None:
        """The data :meth:`record` returned went out as the event numbered ``seq``."""
        if self._pending is not None:
            self._keys, self._fields, self._messages = self._pending
            self._pending = None
            self._base = seq


def _diff(
    previous: list[dict[str, Any]], current: Sequence[dict[str, Any]]
) -> tuple[list[Any], list[dict[str, Any]]]:
    """``current`` as runs of ``previous`` and new messages; and its frozen copy.

    Runs are found with list slice comparisons (C loops), so the work in Python is per run and
    per changed message, not per message; unchanged messages are not copied again.
    """
    items: list[Any] = []
    snapshot: list[dict[str, Any]] = []
    current = current if isinstance(current, list) else list(current)
    i, j, n, m = 0, 0, len(previous), len(current)
    while i < m:
        message = current[i]
        k = -1
        if j < n:
            if message == previous[j]:
                k = j
            else:  # a changed message, or one left out: look a little further
                for x in range(j + 1, min(n, j + _WINDOW)):
                    if message == previous[x]:
                        k = x
                        break
        if k < 0:
            copy = {**message}
            items.append(copy)
            snapshot.append(copy)
            i += 1
            continue
        length = _run(previous, k, current, i)
        items.append([k, k + length])
        snapshot += previous[k : k + length]
        i += length
        j = k + length
    return items, snapshot


def _run(previous: list[Any], k: int, current: list[Any], i: int) -> int:
    """How many messages from ``current[i]`` equal those from ``previous[k]`` (at least 1)."""
    limit = min(len(previous) - k, len(current) - i)
    if current[i : i + limit] == previous[k : k + limit]:
        return limit
    done, step = 1, 8
    while True:
        end = min(done + step, limit)
        if current[i + done : i + end] == previous[k + done : k + end]:
            done, step = end, step * 2
            continue
        while current[i + done] == previous[k + done]:
            done += 1
        return done


# == reading ==================================================================================


def expand_requests(events: Iterable[Any]) -> None:
    """Give every ``llm_request`` delta among ``events`` its full ``body``, in place.

    ``events`` are ``Event`` rows or event dicts (``session_id``, ``seq``, ``kind``, ``data``),
    in the order they were stored. A delta whose base is missing keeps its ``delta`` (readers
    see no ``body``) rather than being guessed. Reconstructed bodies share the message objects
    of their base: treat them as read-only.
    """
    bodies: dict[tuple[Any, Any], dict[str, Any]] = {}
    for event in events:
        get = event.get if isinstance(event, Mapping) else lambda name, e=event: getattr(e, name)
        if get("kind") != "llm_request":
            continue
        data = get("data")
        if not isinstance(data, Mapping):
            continue
        if isinstance(data.get("body"), dict):
            bodies[(get("session_id"), get("seq"))] = data["body"]
            continue
        delta = data.get("delta")
        if not isinstance(delta, Mapping):
            continue
        base = bodies.get((get("session_id"), delta.get("base")))
        if base is None:
            continue
        body = _apply(base, delta)
        if body is None:
            continue
        bodies[(get("session_id"), get("seq"))] = body
        expanded = {k: v for k, v in data.items() if k != "delta"}
        expanded["body"] = body
        if isinstance(event, dict):
            event["data"] = expanded
        else:
            event.data = expanded


def _apply(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any] | None:
    previous = base.get("messages") or []
    messages: list[Any] = []
    for item in delta.get("messages") or []:
        if isinstance(item, list):
            start, stop = item
            if not 0 <= start <= stop <= len(previous):
                return None
            messages += previous[start:stop]
        else:
            messages.append(item)
    changed = delta.get("body") or {}
    keys = delta.get("keys") or list(base)
    body: dict[str, Any] = {}
    for key in keys:
        if key == "messages":
            body[key] = messages
        elif key in changed:
            body[key] = changed[key]
        elif key in base:
            body[key] = base[key]
        else:
            return None
    return body
