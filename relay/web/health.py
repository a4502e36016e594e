"""``/healthz`` (liveness) and ``/readyz`` (readiness, one entry per dependency).

Liveness says only that the event loop answers: a balancer or an orchestrator restarts a
process that fails it, so it depends on nothing else. Readiness says whether this process
should be sent new calls: the database takes a write and reads it back, the knowledge store
answers (and has warmed up: model, first-start documents, index), the model server answered its last probe, the recorder's backlog is under its limit,
and the process is not draining. The model probe (``GET {base_url}/models``) runs in the
background every ``RELAY_READY_PROBE_SECONDS``, never on the request path: a balancer polling
``/readyz`` every second must not turn into a request a second to a paid API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import structlog
from sqlalchemy import func, insert, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.storage.db import Database
from relay.storage.models import Event

if TYPE_CHECKING:
    from knowledge import AsyncKnowledge
    from relay.call.ports import CallDependencies
    from relay.config import Settings
    from relay.web.drain import Drain

log = structlog.get_logger("relay.web.health")

#: The longest one dependency check may take before it counts as failed.
CHECK_TIMEOUT = 2.0
_PROBE_SID = "relay-readyz-probe"


class _DatabaseCheck(Protocol):
    @property
    def database_check(self) -> RecentCheck: ...


class Runtime(Protocol):
    """What readiness reads from the app's ``Runtime`` (relay.web.app), declared here so that
    this module does not import the app (which imports it)."""

    model_probe: ModelProbe | None

    @property
    def settings(self) -> Settings: ...
    @property
    def deps(self) -> CallDependencies: ...
    @property
    def knowledge(self) -> AsyncKnowledge | None: ...
    @property
    def knowledge_warmed(self) -> asyncio.Event | None: ...
    @property
    def knowledge_tried(self) -> asyncio.Event | None: ...
    @property
    def drain(self) -> Drain | None: ...
    @property
    def ops(self) -> _DatabaseCheck | None: ...


@dataclass
class Check:
    """One dependency's state, as ``/readyz`` shows it. ``shared``: a dependency every process
    of the deployment shares (the database, the knowledge store, the model): when it fails
    they all fail it, so taking this one out of the balancer helps nothing, and taking them
    all out turns a degraded service into none. Its failure makes the process "degraded"
    (still 200), not "not-ready"."""

    ok: bool
    detail: str = ""
    ms: float | None = None
    shared: bool = False

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": self.ok}
        if self.detail:
            body["detail"] = self.detail
        if self.ms is not None:
            body["ms"] = round(self.ms, 1)
        return body


class ModelProbe:
    """Asks the model server for its model list now and then; ``/readyz`` reads the last answer."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        *,
        interval: float = 15.0,
        timeout: float = 2.0,
    ) -> None:
        self._http = http
        self.url = base_url.rstrip("/") + "/models"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.interval = interval
        self.timeout = timeout
        self.last = Check(ok=False, detail="not probed yet")
        self.checked_at: float | None = None

    async def probe(self) -> Check:
        started = time.perf_counter()
        try:
            response = await self._http.get(self.url, headers=self._headers, timeout=self.timeout)
            status = response.status_code
            # Some OpenAI-compatible servers have no model list: answering at all is reachable.
            ok = status == 200 or status in (404, 405)
            detail = "" if status == 200 else f"HTTP {status}"
        except (httpx.HTTPError, OSError) as exc:
            ok, detail = False, type(exc).__name__
        check = Check(ok=ok, detail=detail, ms=(time.perf_counter() - started) * 1000)
        if check.ok != self.last.ok:
            (log.info if check.ok else log.warning)(
                "model_probe_changed", ok=check.ok, detail=detail
            )
        self.last, self.checked_at = check, time.monotonic()
        return check

    def current(self) -> Check:
        """The last answer; a stale one (three intervals without a probe) counts as a failure."""
        if self.checked_at is not None and time.monotonic() - self.checked_at > 3 * self.interval:
            return Check(ok=False, detail="probe stale")
        return self.last

    async def run(self) -> None:
        """Probe every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.probe()


async def check_database(db: Database) -> Check:
    """A write and a read-back in one transaction, rolled back: nothing is left behind."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), db.engine.connect() as conn:
            transaction = await conn.begin()
            try:
                await conn.execute(
                    insert(Event).values(
                        call_sid=_PROBE_SID, session_id=_PROBE_SID, seq=0, t=0.0,
                        at=datetime.now(UTC), kind="readyz", data={},
                    )
                )  # fmt: skip
                count = await conn.scalar(
                    select(func.count()).select_from(Event).where(Event.call_sid == _PROBE_SID)
                )
            finally:
                await transaction.rollback()
        ok = bool(count)
        return Check(ok=ok, detail="" if ok else "write not read back", ms=_since(started))
    except TimeoutError:
        return Check(ok=False, detail="timed out", ms=_since(started))
    except Exception as exc:  # any driver error: the database is not usable
        return Check(ok=False, detail=_short(exc), ms=_since(started))


class RecentCheck:
    """The database check, reused for ``fresh`` seconds: a balancer, an orchestrator and a
    monitor polling ``/readyz`` every second each must not each cost a write transaction."""

    def __init__(self, fresh: float = 1.0) -> None:
        self.fresh = fresh
        self._last: tuple[float, int, Check] | None = None

    async def get(self, db: Database) -> Check:
        now = time.monotonic()
        if self._last is not None:
            at, which, check = self._last
            if which == id(db) and now - at < self.fresh:
                return check
        check = await check_database(db)
        self._last = (now, id(db), check)
        return check


async def check_knowledge(knowledge: Any) -> Check:
    """The knowledge store lists its collections (embedded Chroma or the Chroma server)."""
    started = time.perf_counter()
    try:
        await knowledge.collections(timeout=CHECK_TIMEOUT)
    except Exception as exc:
        return Check(ok=False, detail=_short(exc), ms=_since(started))
    return Check(ok=True, ms=_since(started))


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


async def readiness(runtime: Runtime) -> dict[str, Check]:
    """Every dependency's check for ``runtime`` (the app's Runtime)."""
    settings, deps = runtime.settings, runtime.deps
    checks: dict[str, Check] = {}
    cache = runtime.ops.database_check if runtime.ops is not None else None
    database = cache.get(deps.db) if cache is not None else check_database(deps.db)
    pending: dict[str, Awaitable[Check]] = {"database": database}
    knowledge = runtime.knowledge
    if knowledge is not None:
        pending["knowledge"] = check_knowledge(knowledge)
    results = await asyncio.gather(*pending.values())
    checks.update(zip(pending, results, strict=True))
    checks["database"] = dataclasses.replace(checks["database"], shared=True)
    if knowledge is None:
        checks["knowledge"] = Check(ok=True, detail="disabled")
    elif (warmed := runtime.knowledge_warmed) is not None and not warmed.is_set():
        # Not sent calls before it can ground them: the embedding model, a first start's
        # shipped documents and the search index load in the background (seconds). A store
        # that cannot be reached is retried meanwhile: once the first try has failed, that is
        # the shared store's trouble, not this process's warming up.
        tried = runtime.knowledge_tried
        if tried is None or not tried.is_set() or checks["knowledge"].ok:
            checks["knowledge"] = Check(ok=False, detail="warming up", ms=checks["knowledge"].ms)
        else:
            checks["knowledge"] = dataclasses.replace(checks["knowledge"], shared=True)
    else:
        checks["knowledge"] = dataclasses.replace(checks["knowledge"], shared=True)
    probe: ModelProbe | None = runtime.model_probe
    model = probe.current() if probe is not None else Check(ok=True, detail="in-process")
    checks["model"] = dataclasses.replace(model, shared=True)
    backlog, limit = deps.recorder.pending, settings.recorder_backlog_limit
    checks["recorder"] = Check(
        ok=backlog < limit, detail=f"backlog {backlog} of {limit}", ms=None
    )  # fmt: skip
    drain = runtime.drain
    draining = bool(drain is not None and drain.draining)
    checks["draining"] = Check(ok=not draining, detail="draining" if draining else "")
    return checks


async def healthz(request: Request) -> Response:
    """Liveness: the event loop answers. Depends on nothing else."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness, a JSON entry per dependency: 503 ``not-ready`` when taking this process out
    of the balancer helps (draining, its recorder's backlog, its knowledge warming up at
    start); 200 ``degraded`` when only a shared dependency fails (:attr:`Check.shared`); 200
    ``ready`` when all is well."""
    checks = await readiness(request.app.state.runtime)
    ready = all(check.ok or check.shared for check in checks.values())
    degraded = ready and not all(check.ok for check in checks.values())
    body = {"status": "degraded" if degraded else "ready" if ready else "not-ready"}
    body_checks = {name: check.json() for name, check in checks.items()}
    return JSONResponse({**body, "checks": body_checks}, status_code=200 if ready else 503)


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]


def model_probe(runtime: Runtime) -> ModelProbe:
    """The model probe for ``runtime``'s settings, kept in ``runtime.model_probe``."""
    settings = runtime.settings
    probe = ModelProbe(
        runtime.deps.http,
        settings.llm_base_url,
        settings.openai_api_key,
        interval=settings.ready_probe_seconds,
    )
    runtime.model_probe = probe
    return probe
