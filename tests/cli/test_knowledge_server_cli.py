"""``relay knowledge list`` with a Chroma server (``CHROMA_URL``): the documents it lists are
this data directory's manifest, not the server's contents, and it says so; when the server holds
chunks loaded with another data directory, it says that too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledge import KnowledgeStore
from knowledge.testing import HashingEmbedder
from relay.cli import knowledge as cli
from relay.cli.main import main
from relay.config import load_settings
from tests.knowledge.test_knowledge_server import chroma_url  # noqa: F401 (a fixture)


@pytest.fixture
def editors(
    chroma_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, KnowledgeStore]]:
    """Two data directories sharing one Chroma server; ``relay knowledge`` uses the one named
    in ``RELAY_DATA_DIR`` (collection ``movers``)."""
    stores = {
        name: KnowledgeStore(
            path=tmp_path / name / "chroma", url=chroma_url, embedder=HashingEmbedder()
        )
        for name in ("here", "there")
    }

    def context(args: object, *, existing_ok: bool = True) -> tuple[object, KnowledgeStore, str]:
        settings = load_settings()
        return settings, stores[settings.data_dir.name], "movers"

    monkeypatch.setattr(cli, "_context", context)
    monkeypatch.setenv("CHROMA_URL", chroma_url)
    try:
        yield stores
    finally:
        for store in stores.values():
            store.close()


def test_list_says_it_reads_this_data_directorys_manifest(
    editors: dict[str, KnowledgeStore],
    chroma_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = tmp_path / "stairs.md"
    doc.write_text("# Stairs\n\nWe carry pianos up any stairs.\n", encoding="utf-8")
    editors["there"].add("movers", [doc])
    manifest = tmp_path / "{}" / "chroma" / "knowledge-manifest.sqlite3"

    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "there"))
    assert main(["knowledge", "list"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"Documents of 'movers' as this data directory's manifest records them "
        f"({str(manifest).format('there')}); their chunks are on the Chroma server at "
        f"{chroma_url}."
    ]
    assert out.splitlines()[1].startswith("stairs.md ")

    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "here"))
    assert main(["knowledge", "list"]) == 0
    out, err = capsys.readouterr()
    assert out == "'movers' has no documents.\n"
    assert err.splitlines()[1] == (
        "The server holds 1 chunks of 'movers', the documents listed 0: documents loaded with "
        "another data directory (RELAY_DATA_DIR) are not listed here. Load and list documents "
        "from one data directory."
    )
