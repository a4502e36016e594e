"""PDF: the text layer of every page, through pypdf."""

from __future__ import annotations

import io
import re

from knowledge.errors import DocumentError
from knowledge.loaders.sections import SectionBuilder, title_from_filename
from knowledge.models import Document

_HYPHENATED = re.compile(r"(\w)-\n(?=[a-z])")
_BULLET = re.compile(r"^\s*(?:[-•*▪◦·]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"[.!?:;]\s*$")


def _reflow(page_text: str) -> str:
    """Join the visual lines of a page into paragraphs.

    pypdf returns one line per printed line. A line that ends a sentence and is clearly
    shorter than the page's typical line ends its paragraph, a short unpunctuated first line
    (a heading) stands alone, and bullets start new paragraphs.
    """
    text = _HYPHENATED.sub(r"\1", page_text.replace("\r", ""))
    lines = [line.strip() for line in text.split("\n")]
    widths = sorted(len(line) for line in lines if line)
    if not widths:
        return ""
    typical = widths[len(widths) * 3 // 4]
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if not line:
            paragraphs.append([])
            continue
        if _BULLET.match(line) and paragraphs[-1]:
            paragraphs.append([])
        starts_paragraph = not paragraphs[-1]
        paragraphs[-1].append(line)
        short = len(line) < typical * 0.8
        ends_sentence = _SENTENCE_END.search(line) is not None
        # a short line that ends a sentence ends its paragraph; a short opening line
        # without punctuation is a heading or a label
        if short and (ends_sentence or (starts_paragraph and len(line) < typical * 0.6)):
            paragraphs.append([])
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def load_pdf(filename: str, data: bytes) -> Document:
    """Load a ``.pdf`` file. Scanned PDFs without a text layer are refused (no OCR)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise DocumentError(filename, "corrupt PDF: no %PDF header")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(filename, "PDF is password-protected")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = reader.metadata.title if reader.metadata else None
    except DocumentError:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentError(filename, f"corrupt PDF ({exc})") from exc

    builder = SectionBuilder()
    for page in pages:
        builder.paragraph(_reflow(page))
    document = builder.build(str(meta_title or "").strip() or title_from_filename(filename))
    if not document.sections:
        raise DocumentError(filename, "PDF has no text layer (scanned? OCR is not supported)")
    return document
