"""Token usage and what a call cost, from its recording and an editable price table.

Usage comes from the ``usage`` the model server streamed (relay asks for it with
``stream_options.include_usage``), recorded in each ``llm_response`` event; a response without
it is counted locally (about four characters a token) and flagged ``estimated``. A request the
server never answered (an error before the first token: not complete, no words, no tool call)
is not counted at all, as a provider does not bill it; one cut off after its first words
(relay's filter, a stall) was billed, and is estimated. The price
table (``data/prices.toml``) gives each model's price per million prompt, cached-prompt and
completion tokens, ConversationRelay's price per minute and the price of an SMS segment
(``RELAY_PRICES`` names another file, which must then exist; with no table at all costs are
unknown, never zero)::

    currency = "USD"

    [models."gpt-4o-mini"]
    prompt = 0.15       # per 1M prompt tokens (not counting cached ones)
    cached = 0.075      # per 1M cached prompt tokens
    completion = 0.60   # per 1M completion tokens

    [conversation_relay]
    per_minute = 0.07   # each session, rounded up to the minute

    [sms]
    per_segment = 0.0079
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson

from relay.errors import ConfigError

#: Local estimate when a server sent no usage: characters per token.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class ModelPrice:
    prompt: float = 0.0  # per 1M tokens
    cached: float | None = None  # per 1M cached prompt tokens (None: as prompt)
    completion: float = 0.0


@dataclass(frozen=True)
class PriceTable:
    """Prices per unit, in ``currency``. ``found`` is False when there was no price table at
    all: every cost is then unknown (:func:`cost_of` says so), not zero."""

    currency: str = "USD"
    models: Mapping[str, ModelPrice] = field(default_factory=dict)
    relay_per_minute: float = 0.0
    sms_per_segment: float = 0.0
    found: bool = True

    def model(self, name: str) -> ModelPrice | None:
        """The price of ``name``; a dated or provider-prefixed name matches its base name
        (``openai/gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``)."""
        if name in self.models:
            return self.models[name]
        bare = name.rsplit("/", 1)[-1]
        best = max((m for m in self.models if bare.startswith(m)), key=len, default=None)
        return self.models[best] if best is not None else self.models.get("default")


def load_prices(path: Path, *, setting: str | None = None) -> PriceTable:
    """Read the price table at ``path``.

    ``setting`` is the variable that named the file (``RELAY_PRICES``), None for the default
    place (``prices.toml`` in the data directory). A file a setting names must exist: a typo
    raises a ConfigError naming the variable and the path, so ``relay serve`` stops at start.
    No file at the default place is no price table (``found=False``): costs are unknown, every
    model is listed as unpriced. A file that cannot be read as a price table raises a
    ConfigError naming it.
    """
    if not path.exists():
        if setting is not None:
            raise ConfigError(f"{setting}={path}: no such price table")
        return PriceTable(found=False)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        models = {
            str(name): ModelPrice(
                prompt=float(entry.get("prompt", 0.0)),
                cached=float(entry["cached"]) if "cached" in entry else None,
                completion=float(entry.get("completion", 0.0)),
            )
            for name, entry in (raw.get("models") or {}).items()
        }
        return PriceTable(
            currency=str(raw.get("currency", "USD")),
            models=models,
            relay_per_minute=float((raw.get("conversation_relay") or {}).get("per_minute", 0.0)),
            sms_per_segment=float((raw.get("sms") or {}).get("per_segment", 0.0)),
        )
    except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: invalid price table: {exc}") from exc


# == usage ===================================================================================


#: The event kinds :func:`usage_of` reads.
EVENT_KINDS = frozenset({"llm_request", "llm_response"})


def usage_of(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Tokens per model over a call's ``llm_response`` events.

    ``{"models": {model: {"requests", "prompt_tokens", "cached_tokens", "completion_tokens",
    "estimated_requests"}}, "requests", "prompt_tokens", "cached_tokens", "completion_tokens",
    "estimated"}``.
    """
    models: dict[str, dict[str, int]] = {}
    request_body: Mapping[str, Any] = {}
    for event in events:
        kind, data = event.get("kind"), event.get("data") or {}
        if kind == "llm_request":
            body = data.get("body")
            request_body = body if isinstance(body, Mapping) else {}
            continue
        if kind != "llm_response":
            continue
        if not _answered(data):
            continue
        model = str(data.get("model") or request_body.get("model") or "unknown")
        entry = models.setdefault(
            model,
            {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0,
             "estimated_requests": 0},
        )  # fmt: skip
        prompt, cached, completion, estimated = _tokens(data, request_body)
        entry["requests"] += 1
        entry["prompt_tokens"] += prompt
        entry["cached_tokens"] += cached
        entry["completion_tokens"] += completion
        entry["estimated_requests"] += int(estimated)
    return {
        "models": models,
        "requests": sum(m["requests"] for m in models.values()),
        "prompt_tokens": sum(m["prompt_tokens"] for m in models.values()),
        "cached_tokens": sum(m["cached_tokens"] for m in models.values()),
        "completion_tokens": sum(m["completion_tokens"] for m in models.values()),
        "estimated": any(m["estimated_requests"] for m in models.values()),
    }


def _has_usage(usage: Any) -> bool:
    return isinstance(usage, Mapping) and ("prompt_tokens" in usage or "completion_tokens" in usage)


def _answered(data: Mapping[str, Any]) -> bool:
    """Whether the server answered the request at all: it finished, or streamed words or a tool
    call before the stream ended or relay stopped it, or reported usage. A request that failed
    before any token (an HTTP 500 on every attempt) was not billed. A recording without
    ``complete`` (made by hand) counts as answered."""
    return bool(
        data.get("complete", True)
        or data.get("pieces")
        or data.get("tool_calls")
        or _has_usage(data.get("usage"))
    )


def _tokens(data: Mapping[str, Any], body: Mapping[str, Any]) -> tuple[int, int, int, bool]:
    usage = data.get("usage")
    if isinstance(usage, Mapping) and _has_usage(usage):
        details = usage.get("prompt_tokens_details")
        cached = usage.get("cached_tokens")
        if cached is None and isinstance(details, Mapping):
            cached = details.get("cached_tokens")
        return (
            _int(usage.get("prompt_tokens")),
            _int(cached),
            _int(usage.get("completion_tokens")),
            bool(usage.get("estimated")),
        )
    # Answered without usage (a server that sends none, or a reply cut off before its usage
    # chunk): count locally.
    prompt_chars = len(orjson.dumps(body.get("messages") or []))
    answer = "".join(str(p) for p in data.get("pieces") or [])
    answer += orjson.dumps(data.get("tool_calls") or []).decode() if data.get("tool_calls") else ""
    return (
        math.ceil(prompt_chars / CHARS_PER_TOKEN),
        0,
        math.ceil(len(answer) / CHARS_PER_TOKEN),
        True,
    )


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def add_usage(total: dict[str, Any], usage: Mapping[str, Any]) -> dict[str, Any]:
    """Add one call's usage into ``total`` (same shape as :func:`usage_of`), per model."""
    for model, entry in (usage.get("models") or {}).items():
        into = total.setdefault("models", {}).setdefault(model, {})
        for key, value in entry.items():
            into[key] = into.get(key, 0) + value
    for key in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens"):
        total[key] = total.get(key, 0) + int(usage.get(key) or 0)
    total["estimated"] = bool(total.get("estimated")) or bool(usage.get("estimated"))
    return total


# == cost ====================================================================================


#: The GSM 7-bit default alphabet of 3GPP TS 23.038 (formerly GSM 03.38), section 6.2.1: one
#: septet a character. In code order, 0x00 to 0x7F, a row of 16 a line; 0x1B is the escape to
#: the extension table, not a character (left out below).
_GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
) - {"\x1b"}
#: Its extension table (section 6.2.1.1): each character is the escape and one more septet.
_GSM7_EXTENSION: Final = frozenset("\f^{}\\[~]|€")


def sms_segments(body: str) -> int:
    """SMS segments a text takes.

    In GSM-7 (every character in the default alphabet or its extension table, which takes two
    septets a character) 160 septets in one segment, 153 a segment when split; otherwise UCS-2,
    70 UTF-16 code units (an emoji is two) in one, 67 a segment. A split never cuts an escape
    pair or a surrogate pair: such a character starts the next segment.
    """
    if not body:
        return 1
    if all(c in _GSM7_BASIC or c in _GSM7_EXTENSION for c in body):
        sizes = [2 if c in _GSM7_EXTENSION else 1 for c in body]
        single, multi = 160, 153
    else:
        sizes = [2 if ord(c) > 0xFFFF else 1 for c in body]
        single, multi = 70, 67
    if sum(sizes) <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > multi:
            segments, used = segments + 1, 0
        used += size
    return segments


def session_minutes(sessions: Sequence[Mapping[str, Any]]) -> int:
    """Billable ConversationRelay minutes: each session rounded up to the minute."""
    minutes = 0
    for session in sessions:
        started, ended = _when(session.get("started_at")), _when(session.get("ended_at"))
        if started is None or ended is None:
            continue
        seconds = max(0.0, (ended - started).total_seconds())
        minutes += max(1, math.ceil(seconds / 60))
    return minutes


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def cost_of(
    prices: PriceTable,
    usage: Mapping[str, Any],
    *,
    minutes: int = 0,
    sms_bodies: Sequence[str] = (),
) -> dict[str, Any]:
    """What a call cost: the model per model, ConversationRelay minutes, SMS segments. Models
    without a price are listed in ``unpriced_models``; without a price table at all
    (``prices.found`` False) every model is, and ``no_price_table`` is True."""
    by_model: dict[str, float] = {}
    unpriced: list[str] = []
    for model, entry in (usage.get("models") or {}).items():
        price = prices.model(model) if prices.found else None
        if price is None:
            unpriced.append(model)
            by_model[model] = 0.0
            continue
        cached = int(entry.get("cached_tokens", 0))
        fresh = max(0, int(entry.get("prompt_tokens", 0)) - cached)
        cached_price = price.prompt if price.cached is None else price.cached
        by_model[model] = (
            fresh * price.prompt
            + cached * cached_price
            + int(entry.get("completion_tokens", 0)) * price.completion
        ) / 1_000_000
    segments = sum(sms_segments(body) for body in sms_bodies)
    llm = sum(by_model.values())
    relay = minutes * prices.relay_per_minute
    sms = segments * prices.sms_per_segment
    unknown = {} if prices.found else {"no_price_table": True}
    return {
        "currency": prices.currency,
        "llm": _round(llm),
        "llm_by_model": {model: _round(value) for model, value in by_model.items()},
        "conversation_relay": _round(relay),
        "minutes": minutes,
        "sms": _round(sms),
        "sms_segments": segments,
        "total": _round(llm + relay + sms),
        "unpriced_models": unpriced,
        **unknown,
    }


def _round(value: float) -> float:
    return round(value, 8)


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Costs over many calls: per call, per outcome, per booking, per agent.

    ``rows`` are analyses (``agent``, ``outcomes``, ``cost``, ``usage``). The cost per outcome
    is the average cost of the calls that had it; the cost per booking is the cost of every
    call divided by the bookings made. ``unpriced_calls`` counts the calls whose cost is
    understated: a model without a price, or no price table at all.
    """
    calls = 0
    unpriced_calls = 0
    total = 0.0
    currency = "USD"
    outcomes: dict[str, dict[str, float]] = {}
    agents: dict[str, dict[str, Any]] = {}
    bookings = 0
    for row in rows:
        cost = row.get("cost") or {}
        value = float(cost.get("total") or 0.0)
        currency = str(cost.get("currency") or currency)
        calls += 1
        total += value
        unpriced_calls += bool(cost.get("no_price_table") or cost.get("unpriced_models"))
        for outcome in row.get("outcomes") or []:
            entry = outcomes.setdefault(outcome, {"calls": 0, "cost": 0.0})
            entry["calls"] += 1
            entry["cost"] += value
        if "booked" in (row.get("outcomes") or []):
            bookings += 1
        agent = agents.setdefault(str(row.get("agent")), {"calls": 0, "cost": 0.0, "usage": {}})
        agent["calls"] += 1
        agent["cost"] += value
        add_usage(agent["usage"], row.get("usage") or {})
    return {
        "currency": currency,
        "calls": calls,
        "total": _round(total),
        "per_call": _round(total / calls) if calls else None,
        "per_booking": _round(total / bookings) if bookings else None,
        "bookings": bookings,
        "unpriced_calls": unpriced_calls,
        "per_outcome": {
            name: {"calls": int(e["calls"]), "per_call": _round(e["cost"] / e["calls"])}
            for name, e in sorted(outcomes.items())
        },
        "agents": {name: {**e, "cost": _round(e["cost"])} for name, e in sorted(agents.items())},
    }
