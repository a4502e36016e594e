"""``relay knowledge add / sync / load-shipped`` load documents on idle cores only: an editor
running them on a box that serves calls leaves the cores to the calls. Their progress lines: one
counted line per file, a sync's deletions outside the count, a broken PDF's pypdf warnings in
its own line rather than as log lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledge import KnowledgeStore
from knowledge.testing import HashingEmbedder
from relay.cli import knowledge as cli
from relay.cli.main import main
from tests.knowledge.conftest import build_pdf

REPO = Path(__file__).resolve().parents[2]
LEGEND = "(! = failed, + added, ~ updated, = unchanged)"


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


@pytest.fixture
def movers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KnowledgeStore]:
    """``relay knowledge`` on a store of its own (collection ``movers``), at normal priority."""
    store = KnowledgeStore(path=tmp_path / "kb", embedder=HashingEmbedder())

    def context(args: object, *, existing_ok: bool = True) -> tuple[None, KnowledgeStore, str]:
        return None, store, "movers"

    monkeypatch.setattr(cli, "run_on_idle_cpu", lambda: None)
    monkeypatch.setattr(cli, "_context", context)
    with store:
        yield store


def test_sync_counts_the_files_and_lists_deletions_apart(
    movers: KnowledgeStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deletion is not one of the folder's files: it was counted as one (``3/3 - parking.md``
    after ``2/2``, with a mark no legend gave)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in [("access.md", "Stairs."), ("booking.md", "Book."), ("parking.md", "Park.")]:
        (docs / name).write_text(f"# {name}\n\n{text}\n", encoding="utf-8")
    assert main(["knowledge", "sync", str(docs)]) == 0
    (docs / "parking.md").unlink()
    capsys.readouterr()

    assert main(["knowledge", "sync", str(docs)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"Mirroring {docs} into 'movers' {LEGEND}:",
        "[##########----------] 1/2 = access.md  (1 chunks)",
        "[####################] 2/2 = booking.md  (1 chunks)",
        "deleted parking.md  (not in the folder; 1 chunks removed)",
    ]
    assert re.fullmatch(
        r"0 added, 0 updated, 2 unchanged, 1 deleted, 0 failed in \d+\.\ds\n", out
    ), out


def test_add_counts_a_missing_file_as_the_store_reports_it(
    movers: KnowledgeStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "storage.md").write_text("# Storage\n\nHeated.\n", encoding="utf-8")
    missing = tmp_path / "missing.md"
    assert main(["knowledge", "add", str(missing), str(tmp_path / "storage.md")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"Loading into 'movers' {LEGEND}:",
        "[##########----------] 1/2 ! missing.md  unreadable: No such file or directory",
        "[####################] 2/2 + storage.md  (1 chunks)",
    ]


def test_add_names_a_broken_pdfs_pypdf_warning_in_its_line_not_as_a_log_line(
    tmp_path: Path,
) -> None:
    """As an editor runs it (its own process, relay's JSON logging on stderr): pypdf's
    ``{"event":"EOF marker not found","logger":"pypdf._reader",...}`` landed in the progress."""
    pdf = build_pdf([["Every move is insured."]])
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(pdf[: len(pdf) * 2 // 3])
    (tmp_path / "data").mkdir()
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_", "DATABASE_URL", "CHROMA_URL"))
    }
    environ["RELAY_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "relay", "knowledge", "add", str(broken), "-c", "piano-removals"],
        capture_output=True, text=True, cwd=REPO, env=environ, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"Loading into 'piano-removals' {LEGEND}:"
    assert lines[1].startswith(
        "[####################] 1/1 ! broken.pdf  corrupt PDF (EOF marker not found; "
    )
    assert len(lines) == 2, done.stderr
    assert "0 added, 0 updated, 0 unchanged, 0 deleted, 1 failed" in done.stdout
