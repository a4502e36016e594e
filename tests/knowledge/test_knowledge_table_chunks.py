"""A table too long for one chunk: split between rows, every chunk that continues it starts
with its header row; and what the loaders hand the chunker for a table."""

from __future__ import annotations

from pathlib import Path

from knowledge import KnowledgeStore
from knowledge.chunking import Chunker
from knowledge.loaders import load_document
from knowledge.models import Chunk, Document, Section
from knowledge.tokens import WordPieceCounter
from tests.knowledge.conftest import Builder

HEADER = "suburb | zone | fee"


def big_table(rows: int) -> bytes:
    lines = ["# Delivery fees", "", "| suburb | zone | fee |", "|---|---|---:|"]
    lines += [f"| Suburb{i} | Z{i % 7} | {i * 3} |" for i in range(rows)]
    return "\n".join(lines).encode()


def table_rows(chunks: list[Chunk], header: str) -> list[str]:
    """The rows of every chunk, in order, each chunk's leading header row left out."""
    rows: list[str] = []
    for chunk in chunks:
        lines = chunk.text.split("\n")
        assert lines[0] == header, chunk.text[:80]
        rows += lines[1:]
    return rows


def test_every_chunk_of_a_long_table_starts_with_its_header_row(
    counter: WordPieceCounter,
) -> None:
    chunker = Chunker(counter)
    chunks = chunker.chunk("bigtable.md", load_document("bigtable.md", big_table(3000)))
    assert len(chunks) > 100
    # each row once, whole, in order: rows are never split nor repeated
    assert table_rows(chunks, HEADER) == [f"Suburb{i} | Z{i % 7} | {i * 3}" for i in range(3000)]
    for chunk in chunks:
        assert chunk.tokens <= chunker.max_tokens
        assert chunk.tokens == counter.count(chunk.embed_text) + 2
    (found,) = [c for c in chunks if "\nSuburb2500 |" in c.text]
    assert found.embed_text.startswith(f"Delivery fees\n{HEADER}\n")


def test_a_table_after_text_keeps_its_header_with_its_first_row(counter: WordPieceCounter) -> None:
    """A header row that would fit after the text, but not with a row, starts the next chunk."""
    rows = [f"Suburb{i} | Z{i % 7} | {i * 3}" for i in range(60)]
    chunker = Chunker(counter, max_tokens=220, overlap_tokens=0)
    budget = 220 - 2 - counter.count("Fees")
    words = ["fees"]
    while counter.count(" ".join([*words, "apply"])) + counter.count(HEADER) <= budget:
        words.append("apply")
    text = " ".join(words)
    assert counter.count(text) + counter.count(HEADER) <= budget  # the header alone fits
    assert counter.count(text) + counter.count(HEADER) + counter.count(rows[0]) > budget
    section = Section((), text + "\n\n" + HEADER + "\n" + "\n".join(rows))
    chunks = chunker.chunk("fees", Document("Fees", (section,)))
    assert chunks[0].text == text
    assert table_rows(chunks[1:], HEADER) == rows


def test_a_row_longer_than_a_chunk_is_cut_and_each_piece_has_the_header(
    counter: WordPieceCounter,
) -> None:
    long_row = "Suburb1 | Z1 | " + " ".join(f"note{i}" for i in range(400))
    text = f"{HEADER}\nSuburb0 | Z0 | 0\n{long_row}\nSuburb2 | Z2 | 6"
    chunker = Chunker(counter, max_tokens=64, overlap_tokens=0)
    chunks = chunker.chunk("fees", Document("", (Section((), text),)))
    assert len(chunks) > 3
    assert all(c.text.startswith(HEADER + "\n") for c in chunks)
    assert chunks[2].text.startswith(HEADER + "\nnote")
    assert all(c.tokens <= 64 for c in chunks)
    assert chunks[-1].text.endswith("\nSuburb2 | Z2 | 6")


def test_a_long_paragraph_that_is_not_a_table_is_chunked_as_text(
    counter: WordPieceCounter,
) -> None:
    text = "Fees | charges apply.\n" + "\n".join(f"Line {i} of plain text." for i in range(200))
    chunks = Chunker(counter).chunk("notes", Document("", (Section((), text),)))
    assert len(chunks) > 1
    assert not chunks[1].text.startswith("Fees | charges apply.")


def test_a_table_is_a_paragraph_of_its_own_in_markdown() -> None:
    data = b"Fees:\n| suburb | fee |\n|---|---|\n| Kent | 3 |\nAsk us for others.\n"
    (section,) = load_document("fees.md", data).sections
    assert section.text == "Fees:\n\nsuburb | fee\nKent | 3\n\nAsk us for others."


def test_an_html_table_is_one_paragraph_of_rows_chunked_with_its_header(
    counter: WordPieceCounter,
) -> None:
    rows = "".join(f"<tr><td>Suburb{i}</td><td>{i * 3}</td></tr>" for i in range(400))
    page = f"""<html><body><h1>Fees</h1><p>Per suburb.</p><table>
    <thead><tr><th>suburb</th><th>fee</th></tr></thead><tbody>{rows}</tbody></table>
    <p>Ask us for others.</p></body></html>"""
    (section,) = load_document("fees.html", page.encode()).sections
    paragraphs = section.text.split("\n\n")
    assert paragraphs[0] == "Per suburb."
    assert paragraphs[1].split("\n")[:3] == ["suburb | fee", "Suburb0 | 0", "Suburb1 | 3"]
    assert paragraphs[2] == "Ask us for others."
    chunks = Chunker(counter).chunk("fees.html", Document("Fees", (section,)))
    assert len(chunks) > 3
    assert all(c.text.startswith("suburb | fee\n") for c in chunks[1:])


def test_a_docx_table_row_is_one_line_and_chunks_keep_its_header(
    make_docx: Builder, counter: WordPieceCounter
) -> None:
    rows = [["suburb", "zone", "fee"]] + [
        [f"Suburb{i}", f"Z{i % 7}", str(i * 3)] for i in range(150)
    ]
    rows[1][2] = "0\nfree on weekdays"  # two paragraphs in one cell
    document = load_document("fees.docx", make_docx([("h1", "Fees"), ("table", rows)]))
    (section,) = document.sections
    assert section.text.split("\n")[:2] == [HEADER, "Suburb0 | Z0 | 0 free on weekdays"]
    chunks = Chunker(counter).chunk("fees.docx", document)
    assert len(chunks) > 3
    assert len(table_rows(chunks, HEADER)) == 150


def test_show_lists_the_header_first_in_every_chunk_of_a_long_table(
    store: KnowledgeStore, tmp_path: Path
) -> None:
    """The report: ``relay knowledge show bigtable.md`` listed chunks of bare rows."""
    path = tmp_path / "bigtable.md"
    path.write_bytes(big_table(3000))
    (result,) = store.add("movers", [path]).files
    assert result.status == "added"
    detail = store.show("movers", "bigtable.md")
    assert len(detail.chunks) == result.chunks > 100
    assert all(chunk.preview.startswith(f"{HEADER} Suburb") for chunk in detail.chunks)
