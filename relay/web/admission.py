"""Admission and rate limits: what this process takes on, and from whom.

* :class:`CallGate` counts the live ConversationRelay sessions and caps them
  (``RELAY_MAX_CALLS``); above the cap, or while draining, ``/twiml`` answers politely
  (:func:`busy_twiml`: a line, then the agent's person or a goodbye) instead of connecting.
  Signed Twilio webhooks are governed by this cap only, never throttled: a busy hour is
  customers calling.
* :class:`RateLimiter` is a token bucket per client address, for requests that fail the
  signature check (checked first, so a signed webhook is never refused for its address) and
  for the admin API (before any work); over the limit they get 429 with ``Retry-After``,
  which :class:`Tarpit` holds back a little for forgeries.
* :class:`LimitedModel` caps the model requests in flight (``RELAY_MAX_LLM_CONCURRENCY``) and
  measures the wait for a slot.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from relay import metrics
from relay.agents import AgentProfile
from relay.llm.types import ChatModel, ChatRequest, LLMEvent
from relay.protocol import twiml

if TYPE_CHECKING:
    from relay.call.session import CallSession

#: Spoken when the process cannot take the call (over the cap, or shutting down).
BUSY_LINE = "Sorry, all of our lines are busy right now."
BUSY_TO_PERSON = BUSY_LINE + " Please hold while I put you through to the team."
BUSY_NO_PERSON = BUSY_LINE + " Please call back in a few minutes. Goodbye."


class CallGate:
    """The live sessions of this process, and the cap on them.

    A call admitted by ``/twiml`` holds a place (:meth:`reserve`) until its socket arrives
    (:meth:`enter` takes the oldest place) or ``RESERVED_FOR`` seconds pass: calls answered at
    the same moment cannot all slip under the cap before any of their sockets is open.
    """

    #: How long an admitted call's place is kept for its socket (Twilio connects in a second).
    RESERVED_FOR = 15.0

    def __init__(self, max_calls: int | None) -> None:
        self.max_calls = max_calls
        self.live: set[CallSession] = set()  # the sessions with an open socket
        self._reserved: deque[float] = deque()  # when each admitted call's place lapses
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def full(self) -> bool:
        if self.max_calls is None:
            return False
        now = time.monotonic()
        while self._reserved and self._reserved[0] <= now:
            self._reserved.popleft()
        return len(self.live) + len(self._reserved) >= self.max_calls

    def reserve(self) -> None:
        """A call was admitted: keep its place until its socket arrives."""
        if self.max_calls is not None:
            self._reserved.append(time.monotonic() + self.RESERVED_FOR)

    def enter(self, session: CallSession) -> None:
        if self._reserved:
            self._reserved.popleft()
        self.live.add(session)
        self._idle.clear()
        metrics.LIVE_CALLS.inc()

    def leave(self, session: CallSession) -> None:
        if session in self.live:
            self.live.discard(session)
            metrics.LIVE_CALLS.dec()
        if not self.live:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no session is live, at most ``timeout`` seconds. True if idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return not self.live
        return True


def busy_twiml(agent: AgentProfile, called: str | None) -> str:
    """The polite answer when a call cannot be taken: the person, or a goodbye."""
    if agent.person_number:
        return twiml.dial(say=BUSY_TO_PERSON, number=agent.person_number, caller_id=called or None)
    return twiml.say_and_hang_up(BUSY_NO_PERSON)


class RateLimiter:
    """A token bucket per key (the client's address): ``rate`` per second, up to ``burst``.

    At most ``max_keys`` buckets are kept (least recently used dropped), so a flood from many
    addresses costs bounded memory; a dropped bucket starts full again, which errs towards
    letting a stranger through, never towards blocking a caller.
    """

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """Take a token for ``key``: 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def too_many(wait: float, scope: str, tarpit: Tarpit | None = None) -> Response:
    """429 with ``Retry-After``; held back a little first when a ``tarpit`` is given."""
    metrics.RATE_LIMITED.labels(scope).inc()
    retry_after = max(1, math.ceil(wait))
    headers = {"Retry-After": str(retry_after)}
    delay = tarpit.delay(retry_after) if tarpit is not None else 0.0
    if delay > 0 and tarpit is not None:
        return _HeldBack(tarpit, delay, headers)
    return Response(
        "Too many requests\n", status_code=429, media_type="text/plain", headers=headers
    )


class Tarpit:
    """Holds a throttled source's 429 back for up to ``seconds`` (never longer than its
    ``Retry-After``), so a client that waits for each answer, as HTTP/1.1 clients do, can only
    send about one request per ``seconds`` per connection: a flood costs the server a timer per
    request instead of a parse and a signature check many times a second. At most
    ``max_held`` answers are held at once; beyond that they go out at once (bounded memory)."""

    def __init__(self, seconds: float = 1.0, *, max_held: int = 1000) -> None:
        self.seconds = seconds
        self.max_held = max_held
        self.held = 0

    def delay(self, wait: float) -> float:
        if self.held >= self.max_held:
            return 0.0
        return min(self.seconds, wait)


class _HeldBack(Response):
    def __init__(self, tarpit: Tarpit, delay: float, headers: dict[str, str]) -> None:
        super().__init__(
            "Too many requests\n", status_code=429, media_type="text/plain", headers=headers
        )
        self._tarpit, self._delay = tarpit, delay
        tarpit.held += 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(self._delay)
        finally:
            self._tarpit.held -= 1
        await super().__call__(scope, receive, send)


class LimitedModel:
    """A :class:`ChatModel` that lets at most ``limit`` requests stream at once and measures
    the wait for a slot (``relay_model_queue_seconds``). Used only when a cap is set: without
    one the session talks to the model directly, with no extra hop per token."""

    def __init__(self, inner: ChatModel, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)

    @property
    def waiting(self) -> int:
        """Requests queued for a slot now."""
        waiters = getattr(self._slots, "_waiters", None)
        return len(waiters) if waiters else 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        queued = time.perf_counter()
        async with self._slots:
            metrics.MODEL_QUEUE.observe(time.perf_counter() - queued)
            async for event in self.inner.stream(request):
                yield event
