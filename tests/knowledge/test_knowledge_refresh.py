"""Changes made by another process (the CLI, another worker) reach a store that is open: the
manifest's generation moves on, the store reopens; a stale index never raises TypeError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from knowledge import KnowledgeStore
from knowledge.manifest import Manifest
from knowledge.testing import HashingEmbedder

STORAGE = b"# Storage\nHeated warehouse storage, charged weekly."


def in_another_process(path: Path, code: str) -> None:
    """Run ``code`` with ``store`` open on ``path`` in a separate Python process."""
    program = (
        "from pathlib import Path\n"
        "from knowledge import KnowledgeStore\n"
        "from knowledge.testing import HashingEmbedder\n"
        f"with KnowledgeStore(path=Path({str(path)!r}), embedder=HashingEmbedder()) as store:\n"
        f"    {code}\n"
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=120)


def test_every_change_moves_the_generation_on(tmp_path: Path) -> None:
    manifest_path = tmp_path / "db" / "knowledge-manifest.sqlite3"
    with KnowledgeStore(path=tmp_path / "db", embedder=HashingEmbedder()) as store:
        store.add_bytes("movers", "storage.md", STORAGE)
        first = Manifest(manifest_path).generation()
        store.add_bytes("movers", "storage.md", STORAGE)  # unchanged: no new generation
        assert Manifest(manifest_path).generation() == first
        store.add_bytes("movers", "storage.md", STORAGE + b" Insured.")
        assert Manifest(manifest_path).generation() == first + 1
        store.remove("movers", "storage.md")
        assert Manifest(manifest_path).generation() == first + 2
        store.drop("movers")
        assert Manifest(manifest_path).generation() == first + 3
        assert store.reloads == 0  # our own changes need no reload


def test_documents_added_and_removed_elsewhere_are_seen_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with KnowledgeStore(path=path, embedder=HashingEmbedder(), refresh_interval=0) as store:
        store.add_bytes("movers", "pianos.md", b"# Pianos\nUprights weigh about 250 kg.")
        assert [
            h.doc_id for h in store.search("movers", "heated warehouse storage", min_score=-1)
        ] == ["pianos.md"]

        in_another_process(path, f"store.add_bytes('movers', 'storage.md', {STORAGE!r})")
        hits = store.search("movers", "heated warehouse storage", k=1)
        assert [h.doc_id for h in hits] == ["storage.md"]
        assert store.reloads == 1

        in_another_process(path, "store.remove('movers', 'storage.md')")
        hits = store.search("movers", "heated warehouse storage", k=2, min_score=-1)
        assert [h.doc_id for h in hits] == ["pianos.md"]
        assert store.reloads == 2


def test_a_stale_index_is_reopened_rather_than_raising(tmp_path: Path) -> None:
    path = tmp_path / "db"
    # Never looks for changes on its own: only the stale answer can tell it.
    with KnowledgeStore(path=path, embedder=HashingEmbedder(), refresh_interval=3600) as store:
        store.add_bytes("movers", "pianos.md", b"# Pianos\nUprights weigh about 250 kg.")
        store.add_bytes("movers", "storage.md", STORAGE)
        assert len(store.search("movers", "heated warehouse storage", k=2, min_score=-1)) == 2

        in_another_process(path, "store.remove('movers', 'storage.md')")
        hits = store.search("movers", "heated warehouse storage", k=2, min_score=-1)  # no TypeError
        assert [h.doc_id for h in hits] == ["pianos.md"]
        assert store.reloads == 1
