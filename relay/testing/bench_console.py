"""``relay bench --console N`` and ``--upload FILE``: the console in use while the calls run.

Each viewer signs in as an owner, with the admin token the bench gives the server it starts,
and does what the console's live pages do in a browser during the measured phase:

* refreshes the list of calls in progress (``GET /console/api/live``) once a second, as
  ``/console/live`` does;
* follows one call's transcript as it is said (``GET /console/api/calls/{CallSid}/stream``,
  Server-Sent Events), as a live call's page does.

With ``--upload FILE``, an editor (signed in the same way) uploads a document to the bench
agent's knowledge through the console's upload form, :data:`UPLOAD_AFTER` seconds into the
measured phase, as an editor changing documents while calls run would; every worker then
rebuilds its index.

A run with viewers or an upload beside one without shows what they cost the callers (the usual
figures). The viewers' own figures show what the owner sees: how long each refresh took, and
how long after a caller spoke their words reached the followed transcript.

The viewers run in the load generator's event loop, so their times include its wake-up delays
under load: read them as what a busy browser would see, not as the server's own time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from relay.testing.bench_serving import percentile
from relay.web.console.auth import CSRF_HEADER

_CSRF = re.compile(rb'name="csrf" value="([^"]+)"')
#: How often a viewer refreshes the live list (the live page's ``setInterval``).
REFRESH_SECONDS = 1.0
#: How long the viewers may go on after the measured phase for the last words to show.
SETTLE_SECONDS = 5.0
#: When the editor's upload starts, in seconds from the start of the measured phase.
UPLOAD_AFTER = 1.0


@dataclass
class ConsoleFigures:
    """What the viewers did and saw during the measured phase (times in milliseconds)."""

    viewers: int
    refreshes: int = 0
    refresh_p50_ms: float | None = None
    refresh_p95_ms: float | None = None
    refresh_p99_ms: float | None = None
    #: The most calls one refresh listed (the page lists 200 at most).
    listed_max: int = 0
    #: Lines the followed transcripts streamed (one per word sent to a caller, one per prompt…).
    lines: int = 0
    #: From a caller's words sent to the server to the same words on a followed transcript.
    words_p50_ms: float | None = None
    words_p99_ms: float | None = None
    words_seen: int = 0
    errors: list[str] = field(default_factory=list)


class Followed:
    """The final prompts sent on one call, with when: what a viewer matches its lines to."""

    def __init__(self, call_sid: str) -> None:
        self.call_sid = call_sid
        self.sent: list[tuple[str, float]] = []

    def said(self, prompt: str, at: float) -> None:
        self.sent.append((prompt, at))

    def claim(self, text: str, since: float) -> float | None:
        """When ``text`` was sent (the earliest such prompt not yet claimed), if after
        ``since``; None for words said before the viewer was watching, or never sent."""
        for index, (prompt, at) in enumerate(self.sent):
            if prompt == text:
                del self.sent[index]
                return at if at >= since else None
        return None


class _SignedIn:
    """An httpx client signed in to the console with the admin token (an owner)."""

    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120.0, connect=5.0))
        self._token = token
        self.csrf = ""

    async def sign_in(self) -> None:
        page = await self.http.get("/console/sign-in")
        found = _CSRF.search(page.content)
        if page.status_code != 200 or found is None:
            raise RuntimeError(f"the console's sign-in page answered {page.status_code}")
        form = {"csrf": found.group(1).decode(), "next": "/console", "token": self._token}
        response = await self.http.post("/console/sign-in", data=form)
        if response.status_code != 303:
            raise RuntimeError(f"signing in to the console answered {response.status_code}")
        landing = await self.http.get(response.headers["location"])
        found = _CSRF.search(landing.content)
        self.csrf = found.group(1).decode() if found else ""

    async def aclose(self) -> None:
        await self.http.aclose()


class Viewer(_SignedIn):
    """One signed-in owner: the live list once a second, and one call's transcript."""

    def __init__(self, base: str, token: str, followed: Followed | None) -> None:
        super().__init__(base, token)
        self.followed = followed
        self.refresh_ms: list[float] = []
        self.words_ms: list[float] = []
        self.listed_max = 0
        self.lines = 0
        self.errors: list[str] = []

    async def watch(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._refresh(stop))]
        if self.followed is not None:
            tasks.append(asyncio.create_task(self._follow(self.followed)))
        await stop.wait()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh(self, stop: asyncio.Event) -> None:
        due = time.perf_counter()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = await self.http.get("/console/api/live")
                took = time.perf_counter() - started
                response.raise_for_status()
                listed = len(orjson.loads(response.content)["calls"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                self.errors.append(f"live list: {type(exc).__name__}: {exc}"[:200])
            else:
                self.refresh_ms.append(took * 1000)
                self.listed_max = max(self.listed_max, listed)
            due += REFRESH_SECONDS
            await asyncio.sleep(max(0.0, due - time.perf_counter()))

    async def _follow(self, followed: Followed) -> None:
        path = f"/console/api/calls/{followed.call_sid}/stream"
        try:
            async with self.http.stream("GET", path, timeout=None) as response:
                if response.status_code != 200:
                    self.errors.append(f"transcript stream answered {response.status_code}")
                    return
                since = time.perf_counter()
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    arrived = time.perf_counter()
                    shown = orjson.loads(line[6:])
                    if not isinstance(shown, dict) or "type" not in shown:
                        continue
                    self.lines += 1
                    if shown["type"] == "caller":
                        sent = followed.claim(str(shown.get("text", "")), since)
                        if sent is not None:
                            self.words_ms.append((arrived - sent) * 1000)
        except (httpx.HTTPError, ValueError) as exc:
            self.errors.append(f"transcript stream: {type(exc).__name__}: {exc}"[:200])


class Console:
    """A viewer of a started server for each of ``followed``, following that call.
    :meth:`start` signs them in and sets them watching; :meth:`stop` ends the watch and gathers
    the figures."""

    def __init__(self, base: str, token: str, followed: Sequence[Followed]) -> None:
        self.viewers = [Viewer(base, token, one) for one in followed]
        self._stop = asyncio.Event()
        self._watching: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await asyncio.gather(*(viewer.sign_in() for viewer in self.viewers))
        self._watching = [asyncio.create_task(v.watch(self._stop)) for v in self.viewers]

    async def stop(self, settle: float = SETTLE_SECONDS) -> ConsoleFigures:
        """End the watch once every followed transcript has shown the words said on its call
        (or after ``settle`` seconds: the last turns' lines arrive after the measured phase,
        one poll and one recorder write later), and gather the figures."""
        deadline = time.perf_counter() + settle
        while any(v.followed and v.followed.sent for v in self.viewers):
            if time.perf_counter() >= deadline:
                break
            await asyncio.sleep(0.05)
        self._stop.set()
        await asyncio.gather(*self._watching)
        return figures(self.viewers)

    async def aclose(self) -> None:
        """End the watch if it still runs (the run failed), and close the viewers' clients."""
        self._stop.set()
        for task in self._watching:
            task.cancel()
        for viewer in self.viewers:
            await viewer.aclose()


class Editor(_SignedIn):
    """An editor who uploads one document through the console's knowledge page."""

    async def upload(self, name: str, data: bytes, agent: str, after: float) -> dict[str, Any]:
        """Wait ``after`` seconds, upload ``data`` as file ``name`` for ``agent``'s knowledge,
        and say what the console answered and how long the editor waited for it."""
        await asyncio.sleep(after)
        started = time.perf_counter()
        figures: dict[str, Any] = {"file": name, "bytes": len(data)}
        try:
            response = await self.http.post(
                "/console/knowledge/upload",
                data={"agent": agent},
                files={"files": (name, data)},
                headers={CSRF_HEADER: self.csrf},
            )
            figures["seconds"] = round(time.perf_counter() - started, 3)
            response.raise_for_status()
            [result] = orjson.loads(response.content)["results"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            figures.update(status="failed", chunks=0, error=f"{type(exc).__name__}: {exc}"[:200])
            return figures
        figures.update(
            status=result.get("status"), chunks=result.get("chunks"), error=result.get("error")
        )
        return figures


def format_upload(figures: dict[str, Any]) -> str:
    """The report's ``upload`` line."""
    line = (
        f"upload (an editor, {UPLOAD_AFTER:g} s into the measured phase): {figures['file']} "
        f"({figures['bytes']} bytes): {figures['status']}, {figures['chunks']} chunks"
    )
    if "seconds" in figures:
        line += f", the console answered after {figures['seconds']} s"
    if figures.get("index_rebuilds") is not None:
        line += f"; index rebuilds in the workers: {figures['index_rebuilds']}"
    if figures.get("error"):
        line += f"; error: {figures['error']}"
    return line


def _at(ordered: Sequence[float], q: float) -> float | None:
    return round(percentile(ordered, q), 3) if ordered else None


def figures(viewers: Sequence[Viewer]) -> ConsoleFigures:
    refreshes = sorted(ms for v in viewers for ms in v.refresh_ms)
    words = sorted(ms for v in viewers for ms in v.words_ms)
    return ConsoleFigures(
        viewers=len(viewers),
        refreshes=len(refreshes),
        refresh_p50_ms=_at(refreshes, 50),
        refresh_p95_ms=_at(refreshes, 95),
        refresh_p99_ms=_at(refreshes, 99),
        listed_max=max((v.listed_max for v in viewers), default=0),
        lines=sum(v.lines for v in viewers),
        words_p50_ms=_at(words, 50),
        words_p99_ms=_at(words, 99),
        words_seen=len(words),
        errors=[error for v in viewers for error in v.errors][:10],
    )


def format_figures(figures: dict[str, Any]) -> str:
    """The report's ``console`` line."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    line = (
        f"console ({figures['viewers']} owner(s) watching): {figures['refreshes']} live-list "
        f"refreshes, p50 / p95 / p99 {ms(figures['refresh_p50_ms'])} / "
        f"{ms(figures['refresh_p95_ms'])} / {ms(figures['refresh_p99_ms'])} ms, up to "
        f"{figures['listed_max']} calls listed; {figures['lines']} transcript lines streamed; "
        f"a caller's words on screen p50 / p99 {ms(figures['words_p50_ms'])} / "
        f"{ms(figures['words_p99_ms'])} ms after they were sent ({figures['words_seen']})"
    )
    if figures["errors"]:
        line += f"; {len(figures['errors'])} error(s): {figures['errors'][0]}"
    return line
