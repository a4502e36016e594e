"""The loading process: documents parsed, chunked and embedded in a child on idle cores, with
the same chunks and vectors as in process; bad files, crashes, idleness and a killed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from unittest import mock

import pytest

from knowledge import KnowledgeStore
from knowledge.embedders import LocalEmbedder
from knowledge.errors import DocumentError
from knowledge.loading import LoadingProcess
from knowledge.testing import HashingEmbedder
from relay.config import Settings
from relay.services.retrieval import open_knowledge

KB = "movers"
SHIPPED = Path(__file__).resolve().parents[2] / "data" / "knowledge" / "piano-removals"


@pytest.fixture
def stores(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> Iterator[tuple[KnowledgeStore, KnowledgeStore]]:
    """The same real model, loading in process and in a loading process."""
    here = KnowledgeStore(path=tmp_path / "here", embedder=local_embedder)
    there = KnowledgeStore(path=tmp_path / "there", embedder=local_embedder, loading_process=True)
    with here, there:
        yield here, there


def _gone(pid: int) -> bool:
    """The process has exited (a zombie counts: no parent reaped it yet)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: reaped while it was read
        return True
    return status.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_documents_load_to_the_same_chunks_and_vectors(
    stores: tuple[KnowledgeStore, KnowledgeStore],
) -> None:
    here, there = stores
    assert here.loading is None and there.loading is not None
    files = sorted(SHIPPED.glob("*.md"))[:3]
    assert len(files) == 3
    report_here = here.add(KB, files)
    report_there = there.add(KB, files)
    assert [(f.doc_id, f.status, f.chunks) for f in report_there.files] == [
        (f.doc_id, f.status, f.chunks) for f in report_here.files
    ]
    assert all(f.status == "added" for f in report_there.files)
    _, rows_here = here.snapshot(KB)
    _, rows_there = there.snapshot(KB)
    by_id = {hit.chunk_id: (hit.text, hit.heading_path, vector) for hit, vector in rows_here}
    assert {
        hit.chunk_id: (hit.text, hit.heading_path, vector) for hit, vector in rows_there
    } == by_id
    assert there.loading.started == 1  # one child for all three documents
    # a search embeds in the store's own process, in the same space
    question = "How much does it cost to move an upright piano?"
    assert [h.chunk_id for h in there.search(KB, question, k=3)] == [
        h.chunk_id for h in here.search(KB, question, k=3)
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="SCHED_IDLE is Linux's")
def test_the_loading_process_runs_on_idle_cores_only(
    stores: tuple[KnowledgeStore, KnowledgeStore],
) -> None:
    _, there = stores
    assert there.loading is not None
    assert there.loading.call(os.sched_getscheduler, 0) == os.SCHED_IDLE
    assert there.loading.call(os.getpid) != os.getpid()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the store's process is untouched


def test_off_linux_the_whole_process_runs_nicer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a nice level is the process's (macOS), the loading process and the commands lower
    the whole process; they are processes of their own."""
    from knowledge import priority

    calls: list[int] = []
    monkeypatch.setattr(priority.sys, "platform", "darwin")
    monkeypatch.setattr(priority.os, "nice", calls.append, raising=False)
    assert priority.run_on_idle_cpu() == "nice"
    assert calls == [priority.BACKGROUND_NICENESS]
    monkeypatch.delattr(priority.os, "nice")
    assert priority.run_on_idle_cpu() == "unchanged"


def test_a_bad_file_fails_with_the_same_reason(
    stores: tuple[KnowledgeStore, KnowledgeStore],
) -> None:
    here, there = stores
    for data in (b"not a pdf", b"%PDF-1.4\n" + b"\x00" * 64):
        with pytest.raises(DocumentError) as in_process:
            here.add_bytes(KB, "leaflet.pdf", data)
        with pytest.raises(DocumentError) as in_child:
            there.add_bytes(KB, "leaflet.pdf", data)
        assert (in_child.value.filename, in_child.value.reason) == (
            in_process.value.filename,
            in_process.value.reason,
        )
    assert there.loading is not None and there.loading.started == 1


def test_a_crashed_loading_process_fails_the_document_and_the_next_one_loads(
    stores: tuple[KnowledgeStore, KnowledgeStore],
) -> None:
    _, there = stores
    loading = there.loading
    assert loading is not None
    pid = loading.call(os.getpid)
    with pytest.raises(BrokenProcessPool):
        loading.call(os._exit, 3)
    assert _wait_for(lambda: _gone(pid))
    # a document the child dies on is failed with a reason, not raised as a crash
    crashing = mock.patch.object(LoadingProcess, "call", side_effect=BrokenProcessPool("gone"))
    stopped = pytest.raises(DocumentError, match="the loading process stopped while reading it")
    with crashing, stopped:
        there.add_bytes(KB, "storage.md", b"# Storage\nHeated and dry.")
    result = there.add_bytes(KB, "storage.md", b"# Storage\nHeated and dry.")
    assert (result.status, result.chunks) == ("added", 1)
    assert loading.started == 2
    assert [h.doc_id for h in there.search(KB, "is the storage heated", k=1)] == ["storage.md"]


def test_pypdfs_warnings_in_the_loading_process_are_the_files_reason_not_stderr_lines(
    local_embedder: LocalEmbedder,
    make_pdf: Callable[..., bytes],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The child has no logging set up, so Python's last resort wrote pypdf's warnings for a
    cut-off PDF ("EOF marker not found") to the server's stderr, without the file's name."""
    data = make_pdf([["Truncated document text"]])
    loading = LoadingProcess(local_embedder, max_tokens=220, overlap_tokens=40)
    try:
        with pytest.raises(DocumentError) as failed:
            loading.chunk("broken.pdf", "broken.pdf", data[: len(data) * 2 // 3])
    finally:
        loading.close()
    assert failed.value.reason.startswith("corrupt PDF (EOF marker not found; ")
    out, err = capfd.readouterr()
    assert "EOF marker" not in out + err


def test_the_loading_process_exits_when_idle(local_embedder: LocalEmbedder) -> None:
    loading = LoadingProcess(local_embedder, max_tokens=220, overlap_tokens=40, idle_timeout=0)
    try:
        pid = loading.call(os.getpid)
        assert _wait_for(lambda: not loading.running)
        assert _wait_for(lambda: _gone(pid))
        assert loading.call(os.getpid) != pid  # the next job starts another
        assert loading.started == 2
    finally:
        loading.close()
    assert not loading.running


def test_the_loading_process_exits_with_its_parent(model_cache: Path) -> None:
    """A parent killed outright cannot stop its pool: the child notices and exits."""
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from knowledge.embedders import LocalEmbedder
        from knowledge.loading import LoadingProcess

        embedder = LocalEmbedder(cache_dir=Path({str(model_cache)!r}))
        loading = LoadingProcess(embedder, max_tokens=220, overlap_tokens=40)
        print(loading.call(os.getpid), flush=True)
        time.sleep(600)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # its resource tracker's complaint, once it is killed
        text=True,
    ) as parent:
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            assert not _gone(child)
        finally:
            parent.send_signal(signal.SIGKILL)
            parent.wait(10)
    assert _wait_for(lambda: _gone(child))


def test_the_server_loads_in_a_process_of_its_own(
    make_settings: Callable[..., Settings],
) -> None:
    served = open_knowledge(make_settings(), serving=True).store
    command_line = open_knowledge(make_settings()).store
    api = open_knowledge(
        make_settings(RELAY_EMBEDDINGS="openai", OPENAI_API_KEY="sk-test"), serving=True
    ).store
    try:
        assert served.loading is not None
        assert command_line.loading is None  # `relay knowledge add` is a process of its own
        assert api.loading is None  # an embedding API spends no local CPU
    finally:
        for store in (served, command_line, api):
            store.close()


def test_only_a_local_embedder_gets_a_loading_process(tmp_path: Path) -> None:
    with KnowledgeStore(
        path=tmp_path / "db", embedder=HashingEmbedder(), loading_process=True
    ) as store:
        assert store.loading is None
        assert store.add_bytes(KB, "storage.md", b"# Storage\nHeated.").status == "added"
