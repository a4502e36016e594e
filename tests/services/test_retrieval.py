"""Knowledge in the call: the LLM request carries the right passages, the turn records their
provenance, a failing store does not stop the call, and the admin API guards the documents.

Uses the real local embedding model and an embedded Chroma store in a temp directory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from knowledge import KnowledgeBusy, StoreUnavailable
from relay.services import retrieval
from relay.services.retrieval import KnowledgeRetriever
from relay.storage import repository
from relay.testing import ScriptedLLM, Text
from relay.web.app import create_app

pytestmark = pytest.mark.slow

DOCS = {
    "insurance.md": "# Insurance\n\nEvery move includes goods-in-transit cover up to $50,000 per piano. "
    "Higher-value instruments can get extra cover on request before the move.\n",
    "stairs.md": "# Stairs and access\n\nWe count every step without a lift at each end. A floor is "
    "about fourteen steps. Tell us about tight turns and narrow doors.\n",
    "storage.md": "# Storage\n\nWe store pianos in our climate-controlled depot in Brunswick, charged "
    "weekly, on their boards under padded covers.\n",
}


def write_docs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")


async def test_the_llm_request_carries_the_right_passage_and_the_turn_records_it(
    start_relay: Any, data_dir: Path
) -> None:
    write_docs(data_dir / "knowledge" / "piano-removals")
    llm = ScriptedLLM([Text("Yes, it's insured.")])
    async with start_relay(
        llm,
        RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false",
        RELAY_KNOWLEDGE_MIN_SCORE="0.2",
    ) as relay:
        knowledge = relay.runtime.knowledge
        report = await knowledge.sync("piano-removals", data_dir / "knowledge" / "piano-removals")
        assert {str(f.status) for f in report.files} == {"added"}
        call = relay.call()
        await call.connect()
        reply = await call.say("Is my piano insured while you move it?")
        await call.close()
        await relay.session_closed()
        turns = await repository.stored_turns(relay.runtime.deps.db, call.call_sid)

    assert reply.text == "Yes, it's insured."
    # The prompt, the call's facts, then (last) the turn's notes with the passages.
    *_, last = llm.requests[0]["messages"]
    reference = [m["content"] for m in llm.requests[0]["messages"][2:] if m["role"] == "system"]
    assert len(reference) == 1 and reference[0] == last["content"]
    first_passage = reference[0].split("[1]", 1)[1].split("[2]", 1)[0]
    assert "insurance.md" in first_passage and "$50,000" in first_passage
    [answer] = [t for t in turns if t.role == "assistant" and t.content == "Yes, it's insured."]
    assert answer.retrieval is not None
    top = answer.retrieval[0]
    assert top["doc_id"] == "insurance.md" and top["version"] == 1
    assert top["chunk_id"].startswith("insurance.md") and 0.2 <= top["score"] <= 1.0
    [question] = [t for t in turns if t.role == "user"]
    assert question.prompt_received_at is not None and answer.retrieval_done_at is not None
    assert question.prompt_received_at <= answer.retrieval_done_at <= answer.first_token_at


async def test_readyz_says_warming_up_until_the_knowledge_warm_up_has_finished(
    start_relay: Any, data_dir: Path
) -> None:
    # A first start: the model loads, the documents load (autoload) and the index is built in
    # the background; a balancer must not send calls before that, or they go ungrounded.
    write_docs(data_dir / "knowledge" / "piano-removals")
    held = asyncio.Event()
    warm_ups: list[asyncio.Event] = []

    def hold(runtime: Any) -> None:
        warm_ups.append(runtime.knowledge_warmed)
        runtime.knowledge_warmed = held  # what readiness reads, released by the test

    async with start_relay(ScriptedLLM(), configure=hold, RELAY_KNOWLEDGE="true") as relay:
        warming = await relay.http.get(relay.base_url + "/readyz")
        await asyncio.wait_for(warm_ups[0].wait(), timeout=120)  # the real warm-up's end
        count = await relay.runtime.knowledge.count("piano-removals")
        still = await relay.http.get(relay.base_url + "/readyz")
        held.set()
        ready = await relay.http.get(relay.base_url + "/readyz")

    assert warming.status_code == still.status_code == 503
    knowledge = warming.json()["checks"]["knowledge"]
    assert (knowledge["ok"], knowledge["detail"]) == (False, "warming up")
    assert all(c["ok"] for name, c in warming.json()["checks"].items() if name != "knowledge")
    assert count == len(DOCS)  # loaded before the warm-up said it was done
    assert ready.status_code == 200 and ready.json()["checks"]["knowledge"]["ok"] is True


class BrokenKnowledge:
    async def search(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("chroma is down")


async def call_over(
    start_relay: Any, knowledge: Any, llm: ScriptedLLM, said: list[str]
) -> tuple[list[str], dict[str, Any]]:
    """A real call that says ``said`` with the retriever searching ``knowledge``: the replies'
    texts, and the server's ``/metrics.json`` after them."""

    def configure(runtime: Any) -> None:
        runtime.retriever.knowledge = knowledge

    async with start_relay(
        llm, configure=configure, RELAY_KNOWLEDGE="true", RELAY_KNOWLEDGE_AUTOLOAD="false"
    ) as relay:
        call = relay.call()
        await call.connect()
        replies = [(await call.say(text)).text for text in said]
        metrics = (await relay.http.get(relay.base_url + "/metrics.json")).json()
        await call.close()
    return replies, metrics


async def test_a_call_survives_a_failing_store(start_relay: Any) -> None:
    llm = ScriptedLLM([Text("Happy to help.")])
    [reply], metrics = await call_over(
        start_relay, BrokenKnowledge(), llm, ["Do you store pianos?"]
    )

    assert reply == "Happy to help."
    messages = llm.requests[0]["messages"]
    # the prompt, the call's facts, the per-turn note
    assert [m["role"] for m in messages].count("system") == 3
    assert messages[-1]["content"].startswith("Current date and time: ")
    assert "[1]" not in messages[-1]["content"]  # no reference material
    assert metrics["retrieval_failures"] == 1


class BusyKnowledge:
    """A store whose every search is shed (the memory index's KnowledgeBusy)."""

    store = None

    async def search(self, *args: Any, **kwargs: Any) -> Any:
        raise KnowledgeBusy("knowledge search shed: the 9 searches ahead of it would take 0.31s")


async def test_a_shed_search_answers_at_once_without_passages_and_is_counted(
    start_relay: Any,
) -> None:
    llm = ScriptedLLM([Text("Happy to help."), Text("Sure.")])
    said = ["Do you store pianos?", "Where is your depot?"]
    (first, second), metrics = await call_over(start_relay, BusyKnowledge(), llm, said)

    assert (first, second) == ("Happy to help.", "Sure.")
    assert all("[1]" not in r["messages"][-1]["content"] for r in llm.requests)
    assert metrics["retrieval_shed"] == 2 and metrics["retrieval_failures"] == 2


async def test_shed_searches_are_logged_at_most_once_an_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    retriever = KnowledgeRetriever(BusyKnowledge(), memory_index=False)  # type: ignore[arg-type]
    agent: Any = type("Agent", (), {"knowledge_collection": "piano-removals"})()
    logs: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(retrieval, "log", SimpleNamespace(
        warning=lambda event, **fields: logs.append((event, fields)),
        info=lambda event, **fields: logs.append((event, fields)),
    ))  # fmt: skip
    for _ in range(3):
        found = await retriever.retrieve(agent, "Do you store pianos?")
        assert found is not None and found.error is not None and not found.provenance
    retriever._shed_log_at -= retrieval._SHED_LOG_INTERVAL  # as if the interval had passed
    await retriever.retrieve(agent, "Where is your depot?")
    assert [(event, f["shed"], f["shed_total"]) for event, f in logs] == [
        ("retrieval_shed", 1, 1),
        ("retrieval_shed", 3, 4),
    ]
    assert retriever.shed == 4 and retriever.failures == 4


def admin_client(make_settings: Any, **overrides: Any) -> TestClient:
    settings = make_settings(
        RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        **overrides,
    )
    return TestClient(create_app(settings))


def test_without_a_configured_token_the_admin_api_is_off(make_settings: Any) -> None:
    with admin_client(make_settings) as client:
        assert client.get("/admin/knowledge/piano-removals/documents").status_code == 404


def test_the_admin_api_needs_the_token_and_manages_documents(make_settings: Any) -> None:
    token = {"Authorization": "Bearer s3cret-admin"}
    base = "/admin/knowledge/piano-removals"
    with admin_client(make_settings, RELAY_ADMIN_TOKEN="s3cret-admin") as client:
        assert client.get(base + "/documents").status_code == 401
        assert (
            client.get(base + "/documents", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert client.delete(base + "/documents/x.md").status_code == 401

        files = [
            ("file", ("insurance.md", DOCS["insurance.md"].encode(), "text/markdown")),
            ("file", ("../../etc/evil.md", b"# Evil\n\nnope", "text/markdown")),
            ("file", ("tool.exe", b"MZ\x90\x00", "application/octet-stream")),
            ("file", ("empty.txt", b"", "text/plain")),
        ]
        upload = client.post(base + "/documents", files=files, headers=token)
        assert upload.status_code == 207
        results = {r["path"]: r for r in upload.json()["results"]}
        assert results["insurance.md"]["status"] == "added"
        assert {results[n]["status"] for n in ("../../etc/evil.md", "tool.exe", "empty.txt")} == {
            "failed"
        }
        assert all(results[n]["error"] for n in ("../../etc/evil.md", "tool.exe", "empty.txt"))

        listed = client.get(base + "/documents", headers=token).json()["documents"]
        assert [d["doc_id"] for d in listed] == ["insurance.md"]
        hits = client.get(
            base + "/search", params={"q": "is the piano insured"}, headers=token
        ).json()["hits"]
        assert hits[0]["doc_id"] == "insurance.md"
        assert (
            client.get(base + "/documents/insurance.md", headers=token).json()["info"]["version"]
            == 1
        )
        assert client.delete(base + "/documents/insurance.md", headers=token).status_code == 200
        assert client.get(base + "/documents", headers=token).json()["documents"] == []
