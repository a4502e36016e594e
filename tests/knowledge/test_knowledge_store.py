"""KnowledgeStore on an embedded Chroma in tmp_path with the hashing fake embedder."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from knowledge import (
    DocumentError,
    EmbeddingError,
    EmbeddingMismatch,
    FileResult,
    KnowledgeError,
    KnowledgeStore,
    StoreUnavailable,
    UnknownCollection,
    UnknownDocument,
)
from knowledge.store import EMBED_BATCH
from knowledge.testing import HashingEmbedder

Builder = Callable[..., bytes]
KB = "movers"

PRICING = "# Pricing\nAn upright piano move costs 250 pounds.\n\n## Grand pianos\nA grand costs 400 pounds.\n"
STORAGE = "# Storage\nWe store pianos in a heated warehouse for 40 pounds a month.\n"
FAQ = "question,answer\nDo you work on Sundays?,No. Monday to Saturday only.\n"


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def stored_ids(store: KnowledgeStore, doc_id: str) -> set[str]:
    return {c.chunk_id for c in store.show(KB, doc_id).chunks}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write(
        tmp_path / "docs",
        {"pricing.md": PRICING, "storage.md": STORAGE, "faq/faq.csv": FAQ},
    )


class FailingEmbedder(HashingEmbedder):
    """Fails on its ``fail_on``-th call to :meth:`embed` (1-based)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on

    def embed(self, texts: list[str]) -> list[list[float]]:
        if self.calls + 1 == self.fail_on:
            self.calls += 1
            raise EmbeddingError("embedding service went away")
        return super().embed(texts)


# -- adding and re-adding ----------------------------------------------------------------------


def test_add_folder_then_search(store: KnowledgeStore, docs: Path) -> None:
    seen: list[FileResult] = []
    report = store.add(KB, [docs], progress=seen.append)
    assert [(f.doc_id, f.status, f.chunks) for f in report.files] == [
        ("faq/faq.csv", "added", 1),
        ("pricing.md", "added", 2),
        ("storage.md", "added", 1),
    ]
    assert seen == list(report.files)
    assert report.ok and report.added == 3 and report.chunks_written == 4
    assert store.count(KB) == 4
    assert store.collections() == [KB]

    (hit,) = store.search(KB, "heated warehouse storage pounds a month", k=1)
    assert hit.doc_id == "storage.md" and hit.source == "storage.md" and hit.doc_version == 1
    assert hit.heading_path == ["Storage"]
    assert hit.text == "We store pianos in a heated warehouse for 40 pounds a month."
    assert 0.0 < hit.score <= 1.0


def test_single_files_use_their_name_as_id(store: KnowledgeStore, docs: Path) -> None:
    report = store.add(KB, [docs / "faq" / "faq.csv", docs / "pricing.md"])
    assert [f.doc_id for f in report.files] == ["faq.csv", "pricing.md"]


def test_second_add_is_unchanged_and_writes_nothing(
    store: KnowledgeStore, docs: Path, embedder: HashingEmbedder, tmp_path: Path
) -> None:
    store.add(KB, [docs])
    embedded = embedder.texts_embedded
    chroma_file = tmp_path / "db" / "chroma.sqlite3"
    before = chroma_file.stat().st_mtime_ns, chroma_file.stat().st_size

    report = store.add(KB, [docs])

    assert [f.status for f in report.files] == ["unchanged"] * 3
    assert report.chunks_written == 0
    assert embedder.texts_embedded == embedded
    assert (chroma_file.stat().st_mtime_ns, chroma_file.stat().st_size) == before
    assert [v.version for v in store.show(KB, "pricing.md").versions] == [1]


def test_changed_document_gets_new_version_and_old_chunks_go(
    store: KnowledgeStore, docs: Path, embedder: HashingEmbedder
) -> None:
    store.add(KB, [docs])
    old_ids = stored_ids(store, "pricing.md")
    write(docs, {"pricing.md": PRICING.replace("400", "450")})
    embedded = embedder.texts_embedded

    report = store.add(KB, [docs])

    assert [(f.doc_id, f.status, f.version) for f in report.files] == [
        ("faq/faq.csv", "unchanged", 1),
        ("pricing.md", "updated", 2),
        ("storage.md", "unchanged", 1),
    ]
    detail = store.show(KB, "pricing.md")
    assert detail.info.version == 2
    assert [(v.version, v.removed_at is None) for v in detail.versions] == [(1, False), (2, True)]
    new_ids = {c.chunk_id for c in detail.chunks}
    # the untouched first section keeps its chunk (and vector); the edited one is replaced
    assert len(old_ids & new_ids) == 1
    assert embedder.texts_embedded == embedded + 1
    assert store.count(KB) == 4
    texts = [h.text for h in store.search(KB, "grand costs pounds", k=10)]
    assert "A grand costs 450 pounds." in texts
    assert "A grand costs 400 pounds." not in texts
    assert {
        h.doc_version for h in store.search(KB, "pricing", k=10) if h.doc_id == "pricing.md"
    } == {2}


def test_show_lists_chunks_in_order(store: KnowledgeStore, docs: Path) -> None:
    store.add(KB, [docs])
    detail = store.show(KB, "Pricing.md")  # ids are normalised, any case
    assert [(c.position, c.heading_path, c.preview) for c in detail.chunks] == [
        (0, ["Pricing"], "An upright piano move costs 250 pounds."),
        (1, ["Pricing", "Grand pianos"], "A grand costs 400 pounds."),
    ]
    assert detail.info.source == "pricing.md" and detail.info.chunks == 2
    assert len(detail.info.sha256) == 64
    with pytest.raises(UnknownDocument):
        store.show(KB, "nothing.md")


def test_list_documents(store: KnowledgeStore, docs: Path) -> None:
    store.add(KB, [docs])
    infos = store.list_documents(KB)
    assert [(d.doc_id, d.version, d.chunks) for d in infos] == [
        ("faq/faq.csv", 1, 1),
        ("pricing.md", 1, 2),
        ("storage.md", 1, 1),
    ]
    assert store.list_documents("other") == []


def test_new_chunking_settings_rechunk_unchanged_files(
    tmp_path: Path, docs: Path, embedder: HashingEmbedder
) -> None:
    KnowledgeStore(path=tmp_path / "db", embedder=embedder).add(KB, [docs])
    smaller = KnowledgeStore(
        path=tmp_path / "db", embedder=embedder, max_tokens=64, overlap_tokens=16
    )
    assert {f.status for f in smaller.add(KB, [docs]).files} == {"updated"}


# -- sync and remove ---------------------------------------------------------------------------


def test_sync_mirrors_a_folder(store: KnowledgeStore, docs: Path) -> None:
    store.add_bytes(KB, "upload.md", b"# Upload\nUploaded separately.")
    store.sync(KB, docs)
    (docs / "storage.md").unlink()
    write(docs, {"areas.md": "# Areas\nWe cover Kent and Sussex."})

    report = store.sync(KB, docs)

    assert sorted((f.doc_id, f.status) for f in report.files) == [
        ("areas.md", "added"),
        ("faq/faq.csv", "unchanged"),
        ("pricing.md", "unchanged"),
        ("storage.md", "deleted"),
    ]
    assert [d.doc_id for d in store.list_documents(KB)] == ["areas.md", "faq/faq.csv", "pricing.md"]
    assert all(h.doc_id != "storage.md" for h in store.search(KB, "heated warehouse", k=10))
    removed = store.show(KB, "storage.md")
    assert removed.removed and removed.chunks == []
    assert [v.removed_at is not None for v in removed.versions] == [True]


def test_sync_keeps_the_old_version_of_a_file_that_now_fails(
    store: KnowledgeStore, docs: Path
) -> None:
    store.sync(KB, docs)
    write(docs, {"storage.md": b"\x00\x01 corrupted"})
    report = store.sync(KB, docs)
    assert {f.doc_id: f.status for f in report.files}["storage.md"] == "failed"
    assert store.show(KB, "storage.md").info.version == 1
    assert store.count(KB) == 4


def test_sync_refuses_a_missing_folder(store: KnowledgeStore, docs: Path, tmp_path: Path) -> None:
    store.sync(KB, docs)
    with pytest.raises(KnowledgeError, match="not a directory"):
        store.sync(KB, tmp_path / "typo")
    assert store.count(KB) == 4


def test_remove(store: KnowledgeStore, docs: Path) -> None:
    store.add(KB, [docs])
    assert store.remove(KB, "pricing.md") is True
    assert store.remove(KB, "pricing.md") is False
    assert store.remove("never-created", "pricing.md") is False
    assert store.count(KB) == 2
    assert store.show(KB, "pricing.md").removed
    assert store.search(KB, "grand costs", k=10)[0].doc_id != "pricing.md"
    # re-adding continues the version history
    report = store.add(KB, [docs / "pricing.md"])
    assert report.files[0].status == "added" and report.files[0].version == 2


def test_drop_collection(store: KnowledgeStore, docs: Path) -> None:
    store.add(KB, [docs])
    assert store.drop(KB) is True
    assert store.collections() == []
    assert store.list_documents(KB) == []
    assert store.drop(KB) is False


# -- bad documents -----------------------------------------------------------------------------


def test_bad_documents_fail_one_by_one_and_the_rest_loads(
    tmp_path: Path, embedder: HashingEmbedder, make_pdf: Builder
) -> None:
    docs = write(
        tmp_path / "docs",
        {
            "good.md": STORAGE,
            "empty.md": "",
            "blank.txt": "   \n\n  ",
            "corrupt.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog",
            "not-really.pdf": b"MZ this is an executable",
            "setup.exe": b"MZ\x90\x00\x03\x00\x00\x00",
            "binary.txt": bytes(range(256)),
            "big.md": "# Big\n" + "A long line about pianos. " * 400,
            "bad.csv": "name,price\nupright,250\n",
            "good.pdf": make_pdf([["Grand pianos need six movers."]]),
        },
    )
    (docs / ".hidden.md").write_text("skipped")
    store = KnowledgeStore(path=tmp_path / "db", embedder=embedder, max_file_bytes=5_000)

    report = store.add(KB, [docs, tmp_path / "missing.md"])

    status = {f.doc_id: (f.status, f.error) for f in report.files}
    assert status["good.md"] == ("added", None)
    assert status["good.pdf"] == ("added", None)
    reasons = {doc: error or "" for doc, (state, error) in status.items() if state == "failed"}
    assert set(reasons) == {
        "empty.md", "blank.txt", "corrupt.pdf", "not-really.pdf", "setup.exe",
        "binary.txt", "big.md", "bad.csv", "missing.md",
    }  # fmt: skip
    assert "empty" in reasons["empty.md"] and "empty" in reasons["blank.txt"]
    assert "corrupt PDF" in reasons["corrupt.pdf"]
    assert "corrupt PDF" in reasons["not-really.pdf"]
    assert "unsupported file type '.exe'" in reasons["setup.exe"]
    assert "not text" in reasons["binary.txt"] or "decodable" in reasons["binary.txt"]
    assert "limit" in reasons["big.md"]
    assert "question and an answer column" in reasons["bad.csv"]
    assert "No such file" in reasons["missing.md"]
    assert report.failed == 9 and report.added == 2 and not report.ok
    assert store.count(KB) == 2
    assert [d.doc_id for d in store.list_documents(KB)] == ["good.md", "good.pdf"]


def test_duplicate_document_ids_in_one_batch(store: KnowledgeStore, tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"Pricing.md": PRICING})
    b = write(tmp_path / "b", {"pricing.md": STORAGE})
    report = store.add(KB, [a, b])
    assert [(f.doc_id, f.status) for f in report.files] == [
        ("pricing.md", "added"),
        ("pricing.md", "failed"),
    ]
    # Both paths named (until late 7 December: "same document id as pricing.md").
    assert (report.files[1].error or "").endswith(
        f"{b / 'pricing.md'} has the same document id ('pricing.md') as {a / 'Pricing.md'}: "
        "rename one, or add the folder above them so their ids differ"
    )


@pytest.mark.parametrize(
    "name",
    [
        "../x.md",
        "a/../../x.md",
        "/etc/passwd.md",
        "C:\\Windows\\x.md",
        "\\\\server\\x.md",
        "",
        "a\x00.md",
    ],
)
def test_add_bytes_refuses_path_traversal(store: KnowledgeStore, name: str) -> None:
    with pytest.raises(DocumentError):
        store.add_bytes(KB, name, STORAGE.encode())
    assert store.count(KB) == 0


def test_add_bytes_names_and_errors(store: KnowledgeStore) -> None:
    result = store.add_bytes(KB, "FAQ\\Storage.md", STORAGE.encode())
    assert (result.doc_id, result.path, result.status, result.chunks) == (
        "faq/storage.md", "FAQ/Storage.md", "added", 1,
    )  # fmt: skip
    assert store.add_bytes(KB, "faq/storage.md", STORAGE.encode()).status == "unchanged"
    with pytest.raises(DocumentError, match="unsupported"):
        store.add_bytes(KB, "tool.exe", b"MZ")
    with pytest.raises(DocumentError, match="empty"):
        store.add_bytes(KB, "empty.md", b"")
    small = KnowledgeStore(path=store_path(store), embedder=store.embedder, max_file_bytes=10)
    with pytest.raises(DocumentError, match="limit"):
        small.add_bytes(KB, "big.md", STORAGE.encode())


def store_path(store: KnowledgeStore) -> Path:
    manifest = store._manifest
    assert manifest is not None
    return manifest.path.parent


# -- never half-written ------------------------------------------------------------------------


def long_document(sections: int) -> str:
    return "\n".join(
        f"## Topic {i}\nPiano fact number {i} is about stairs, vans and careful crews.\n"
        for i in range(sections)
    )


def test_failed_new_document_leaves_nothing(tmp_path: Path) -> None:
    embedder = FailingEmbedder(fail_on=2)  # the first batch is written, the second fails
    store = KnowledgeStore(path=tmp_path / "db", embedder=embedder)
    with pytest.raises(EmbeddingError):
        store.add_bytes(KB, "long.md", long_document(EMBED_BATCH + 10).encode())
    assert store.count(KB) == 0
    assert store.list_documents(KB) == []


def test_failed_update_keeps_the_old_version_whole(tmp_path: Path) -> None:
    embedder = FailingEmbedder(fail_on=0)
    store = KnowledgeStore(path=tmp_path / "db", embedder=embedder)
    original = long_document(EMBED_BATCH + 10)
    store.add_bytes(KB, "long.md", original.encode())
    before = store.show(KB, "long.md")
    hits_before = store.search(KB, "piano fact number 3", k=3)

    embedder.fail_on = embedder.calls + 2  # fail on the second batch of the update
    changed = original.replace("careful crews", "very careful crews")
    with pytest.raises(EmbeddingError):
        store.add_bytes(KB, "long.md", changed.encode())

    after = store.show(KB, "long.md")
    assert after.chunks == before.chunks
    assert after.info == before.info
    assert [v.version for v in after.versions] == [1]
    assert store.count(KB) == EMBED_BATCH + 10
    # The same chunks still answer (HNSW may order ties differently after the aborted write).
    after_hits = store.search(KB, "piano fact number 3", k=3)
    assert len(after_hits) == len(hits_before) == 3
    assert all(h.doc_version == 1 and "very careful" not in h.text for h in after_hits)
    # and the next try goes through as version 2
    assert store.add_bytes(KB, "long.md", changed.encode()).version == 2
    assert store.count(KB) == EMBED_BATCH + 10


def test_embedder_returning_wrong_dimensions_is_refused(tmp_path: Path) -> None:
    class Short(HashingEmbedder):
        def embed(self, texts: list[str]) -> list[list[float]]:
            return [v[:-1] for v in super().embed(texts)]

    store = KnowledgeStore(path=tmp_path / "db", embedder=Short())
    with pytest.raises(EmbeddingError, match="dimensions"):
        store.add_bytes(KB, "s.md", STORAGE.encode())
    assert store.count(KB) == 0


# -- embedding model guard ---------------------------------------------------------------------


def test_other_embedding_model_is_refused(tmp_path: Path, docs: Path) -> None:
    KnowledgeStore(path=tmp_path / "db", embedder=HashingEmbedder(name="model-a")).add(KB, [docs])
    other = KnowledgeStore(path=tmp_path / "db", embedder=HashingEmbedder(name="model-b"))

    with pytest.raises(EmbeddingMismatch) as info:
        other.search(KB, "pianos")
    assert "model-a" in str(info.value) and "model-b" in str(info.value)
    assert (info.value.stored, info.value.current) == ("model-a", "model-b")
    with pytest.raises(EmbeddingMismatch):
        other.add(KB, [docs])
    with pytest.raises(EmbeddingMismatch):
        other.add_bytes(KB, "new.md", STORAGE.encode())
    with pytest.raises(EmbeddingMismatch):
        other.count(KB)
    # the collection is untouched and still works with its own model
    same = KnowledgeStore(path=tmp_path / "db", embedder=HashingEmbedder(name="model-a"))
    assert same.count(KB) == 4
    # other collections are free to use the other model
    assert other.add_bytes("second", "s.md", STORAGE.encode()).status == "added"


# -- searching ---------------------------------------------------------------------------------


def test_search_k_and_min_score(store: KnowledgeStore, docs: Path) -> None:
    store.add(KB, [docs])
    hits = store.search(KB, "upright piano move costs pounds", k=10)
    assert len(hits) == 4
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    threshold = hits[1].score + 1e-6
    assert [
        h.chunk_id
        for h in store.search(KB, "upright piano move costs pounds", k=10, min_score=threshold)
    ] == [hits[0].chunk_id]
    assert store.search(KB, "   ") == []
    assert store.search(KB, "pianos", k=0) == []


def test_search_unknown_collection(store: KnowledgeStore) -> None:
    with pytest.raises(UnknownCollection):
        store.search("nobody", "pianos")
    assert store.count("nobody") == 0


def test_invalid_collection_name(store: KnowledgeStore) -> None:
    with pytest.raises(KnowledgeError, match="invalid collection name"):
        store.add_bytes("x", "a.md", STORAGE.encode())


# -- store modes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_store_unavailable(embedder: HashingEmbedder) -> None:
    store = KnowledgeStore(url=f"http://127.0.0.1:{free_port()}", embedder=embedder)
    with pytest.raises(StoreUnavailable):
        store.search(KB, "pianos")
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_server_mode_without_path_cannot_load(embedder: HashingEmbedder) -> None:
    store = KnowledgeStore(url="http://127.0.0.1:1", embedder=embedder)
    with pytest.raises(KnowledgeError, match="path="):
        store.add_bytes(KB, "a.md", STORAGE.encode())


def test_path_or_url_required() -> None:
    with pytest.raises(ValueError, match="path"):
        KnowledgeStore()


def test_emptied_collection_searches_empty(store: KnowledgeStore, docs: Path) -> None:
    store.add(KB, [docs / "storage.md"])
    store.remove(KB, "storage.md")
    assert store.count(KB) == 0
    assert store.search(KB, "heated warehouse", k=50) == []


def test_searches_run_while_documents_change(store: KnowledgeStore, docs: Path) -> None:
    store.add(KB, [docs])
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            try:
                hits = store.search(KB, "heated warehouse storage", k=2)
                assert hits and all(h.doc_id for h in hits)
            except BaseException as exc:  # collected and re-raised in the test thread
                errors.append(exc)
                return

    readers = [threading.Thread(target=search) for _ in range(2)]
    for reader in readers:
        reader.start()
    for round_ in range(10):
        write(docs, {"pricing.md": PRICING.replace("400", str(400 + round_))})
        store.sync(KB, docs)
    stop.set()
    for reader in readers:
        reader.join()
    assert errors == []
    assert store.show(KB, "pricing.md").info.version == 10
    assert store.count(KB) == 4
