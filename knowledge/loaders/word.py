"""DOCX: paragraphs and tables in body order; headings from the Heading and Title styles."""

from __future__ import annotations

import io
import re
import zipfile

from knowledge.errors import DocumentError
from knowledge.loaders.sections import SectionBuilder, title_from_filename
from knowledge.models import Document

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def load_docx(filename: str, data: bytes) -> Document:
    """Load a ``.docx`` file (Word 2007+; the old binary ``.doc`` is not supported)."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DocumentError(filename, "corrupt DOCX: not a ZIP package")
    try:
        word = docx.Document(io.BytesIO(data))
        core_title = word.core_properties.title
        blocks = list(word.iter_inner_content())
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DocumentError(filename, f"corrupt DOCX ({exc})") from exc

    builder = SectionBuilder()
    style_title: str | None = None
    for block in blocks:
        if isinstance(block, Table):
            rows = []
            for row in block.rows:
                cells = [cell.text.strip() for cell in row.cells]
                # merged cells repeat; keep each text once per row
                unique = [c for i, c in enumerate(cells) if c and c not in cells[:i]]
                if unique:
                    rows.append(" | ".join(unique))
            builder.paragraph("\n".join(rows))
            continue
        assert isinstance(block, Paragraph)
        text = block.text.strip()
        if not text:
            continue
        style = (block.style.name if block.style is not None else "") or ""
        heading = _HEADING_STYLE.match(style.strip())
        if style == "Title":
            style_title = style_title or text
            builder.heading(1, text)
        elif heading:
            builder.heading(int(heading.group(1)), text)
        elif style.lower().startswith("list"):
            builder.paragraph(f"- {text}")
        else:
            builder.paragraph(text)
    title = (core_title or "").strip() or style_title or builder.first_title
    return builder.build(title or title_from_filename(filename))
