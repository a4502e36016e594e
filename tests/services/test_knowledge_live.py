"""Editors at work while calls run: a document added by the CLI (another process) is used by the
next call of a running server, without restart; removing it leaves retrieval working; any store
error leaves a turn ungrounded; unknown collections are refused by the CLI and the admin API.

Uses the real local embedding model, an embedded Chroma store, and ``relay knowledge`` run as a
separate process, as an editor would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from relay.testing import ScriptedLLM, Text
from relay.web.app import create_app

pytestmark = pytest.mark.slow

INSURANCE = (
    "# Insurance\n\nEvery move includes goods-in-transit cover up to $50,000 per piano. "
    "Higher-value instruments can get extra cover on request before the move.\n"
)
STAIRS = "# Stairs\n\nWe count every step without a lift at each end.\n"


def knowledge_cli(
    data_dir: Path, prompts_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RELAY_DATA_DIR": str(data_dir),
        "RELAY_PROMPTS_DIR": str(prompts_dir),
        "RELAY_LOG_LEVEL": "warning",
    }
    return subprocess.run(
        [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())",
         "knowledge", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def reference_of(request: dict[str, Any]) -> list[str]:
    """The reference-material system messages of an LLM request (after the prompt)."""
    # The per-turn system message (last, issue 15) holds the time, then the passages.
    texts = [m["content"] for m in request["messages"][-1:] if m["role"] == "system"]
    notes = ("Current date and time: ", "(Notes for you")
    parts = ["\n\n".join(p for p in t.split("\n\n") if not p.startswith(notes)) for t in texts]
    return [p for p in parts if p]


async def test_a_document_added_by_the_cli_is_used_by_the_next_call_and_removing_it_is_safe(
    start_relay: Any, data_dir: Path, prompts_dir: Path, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "stairs.md").write_text(STAIRS, encoding="utf-8")
    (docs / "insurance.md").write_text(INSURANCE, encoding="utf-8")
    question = "Is my piano insured while you move it?"
    llm = ScriptedLLM([Text("One."), Text("Two."), Text("Three.")])
    async with start_relay(
        llm,
        RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false",
        RELAY_KNOWLEDGE_MIN_SCORE="0.2",
        RELAY_KNOWLEDGE_TIMEOUT="5",
        RELAY_KNOWLEDGE_REFRESH="0",  # look for changes on every search
    ) as relay:
        retriever = relay.runtime.retriever
        loaded = knowledge_cli(data_dir, prompts_dir, "add", str(docs / "stairs.md"))
        assert loaded.returncode == 0, loaded.stderr
        call = relay.call()
        await call.connect()
        assert (await call.say(question)).text == "One."  # stairs only: nothing on insurance
        await call.close()

        added = knowledge_cli(data_dir, prompts_dir, "add", str(docs / "insurance.md"))
        assert added.returncode == 0, added.stderr
        call = relay.call()
        await call.connect()
        assert (await call.say(question)).text == "Two."
        await call.close()

        removed = knowledge_cli(data_dir, prompts_dir, "remove", "insurance.md")
        assert removed.returncode == 0, removed.stderr
        call = relay.call()
        await call.connect()
        assert (await call.say(question)).text == "Three."
        await call.close()
        failures = retriever.failures

    first, second, third = (reference_of(r) for r in llm.requests)
    assert "$50,000" not in "".join(first)
    assert len(second) == 1 and "insurance.md" in second[0] and "$50,000" in second[0]
    assert "$50,000" not in "".join(third)  # gone, and retrieval still works
    assert failures == 0


class TypeErrorKnowledge:
    async def search(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("'NoneType' object is not subscriptable")


async def test_any_store_error_leaves_the_turn_ungrounded(start_relay: Any) -> None:
    def configure(runtime: Any) -> None:
        runtime.retriever.knowledge = TypeErrorKnowledge()

    llm = ScriptedLLM([Text("Happy to help.")])
    async with start_relay(
        llm, configure=configure, RELAY_KNOWLEDGE="true", RELAY_KNOWLEDGE_AUTOLOAD="false"
    ) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Do you store pianos?")
        await call.close()
        failures = relay.runtime.retriever.failures

    assert reply.text == "Happy to help."
    assert reference_of(llm.requests[0]) == []
    assert failures == 1


def test_the_cli_refuses_a_collection_no_agent_uses(data_dir: Path, prompts_dir: Path) -> None:
    (data_dir / "note.md").write_text(STAIRS, encoding="utf-8")
    result = knowledge_cli(data_dir, prompts_dir, "add", "-c", "nobodys", str(data_dir / "note.md"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "relay knowledge: no agent uses the collection 'nobodys' (the agents use: "
        "piano-removals); set knowledge_collection in the agent's profile first"
    ]
    listed = knowledge_cli(data_dir, prompts_dir, "list", "-c", "nobodys")
    assert listed.returncode == 1 and "no agent uses the collection 'nobodys'" in listed.stderr


def test_the_admin_api_answers_404_for_a_collection_no_agent_uses(make_settings: Any) -> None:
    token = {"Authorization": "Bearer s3cret-admin"}
    settings = make_settings(
        RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        RELAY_ADMIN_TOKEN="s3cret-admin",
    )
    with TestClient(create_app(settings)) as client:
        files = [("file", ("note.md", STAIRS.encode(), "text/markdown"))]
        upload = client.post("/admin/knowledge/nobodys/documents", files=files, headers=token)
        assert upload.status_code == 404
        assert upload.json() == {
            "error": "no knowledge collection 'nobodys': the agents use piano-removals"
        }
        for path in ("/documents", "/documents/note.md", "/search?q=stairs"):
            got = client.get("/admin/knowledge/nobodys" + path, headers=token)
            assert got.status_code == 404, path
        assert (
            client.delete("/admin/knowledge/nobodys/documents/note.md", headers=token).status_code
            == 404
        )
        knowledge = client.app.state.runtime.knowledge  # type: ignore[attr-defined]
        assert "nobodys" not in knowledge.store.collections()  # never created
        # An agent's collection with nothing loaded yet: searching it is a 404 too, not a 500.
        empty = client.get("/admin/knowledge/piano-removals/search?q=stairs", headers=token)
        assert empty.status_code == 404


async def test_workers_starting_together_load_the_shipped_documents_once(
    data_dir: Path, prompts_dir: Path
) -> None:
    from knowledge import AsyncKnowledge, KnowledgeStore
    from knowledge.testing import HashingEmbedder
    from relay.agents import AgentRegistry
    from relay.services.retrieval import KnowledgeRetriever

    folder = data_dir / "knowledge" / "piano-removals"
    folder.mkdir(parents=True)
    for n in range(8):
        (folder / f"doc{n}.md").write_text(f"# Doc {n}\n\n{STAIRS}{INSURANCE}", encoding="utf-8")
    agents = list(AgentRegistry.load(prompts_dir).agents.values())
    stores = [
        AsyncKnowledge(KnowledgeStore(path=data_dir / "chroma", embedder=HashingEmbedder()))
        for _ in range(2)
    ]
    try:
        retrievers = [KnowledgeRetriever(k) for k in stores]
        await asyncio.gather(*(r.autoload(agents, data_dir / "knowledge") for r in retrievers))
        docs = await stores[0].list_documents("piano-removals")
    finally:
        for store in stores:
            await store.aclose()
    assert [(d.doc_id, d.version) for d in docs] == [(f"doc{n}.md", 1) for n in range(8)]
