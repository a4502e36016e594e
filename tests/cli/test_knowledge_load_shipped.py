"""``relay knowledge load-shipped`` adds and updates the shipped documents and deletes nothing (it
mirrored the folder: every document an editor had added was deleted, without a question); a
document an editor changed since it was shipped is kept. The knowledge commands refuse a data
directory that does not exist (they made a new, empty store there); ``add`` of a folder with
nothing to load says so."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from knowledge import SUPPORTED_SUFFIXES, AsyncKnowledge, KnowledgeStore
from knowledge.testing import HashingEmbedder
from relay.cli import knowledge as cli
from relay.cli.main import main
from relay.config import Settings
from tests.conftest import SHIPPED_PROMPTS

LEGEND = "(! = failed, + added, ~ updated, = unchanged)"
_SECONDS = r" in \d+\.\ds\n"


@pytest.fixture
def data(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory with two shipped piano-removals documents, the shipped piano-removals
    agent, and a store embedding with the hashing embedder (no model to load)."""
    data = tmp_path / "data"
    shipped = data / "knowledge" / "piano-removals"
    shipped.mkdir(parents=True)
    (shipped / "about.md").write_text("# About\n\nFamily firm since 1952.\n", encoding="utf-8")
    (shipped / "pricing.md").write_text("# Pricing\n\nUprights from 300.\n", encoding="utf-8")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    shutil.copy(SHIPPED_PROMPTS / "piano-removals.toml", prompts)
    monkeypatch.setenv("RELAY_DATA_DIR", str(data))
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(prompts))
    monkeypatch.setattr(cli, "run_on_idle_cpu", lambda: None)

    def open_knowledge(settings: Settings, *, serving: bool = False) -> AsyncKnowledge:
        return AsyncKnowledge(
            KnowledgeStore(path=settings.knowledge_path, embedder=HashingEmbedder())
        )

    monkeypatch.setattr("relay.services.retrieval.open_knowledge", open_knowledge)
    return data


def store_of(data: Path) -> KnowledgeStore:
    return KnowledgeStore(path=data / "chroma", embedder=HashingEmbedder())


def test_load_shipped_keeps_the_documents_editors_added(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["knowledge", "load-shipped"]) == 0
    capsys.readouterr()
    with store_of(data) as store:
        assert (
            store.add_bytes("piano-removals", "harp.md", b"# Harps\n\nWe move harps.").status
            == "added"
        )

    assert main(["knowledge", "load-shipped"]) == 0
    out, err = capsys.readouterr()
    folder = data / "knowledge" / "piano-removals"
    assert err.splitlines() == [
        f"piano-removals: {folder} -> 'piano-removals' {LEGEND}:",
        "[##########----------] 1/2 = about.md  (1 chunks)",
        "[####################] 2/2 = pricing.md  (1 chunks)",
    ]
    assert re.fullmatch("0 added, 0 updated, 2 unchanged, 0 kept, 0 failed" + _SECONDS, out), out
    with store_of(data) as store:
        assert [d.doc_id for d in store.list_documents("piano-removals")] == [
            "about.md", "harp.md", "pricing.md",
        ]  # fmt: skip
        assert store.count("piano-removals") == 3


def test_a_document_an_editor_changed_is_kept_until_the_shipped_file_changes(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped file replaces an editor's version of it only when it is itself new or
    changed since it was loaded (a newer release): re-running the command undoes no edit."""
    folder = data / "knowledge" / "piano-removals"
    assert main(["knowledge", "load-shipped"]) == 0
    with store_of(data) as store:
        edited = store.add_bytes("piano-removals", "pricing.md", b"# Pricing\n\nUprights from 350.")
    assert (edited.status, edited.version) == ("updated", 2)
    capsys.readouterr()

    assert main(["knowledge", "load-shipped"]) == 0
    out, err = capsys.readouterr()
    [line] = [line for line in err.splitlines() if "pricing.md" in line]
    assert line.startswith(
        "[####################] 2/2 = pricing.md  (kept: changed since it was shipped, v2 loaded "
    ), line
    assert line.endswith("; `relay knowledge add` the file to load it again)")
    assert re.fullmatch("0 added, 0 updated, 1 unchanged, 1 kept, 0 failed" + _SECONDS, out), out
    with store_of(data) as store:
        assert store.show("piano-removals", "pricing.md").info.version == 2

    # a newer release of the shipped file: it is loaded over the editor's version
    (folder / "pricing.md").write_text("# Pricing\n\nUprights from 320.\n", encoding="utf-8")
    assert main(["knowledge", "load-shipped"]) == 0
    out, _ = capsys.readouterr()
    assert re.fullmatch("0 added, 1 updated, 1 unchanged, 0 kept, 0 failed" + _SECONDS, out), out
    with store_of(data) as store:
        [hit] = store.search("piano-removals", "Uprights from 320.", k=1)
        assert (hit.doc_id, hit.doc_version, hit.text) == ("pricing.md", 3, "Uprights from 320.")


def test_load_shipped_without_shipped_documents_says_where_it_looked(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(data / "knowledge")
    assert main(["knowledge", "load-shipped"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "relay knowledge: piano-removals: no shipped documents at "
        f"{data / 'knowledge' / 'piano-removals'}\n",
    )


@pytest.mark.parametrize(
    "args", [["list"], ["add", "{doc}"], ["load-shipped"], ["search", "stairs"]],
    ids=lambda args: args[0],
)  # fmt: skip
def test_a_data_directory_that_does_not_exist_is_refused_in_one_line(
    args: list[str],
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As ``relay serve`` refuses it (a configuration error, exit 2), rather than a new, empty
    store there that no server reads; and nothing is created there."""
    missing = tmp_path / "nodata"
    monkeypatch.setenv("RELAY_DATA_DIR", str(missing))
    doc = data / "knowledge" / "piano-removals" / "about.md"
    assert main(["knowledge", *(a.format(doc=doc) for a in args)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        f"relay: configuration error: the data directory {missing} does not exist "
        "(RELAY_DATA_DIR)\n",
    )
    assert not missing.exists()


def test_a_relative_data_directory_that_does_not_exist_says_where_it_looked(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY_DATA_DIR", "dta")
    assert main(["knowledge", "list"]) == 2
    assert capsys.readouterr().err == (
        f"relay: configuration error: the data directory dta does not exist (RELAY_DATA_DIR, "
        f"relative to {tmp_path}: run relay from the folder that holds data/, or set "
        "RELAY_DATA_DIR to it)\n"
    )


def test_add_of_a_folder_with_nothing_to_load_says_so(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.md").write_text("# Hidden\n", encoding="utf-8")  # skipped, as the store does
    assert main(["knowledge", "add", str(empty)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"relay knowledge: no supported files found in {empty} (the types: "
        f"{', '.join(SUPPORTED_SUFFIXES)})\n"
    )
