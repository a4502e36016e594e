"""``relay knowledge add / sync / load-shipped`` load documents on idle cores only: an editor
running them on a box that serves calls leaves the cores to the calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge import KnowledgeStore
from knowledge.testing import HashingEmbedder
from relay.cli import knowledge as cli
from relay.cli.main import main


@pytest.mark.parametrize("command", ["add", "sync"])
def test_loading_documents_lowers_the_commands_priority_first(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "storage.md").write_text("# Storage\n\nA heated warehouse.\n", encoding="utf-8")
    events: list[str] = []
    store = KnowledgeStore(path=tmp_path / "kb", embedder=HashingEmbedder())

    def context(args: object, *, existing_ok: bool = True) -> tuple[None, KnowledgeStore, str]:
        events.append("store opened")
        return None, store, "movers"

    monkeypatch.setattr(cli, "run_on_idle_cpu", lambda: events.append("priority lowered"))
    monkeypatch.setattr(cli, "_context", context)
    try:
        assert main(["knowledge", command, str(docs)]) == 0
    finally:
        store.close()
    assert events == ["priority lowered", "store opened"]
