"""Loaders turn a file's bytes into a :class:`~knowledge.models.Document`.

One function per format, chosen by the file's extension. Every loader raises
:class:`~knowledge.errors.DocumentError` for a file it cannot read; :func:`load_document` also
turns any unexpected parser failure into one, so one bad file never stops a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from knowledge.errors import DocumentError
from knowledge.loaders.faq import load_faq_csv, load_faq_json
from knowledge.loaders.html import load_html
from knowledge.loaders.markdown import load_markdown, load_text
from knowledge.loaders.pdf import load_pdf
from knowledge.loaders.word import load_docx
from knowledge.models import Document

Loader = Callable[[str, bytes], Document]

LOADERS: dict[str, Loader] = {
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".txt": load_text,
    ".text": load_text,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".csv": load_faq_csv,
    ".json": load_faq_json,
}

SUPPORTED_SUFFIXES = tuple(LOADERS)


def loader_for(filename: str) -> Loader:
    """The loader for a file name, or :class:`DocumentError` for an unsupported type."""
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    loader = LOADERS.get(suffix)
    if loader is None:
        raise DocumentError(
            filename,
            f"unsupported file type {suffix or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}",
        )
    return loader


def load_document(filename: str, data: bytes) -> Document:
    """Load one file's bytes.

    Raises :class:`DocumentError` when the type is unsupported, the file is empty or has no
    text, or its format is broken.
    """
    loader = loader_for(filename)
    if not data.strip():
        raise DocumentError(filename, "empty file")
    try:
        document = loader(filename, data)
    except DocumentError:
        raise
    except RecursionError as exc:
        raise DocumentError(filename, "unreadable: nested too deeply") from exc
    except Exception as exc:  # a parser's failure on malformed input is this file's problem
        raise DocumentError(filename, f"unreadable ({type(exc).__name__}: {exc})") from exc
    if not any(section.text.strip() for section in document.sections):
        raise DocumentError(filename, "no text found")
    return document


__all__ = ["LOADERS", "SUPPORTED_SUFFIXES", "Loader", "load_document", "loader_for"]
