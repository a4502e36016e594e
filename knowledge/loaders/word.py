"""DOCX: paragraphs and tables in body order; headings from the Heading and Title styles.

A DOCX is a ZIP package, and a small one can unpack to a great deal: 100 KB holding a 48 MB
``word/document.xml`` of empty paragraphs took 2.7 GB to parse. python-docx reads every part
into memory and parses the XML ones into trees several times their size, so the package's
declared sizes (which :mod:`zipfile` holds it to: a part that unpacks to more fails its CRC
check) are checked before anything is unpacked; see :data:`MAX_UNPACKED_BYTES` and
:data:`MAX_XML_BYTES`.
"""

from __future__ import annotations

import io
import re
import zipfile

from knowledge.errors import DocumentError
from knowledge.loaders.sections import SectionBuilder, title_from_filename
from knowledge.models import Document

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)

#: The most a DOCX's parts may unpack to, all together. Pictures are stored compressed
#: already, so a 20 MB DOCX full of them (the store's file limit) unpacks to about 20 MB;
#: this leaves room for uncompressed formats (BMP, EMF) besides.
MAX_UNPACKED_BYTES = 64_000_000
#: The most its XML parts (text, styles, relationships) may unpack to: what python-docx parses
#: into trees. Word's XML compresses about tenfold; 10 MB of it holds some 1,500 pages of plain
#: text (10,000 paragraphs of 45 words are 6.8 MB), fewer with heavy formatting. At worst (an
#: element every 6 bytes: empty paragraphs) 10 MB takes about 360 MB and 30 s to read.
MAX_XML_BYTES = 10_000_000


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f}"


def _check_unpacked_size(filename: str, archive: zipfile.ZipFile) -> None:
    """Refuse a package that unpacks to more than the limits, before unpacking any of it."""
    entries = archive.infolist()
    total = sum(entry.file_size for entry in entries)
    if total > MAX_UNPACKED_BYTES:
        raise DocumentError(
            filename,
            f"DOCX unpacks to {_megabytes(total)} MB, over the limit of "
            f"{_megabytes(MAX_UNPACKED_BYTES)} MB",
        )
    xml = sum(e.file_size for e in entries if e.filename.lower().endswith((".xml", ".rels")))
    if xml > MAX_XML_BYTES:
        raise DocumentError(
            filename,
            f"DOCX unpacks to {_megabytes(xml)} MB of XML, over the limit of "
            f"{_megabytes(MAX_XML_BYTES)} MB",
        )


def load_docx(filename: str, data: bytes) -> Document:
    """Load a ``.docx`` file (Word 2007+; the old binary ``.doc`` is not supported).

    Refuses one that unpacks to more than :data:`MAX_UNPACKED_BYTES`, or to more than
    :data:`MAX_XML_BYTES` of XML (a "zip bomb").
    """
    import docx
    from docx.enum.style import WD_STYLE_TYPE
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_unpacked_size(filename, archive)
    except zipfile.BadZipFile as exc:
        raise DocumentError(filename, "corrupt DOCX: not a ZIP package") from exc
    try:
        word = docx.Document(io.BytesIO(data))
        core_title = word.core_properties.title
        # Paragraph.style looks the style up among all of them, and the default one by
        # scanning them all again: once per paragraph, that was 4 ms each (73 s for a
        # document of 10,000 paragraphs). The names are read once here instead.
        default_style = word.styles.default(WD_STYLE_TYPE.PARAGRAPH)
        default_name = (default_style.name if default_style is not None else "") or ""
        style_names = {
            style.style_id: style.name or ""
            for style in word.styles
            if style.type == WD_STYLE_TYPE.PARAGRAPH
        }
        blocks = word.iter_inner_content()
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise DocumentError(filename, f"corrupt DOCX ({exc})") from exc

    builder = SectionBuilder()
    style_title: str | None = None
    for block in blocks:
        if isinstance(block, Table):
            rows = []
            for row in block.rows:
                # a row is one line, however many paragraphs a cell has (knowledge.chunking)
                cells = [" ".join(cell.text.split()) for cell in row.cells]
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
        style_id = block._p.style
        style = style_names.get(style_id, default_name) if style_id else default_name
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
