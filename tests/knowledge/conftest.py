"""Fixtures and real sample-file builders for the knowledge tests."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from knowledge import KnowledgeStore, LocalEmbedder
from knowledge.testing import HashingEmbedder
from knowledge.tokens import WordPieceCounter


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def build_pdf(pages: Sequence[Sequence[str]], *, title: str | None = None) -> bytes:
    """A real, minimal PDF 1.4 file: one Helvetica text line per string, pages in order."""
    objects: list[bytes] = []
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    info_id = font_id + 1
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for page_id, lines in zip(page_ids, pages, strict=True):
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
        for line in lines:
            ops.append(f"{_pdf_string(line)} Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {page_id + 1} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title {_pdf_string(title or '')} >>".encode())
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info_id} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def build_docx(blocks: Sequence[tuple[str, str | list[list[str]]]], *, title: str = "") -> bytes:
    """A real DOCX made with python-docx. Blocks are ``("h1".."h3" | "p" | "list", text)``
    or ``("table", rows)``."""
    import docx

    document = docx.Document()
    document.core_properties.title = title
    for kind, value in blocks:
        if kind == "table":
            assert isinstance(value, list)
            table = document.add_table(rows=len(value), cols=len(value[0]))
            for r, row in enumerate(value):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
        elif kind.startswith("h"):
            document.add_heading(str(value), level=int(kind[1:]))
        elif kind == "list":
            document.add_paragraph(str(value), style="List Bullet")
        else:
            document.add_paragraph(str(value))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


Builder = Callable[..., bytes]


@pytest.fixture
def make_pdf() -> Builder:
    """Builds a real minimal PDF: ``make_pdf([["line", ...], ...], title=...)``."""
    return build_pdf


@pytest.fixture
def make_docx() -> Builder:
    """Builds a real DOCX: ``make_docx([("h1", "Title"), ("p", "text")], title=...)``."""
    return build_docx


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def store(tmp_path: Path, embedder: HashingEmbedder) -> Iterator[KnowledgeStore]:
    with KnowledgeStore(path=tmp_path / "db", embedder=embedder) as store:
        yield store


@pytest.fixture(scope="session")
def counter() -> WordPieceCounter:
    return WordPieceCounter()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache for this test session (starts empty; the first load derives into it)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def local_embedder(model_cache: Path) -> LocalEmbedder:
    """The real offline model (quantised, derived into ``model_cache``), loaded once for the
    whole session."""
    embedder = LocalEmbedder(cache_dir=model_cache)
    embedder.load()
    return embedder


@pytest.fixture(scope="session")
def packaged_embedder() -> LocalEmbedder:
    """The packaged model as shipped (float32 activations): the vectors of before."""
    embedder = LocalEmbedder(quantize=False)
    embedder.load()
    return embedder
