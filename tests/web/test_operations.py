"""Running relay for real: /healthz and /readyz, Prometheus /metrics, the call cap and its polite
answer, rate limits on forged webhooks and the admin API, the model concurrency cap, and the
drain (started in-process here; tests/web/test_drain_signal.py sends a real SIGTERM)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.storage import repository
from relay.storage.db import Database
from relay.testing import ScriptedLLM, Text
from relay.web import drain as drain_
from relay.web.admission import BUSY_NO_PERSON, BUSY_TO_PERSON, RateLimiter

PERSON = "+61390001299"
WAIT = 10.0  # the longest a test waits for the server to get somewhere
SERVICES = (
    "We move upright and grand pianos across Melbourne and regional Victoria, store them in a "
    "climate-controlled warehouse, and tune them once they arrive."
)


def twiml_form(call_sid: str = "CA" + "1" * 32, **fields: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "From": "+61412345678",
        "To": "+61390001234", "Direction": "inbound", "CallStatus": "ringing",
        "ApiVersion": "2010-04-01", **fields,
    }  # fmt: skip


async def scrape(
    relay: Any, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by Prometheus' own parser: {(name, labels): value}."""
    response = await relay.http.get(relay.base_url + "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the server to get somewhere (a limit, never an expectation)."""
    async with asyncio.timeout(WAIT):
        while not condition():  # noqa: ASYNC110 (the server's state, no event to wait on)
            await asyncio.sleep(0.01)


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def drain_frames(call: Any) -> list[dict[str, Any]]:
    """Frames up to and including the next ``last: true`` text frame."""
    frames = []
    while True:
        frame = await call.next_frame()
        assert frame is not None, frames
        frames.append(frame)
        if frame["type"] == "text" and frame["last"]:
            return frames


# -- health ------------------------------------------------------------------------------------


async def test_readyz_lists_every_dependency_and_follows_failures_and_recovery(
    start_relay: Any,
) -> None:
    async with start_relay() as relay:
        runtime = relay.runtime
        live = await relay.http.get(relay.base_url + "/healthz")
        ready = await relay.http.get(relay.base_url + "/readyz")

        probe = runtime.model_probe
        good_url = probe.url
        probe.url = "http://127.0.0.1:9/v1/models"  # nothing listens on the discard port
        await probe.probe()  # what the background loop does every RELAY_READY_PROBE_SECONDS
        model_down = await relay.http.get(relay.base_url + "/readyz")
        probe.url = good_url
        await probe.probe()

        good_db = runtime.deps.db
        broken = Database(f"sqlite+aiosqlite:///{relay.settings.data_dir}")  # a directory
        runtime.deps.db = broken
        db_down = await relay.http.get(relay.base_url + "/readyz")
        runtime.deps.db = good_db
        await broken.close()
        recovered = await relay.http.get(relay.base_url + "/readyz")
        live_while_db_down = live.status_code

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "knowledge", "model", "recorder", "draining"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["knowledge"]["detail"] == "disabled"  # RELAY_KNOWLEDGE=false in tests

    # The model and the database are shared by every process: their failure is "degraded", not
    # a reason to take this one out of the balancer (all would go, and no call be answered).
    assert (model_down.status_code, model_down.json()["status"]) == (200, "degraded")
    assert model_down.json()["checks"]["model"]["ok"] is False
    assert model_down.json()["checks"]["database"]["ok"] is True
    assert (db_down.status_code, db_down.json()["status"]) == (200, "degraded")
    checks = db_down.json()["checks"]
    assert checks["database"]["ok"] is False and checks["database"]["detail"]
    assert checks["model"]["ok"] is True
    assert recovered.status_code == 200
    assert live_while_db_down == 200


async def test_readyz_database_check_leaves_nothing_behind(start_relay: Any) -> None:
    async with start_relay() as relay:
        for _ in range(3):
            assert (await relay.http.get(relay.base_url + "/readyz")).status_code == 200
        async with relay.runtime.deps.db.session() as session:
            from sqlalchemy import func, select

            from relay.storage.models import Event

            count = await session.scalar(select(func.count()).select_from(Event))
    assert count == 0


async def test_readyz_recorder_backlog_over_its_limit_is_not_ready(start_relay: Any) -> None:
    async with start_relay(RELAY_RECORDER_BACKLOG_LIMIT="1") as relay:
        recorder = relay.runtime.deps.recorder
        # Stop the writer so records stay buffered, then hand two over.
        await recorder.stop()
        recorder.update_call("CA-backlog", status="in-progress")
        recorder.update_call("CA-backlog2", status="in-progress")
        backlog = await relay.http.get(relay.base_url + "/readyz")
        await recorder.start()
        await recorder.flush()
        ready = await relay.http.get(relay.base_url + "/readyz")

    assert backlog.status_code == 503
    assert backlog.json()["checks"]["recorder"] == {"ok": False, "detail": "backlog 2 of 1"}
    assert ready.status_code == 200


# -- metrics -----------------------------------------------------------------------------------


async def test_metrics_in_prometheus_text_format_before_and_after_a_call(
    start_relay: Any,
) -> None:
    async with start_relay(ScriptedLLM([Text("Hi there.")])) as relay:
        agent = relay.runtime.deps.agents.default.name
        before = await scrape(relay)
        call = relay.call()
        await call.connect()
        await call.say("hello")
        during = await scrape(relay)
        await call.send("not json at all")
        await call.close()
        await relay.session_closed()
        after = await scrape(relay)
        json_view = (await relay.http.get(relay.base_url + "/metrics.json")).json()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(during, "relay_live_calls") == value(before, "relay_live_calls") + 1
    assert value(after, "relay_live_calls") == value(before, "relay_live_calls")
    assert delta("relay_calls_started_total", agent=agent) == 1
    assert delta("relay_calls_ended_total", agent=agent, outcome="hung-up") == 1
    assert delta("relay_turns_total", agent=agent, outcome="answered") == 1
    assert delta("relay_first_frame_seconds_count", agent=agent) == 1
    assert delta("relay_first_frame_seconds_sum", agent=agent) > 0
    assert delta("relay_model_first_token_seconds_count", agent=agent) == 1
    assert delta("relay_invalid_frames_total") == 1
    tokens = [
        after[key] - before.get(key, 0.0)
        for key in after
        if key[0] == "relay_model_tokens_total" and ("agent", agent) in key[1]
    ]
    assert len(tokens) == 2 and all(n > 0 for n in tokens)  # prompt and completion
    assert value(after, "relay_recorder_backlog") == 0
    assert json_view["sessions_total"] >= 1  # the JSON view stays at /metrics.json
    # the loop-lag histogram is exposed (empty or not) and the JSON view carries its figures
    assert ("relay_event_loop_lag_seconds_count", ()) in after
    assert {"event_loop_lag_ms", "event_loop_lag_max_ms"} <= set(json_view)


async def test_the_loop_lag_probe_sees_a_blocked_event_loop() -> None:
    """A worker whose loop is held (here 0.3 s of blocking work) shows it: the probe's timer
    fires at least that much late. Only a lower bound is asserted: lateness cannot be less."""
    import time

    from relay.web.operations import LoopLag

    sampled = asyncio.Event()

    class Probe(LoopLag):
        def observe(self, seconds: float) -> None:
            super().observe(seconds)
            sampled.set()

    lag = Probe(every=0.01)
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0)  # the probe's timer is set
        time.sleep(0.3)  # noqa: ASYNC251 - the point: blocking work on the event loop
        await sampled.wait()
    finally:
        task.cancel()
    assert lag.worst >= 0.25
    assert lag.last <= lag.worst


async def test_metrics_token_protects_the_endpoint(start_relay: Any) -> None:
    async with start_relay(RELAY_METRICS_TOKEN="s3cret-metrics") as relay:
        anonymous = await relay.http.get(relay.base_url + "/metrics")
        wrong = await relay.http.get(
            relay.base_url + "/metrics", headers={"Authorization": "Bearer nope"}
        )
        samples = await scrape(relay, Authorization="Bearer s3cret-metrics")
        json_anonymous = await relay.http.get(relay.base_url + "/metrics.json")
        json_view = await relay.http.get(
            relay.base_url + "/metrics.json", headers={"Authorization": "Bearer s3cret-metrics"}
        )

    assert (json_anonymous.status_code, json_view.status_code) == (401, 200)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert ("relay_live_calls", ()) in samples


# -- admission ---------------------------------------------------------------------------------


async def test_over_the_call_cap_twiml_answers_politely_then_connects_again(
    start_relay: Any,
) -> None:
    async with start_relay(RELAY_MAX_CALLS="1") as relay:
        call = relay.call()
        await call.connect()
        await until(lambda: bool(relay.runtime.ops.gate.live))  # the server took the socket
        refused = await relay.post("/twiml", twiml_form())
        await call.close()
        await relay.session_closed()
        accepted = await relay.post("/twiml", twiml_form())

    assert refused.status_code == 200
    root = ET.fromstring(refused.text)
    assert [c.tag for c in root] == ["Say", "Dial"]
    assert root[0].text == BUSY_TO_PERSON
    assert [n.text for n in root[1].iter("Number")] == [PERSON]
    assert root[1].attrib["callerId"] == "+61390001234"
    connect = ET.fromstring(accepted.text).find("Connect")
    assert connect is not None and connect.find("ConversationRelay") is not None


async def test_forged_webhooks_are_rate_limited_by_source_but_signed_ones_never(
    start_relay: Any,
) -> None:
    async with start_relay(RELAY_RATE_LIMIT_BURST="3", RELAY_RATE_LIMIT_PER_SECOND="0.01") as relay:
        forged = [await relay.post("/twiml", twiml_form(), signature="forged") for _ in range(5)]
        signed = [await relay.post("/twiml", twiml_form()) for _ in range(5)]
        forged_handoff = await relay.post("/handoff", twiml_form(), signature="forged")

    assert [r.status_code for r in forged] == [403, 403, 403, 429, 429]
    assert int(forged[3].headers["retry-after"]) >= 1
    assert [r.status_code for r in signed] == [200] * 5
    assert all(ET.fromstring(r.text).find("Connect") is not None for r in signed)
    assert forged_handoff.status_code == 429


async def test_admin_api_is_rate_limited_by_source(start_relay: Any) -> None:
    async with start_relay(
        RELAY_ADMIN_TOKEN="admin-token",
        RELAY_RATE_LIMIT_BURST="2",
        RELAY_RATE_LIMIT_PER_SECOND="0.01",
    ) as relay:
        headers = {"Authorization": "Bearer admin-token"}
        url = relay.base_url + "/admin/knowledge/piano-removals/documents"
        answers = [await relay.http.get(url, headers=headers) for _ in range(3)]

    assert [r.status_code == 429 for r in answers] == [False, False, True]
    assert int(answers[2].headers["retry-after"]) >= 1


def test_token_bucket_refills_at_its_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=2)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.take("b", now=0.0) == 0.0  # another source has its own bucket
    assert limiter.take("a", now=0.5) == 0.0  # one token back after half a second
    assert limiter.take("a", now=0.5) == 0.5


async def test_model_concurrency_cap_queues_the_second_request_and_measures_the_wait(
    start_relay: Any,
) -> None:
    llm = ScriptedLLM([Text(SERVICES), Text(SERVICES)], token_delay=0.01)
    async with start_relay(llm, RELAY_MAX_LLM_CONCURRENCY="1") as relay:
        before = await scrape(relay)
        first, second = relay.call(), relay.call()
        await first.connect()
        await second.connect()
        replies = await asyncio.gather(first.say("What do you do?"), second.say("And you?"))
        after = await scrape(relay)

    assert [r.text for r in replies] == [SERVICES, SERVICES]
    # One request at a time: one reply's last frame comes before the other's first frame.
    ends = sorted(replies, key=lambda r: r.frames[0]["_t"])
    assert ends[0].frames[-1]["_t"] <= ends[1].frames[0]["_t"]
    count = "relay_model_queue_seconds_count"
    assert value(after, count) - value(before, count) == 2


# -- drain -------------------------------------------------------------------------------------


async def test_drain_lets_a_live_reply_finish_refuses_new_calls_and_turns_readyz_503(
    start_relay: Any,
) -> None:
    llm = ScriptedLLM([Text(SERVICES)], token_delay=0.02)
    async with start_relay(llm, RELAY_DRAIN_SECONDS="30") as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("What do you do?")
        first = await call.next_frame()
        drained = relay.runtime.drain.start()
        ready = await relay.http.get(relay.base_url + "/readyz")
        refused = await relay.post("/twiml", twiml_form())
        rest = await drain_frames(call)
        still_draining = not drained.done()
        await call.close()
        await asyncio.wait_for(drained, 10)
        await relay.session_closed()
        stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)

    assert first is not None and first["type"] == "text"
    text = first["token"] + "".join(f["token"] for f in rest if f["type"] == "text")
    assert text == SERVICES  # the reply in progress was not cut
    assert [f["type"] for f in rest].count("end") == 0
    assert ready.status_code == 503
    assert ready.json()["checks"]["draining"] == {"ok": False, "detail": "draining"}
    assert ET.fromstring(refused.text)[0].text == BUSY_TO_PERSON
    assert still_draining
    assert stored is not None and stored.outcome == "hung-up"


async def test_after_the_drain_deadline_the_caller_is_handed_to_a_person(
    start_relay: Any,
) -> None:
    async with start_relay(RELAY_DRAIN_SECONDS="0") as relay:
        call = relay.call()
        await call.connect()
        await until(lambda: bool(relay.runtime.ops.gate.live))
        drained = relay.runtime.drain.start()
        line = await call.next_frame()
        await call.info("agentSpeaking", "off")
        end = await call.next_frame()
        await call.close()
        await asyncio.wait_for(drained, 10)
        await relay.runtime.deps.recorder.flush()
        stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)
        handoff = await relay.post(
            "/handoff",
            twiml_form(
                call.call_sid,
                SessionStatus="ended",
                CallStatus="in-progress",
                HandoffData=end["handoffData"] if end else "",
            ),
        )

    assert line is not None and line == {
        "type": "text", "token": drain_.TO_PERSON_LINE, "last": True, "_t": line["_t"]
    }  # fmt: skip
    assert end is not None and end["type"] == "end"
    data = orjson.loads(end["handoffData"])
    assert (data["reasonCode"], data["reason"]) == ("live-agent-handoff", "server-shutdown")
    assert stored is not None and stored.outcome == "server-shutdown"
    dial = ET.fromstring(handoff.text).find("Dial")
    assert dial is not None and [n.text for n in dial.iter("Number")] == [PERSON]


def test_busy_answer_without_a_person_says_goodbye() -> None:
    from relay.agents import AgentProfile
    from relay.web.admission import busy_twiml

    agent = AgentProfile.model_construct(person_number=None)
    root = ET.fromstring(busy_twiml(agent, "+61390001234"))
    assert [(c.tag, c.text) for c in root] == [("Say", BUSY_NO_PERSON), ("Hangup", None)]


def test_sampler_brings_recorder_and_knowledge_counters_into_prometheus() -> None:
    from types import SimpleNamespace

    from prometheus_client import REGISTRY

    from relay.web.operations import _Sampler

    recorder = SimpleNamespace(pending=7, failures=2, parked=1, lost=0, dropped_events=0)
    retriever = SimpleNamespace(failures=1, shed=0)
    runtime = SimpleNamespace(deps=SimpleNamespace(recorder=recorder), retriever=retriever)
    sampler = _Sampler(runtime)

    def read(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    before = (
        read("relay_recorder_failures_total"),
        read("relay_knowledge_failures_total"),
        read("relay_recorder_parked_total"),
        read("relay_knowledge_shed_total"),
    )
    sampler.sample()
    recorder.failures, recorder.pending = 5, 0
    retriever.failures, retriever.shed = 4, 3  # three searches shed under load
    sampler.sample()
    sampler.sample()  # nothing new: nothing added

    assert read("relay_recorder_failures_total") - before[0] == 5
    assert read("relay_knowledge_failures_total") - before[1] == 4
    assert read("relay_recorder_parked_total") - before[2] == 1
    assert read("relay_knowledge_shed_total") - before[3] == 3
    assert read("relay_recorder_backlog") == 0


async def test_model_retries_and_failures_are_counted_by_kind(start_relay: Any) -> None:
    from relay.testing import Fail

    llm = ScriptedLLM([Fail(503, retry_after=0.001), Text("Back again."), Fail(400)])
    async with start_relay(llm) as relay:
        agent = relay.runtime.deps.agents.default.name
        before = await scrape(relay)
        call = relay.call()
        await call.connect()
        retried = await call.say("hello")
        failed = await call.say("and again")
        after = await scrape(relay)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert retried.text == "Back again."
    assert failed.text == relay.runtime.deps.agents.default.apology_line
    assert delta("relay_model_retries_total", kind="status-503") == 1
    assert delta("relay_model_failures_total", kind="status-400") == 1
    assert delta("relay_apologies_total", agent=agent) == 1


async def test_readyz_reports_a_knowledge_store_that_does_not_answer(start_relay: Any) -> None:
    class DownStore:
        async def collections(self, *, timeout: float | None = None) -> list[str]:
            raise ConnectionError("Chroma server at http://127.0.0.1:1 refused the connection")

    async with start_relay() as relay:
        relay.runtime.knowledge = DownStore()
        down = await relay.http.get(relay.base_url + "/readyz")
        relay.runtime.knowledge = None
        back = await relay.http.get(relay.base_url + "/readyz")

    assert (down.status_code, down.json()["status"]) == (200, "degraded")
    assert down.json()["checks"]["knowledge"] == {
        "ok": False,
        "detail": "ConnectionError: Chroma server at http://127.0.0.1:1 refused the connection",
        "ms": down.json()["checks"]["knowledge"]["ms"],
    }
    assert back.status_code == 200


async def test_readyz_follows_a_postgres_outage_and_its_recovery(
    start_relay: Any, postgres_server: str
) -> None:
    import asyncpg

    from relay.testing import postgres

    url = await postgres.create_database(postgres_server)
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(postgres_server)
    try:
        async with start_relay(DATABASE_URL=url) as relay:
            relay.runtime.ops.database_check.fresh = 0.0  # every /readyz checks anew
            up = await relay.http.get(relay.base_url + "/readyz")
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            down = await relay.http.get(relay.base_url + "/readyz")
            live = await relay.http.get(relay.base_url + "/healthz")
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            back = await relay.http.get(relay.base_url + "/readyz")
    finally:
        await admin.close()
        await postgres.drop_database(postgres_server, url)

    assert up.status_code == 200
    assert (down.status_code, down.json()["status"]) == (200, "degraded")
    assert down.json()["checks"]["database"]["ok"] is False
    assert live.status_code == 200
    assert back.status_code == 200


async def test_readyz_reuses_a_database_check_younger_than_a_second(start_relay: Any) -> None:
    async with start_relay() as relay:
        cache = relay.runtime.ops.database_check
        first = await cache.get(relay.runtime.deps.db)
        again = await cache.get(relay.runtime.deps.db)
        cache.fresh = 0.0
        anew = await cache.get(relay.runtime.deps.db)

    assert first.ok and again is first
    assert anew is not first and anew.ok


def test_tarpit_holds_back_at_most_its_seconds_and_at_most_max_held_answers() -> None:
    from relay.web.admission import Tarpit

    tarpit = Tarpit(seconds=1.0, max_held=2)
    assert tarpit.delay(0.3) == 0.3  # never past Retry-After
    assert tarpit.delay(30.0) == 1.0
    tarpit.held = 2
    assert tarpit.delay(30.0) == 0.0  # full: answered at once


@pytest.mark.parametrize(
    ("status", "ok"), [(200, True), (404, True), (401, False), (503, False), (None, False)]
)
async def test_model_probe_asks_for_the_model_list_with_the_key(
    status: int | None, ok: bool
) -> None:
    import httpx

    from relay.web.health import ModelProbe

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if status is None:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(status, json={"data": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        probe = ModelProbe(http, "http://models.example/v1/", "sk-test", interval=15.0)
        check = await probe.probe()

    assert check.ok is ok
    assert probe.current() is check
    assert str(seen[0].url) == "http://models.example/v1/models"
    assert seen[0].headers["authorization"] == "Bearer sk-test"


async def test_calls_admitted_at_once_cannot_all_slip_under_the_cap(start_relay: Any) -> None:
    def connects(response: Any) -> bool:
        return ET.fromstring(response.text).find("Connect") is not None

    async with start_relay(RELAY_MAX_CALLS="2") as relay:
        answers = [
            await relay.post("/twiml", twiml_form("CA" + str(n) * 32)) for n in range(3)
        ]  # three calls ring at once: no socket is open yet
        first, second = relay.call(), relay.call()
        await first.connect()
        await second.connect()
        await until(lambda: len(relay.runtime.ops.gate.live) == 2)
        while_full = await relay.post("/twiml", twiml_form("CA" + "7" * 32))
        await first.close()
        await relay.session_closed()
        after_one_left = await relay.post("/twiml", twiml_form("CA" + "8" * 32))

    assert [connects(a) for a in answers] == [True, True, False]
    assert ET.fromstring(answers[2].text)[0].text == BUSY_TO_PERSON
    assert not connects(while_full)
    assert connects(after_one_left)
