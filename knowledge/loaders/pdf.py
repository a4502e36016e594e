"""PDF: the text layer of every page, through pypdf.

pypdf reports what it had to work around in a damaged file ("EOF marker not found", "Ignoring
wrong pointing object") as warnings on its ``pypdf`` logger. While a file loads they are kept
(:func:`pypdf_messages`) instead of reaching the process's log handlers, where they would be
lines of their own, without the file's name, in the middle of ``relay knowledge add``'s progress
or the server's log: a file that fails names them in its reason, beside pypdf's error; one that
loads anyway logs them once, as ``pdf_repaired``, at info level.

A PDF's page content is compressed, and pypdf limits each stream it unpacks (75 MB), not the
sum: 1.4 MB holding 20 pages of 70 MB each took 1.4 GB and 7 minutes to read. The content the
text comes from is unpacked and measured first, and a file with more than
:data:`MAX_CONTENT_BYTES` of it is refused before any text is extracted.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from knowledge.errors import DocumentError
from knowledge.loaders.sections import SectionBuilder, title_from_filename
from knowledge.models import Document

if TYPE_CHECKING:
    from pypdf import PageObject

logger = logging.getLogger(__name__)

#: The most page content (the pages' content streams and the forms they draw) a PDF may unpack
#: to: what a 20 MB file (the store's file limit) could hold uncompressed. A page of text is
#: 5-20 KB of it, so this is a thousand pages and more; reading it takes pypdf up to 20 s a MB.
MAX_CONTENT_BYTES = 20_000_000

#: pypdf's messages about one file named in its reason at most (then "and N more").
MESSAGES_NAMED = 3

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


class _Kept(logging.Handler):
    """On the ``pypdf`` logger while PDFs load: each record goes to the list of the thread
    that logged it, if that thread is loading one (:func:`pypdf_messages`)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lists = threading.local()
        self.users = 0  # threads loading a PDF
        self.saved_propagate = True  # the pypdf logger's own, given back after the last one
        self.saved_level = logging.NOTSET  # likewise

    def emit(self, record: logging.LogRecord) -> None:
        kept: list[str] | None = getattr(self.lists, "messages", None)
        if kept is None:
            return
        try:
            message = record.getMessage()
        except Exception:  # a message that does not format is still worth naming
            message = str(record.msg)
        kept.append(" ".join(message.split()))


_KEPT = _Kept()
_KEPT_LOCK = threading.Lock()


@contextlib.contextmanager
def pypdf_messages() -> Iterator[list[str]]:
    """The warnings and errors pypdf logs while this thread reads a PDF, in order, kept for
    the file's result. Meanwhile nothing pypdf logs reaches the process's log handlers (from
    any thread: pypdf's logging is process-wide); it does again once no thread is loading a
    PDF. pypdf's warnings are kept whatever the process's log level (``RELAY_LOG_LEVEL=error``
    sets the root logger's, which pypdf's loggers would otherwise inherit): the pypdf logger is
    at WARNING meanwhile, and, not propagating, that lets nothing more reach the handlers."""
    pypdf_logger = logging.getLogger("pypdf")
    messages: list[str] = []
    with _KEPT_LOCK:
        if _KEPT.users == 0:
            _KEPT.saved_propagate = pypdf_logger.propagate
            _KEPT.saved_level = pypdf_logger.level
            pypdf_logger.addHandler(_KEPT)
            pypdf_logger.propagate = False
            pypdf_logger.setLevel(logging.WARNING)
        _KEPT.users += 1
    _KEPT.lists.messages = messages
    try:
        yield messages
    finally:
        _KEPT.lists.messages = None
        with _KEPT_LOCK:
            _KEPT.users -= 1
            if _KEPT.users == 0:
                pypdf_logger.removeHandler(_KEPT)
                pypdf_logger.propagate = _KEPT.saved_propagate
                pypdf_logger.setLevel(_KEPT.saved_level)


def _named(messages: list[str]) -> list[str]:
    """``messages`` once each, the first :data:`MESSAGES_NAMED` of them and how many more."""
    unique = list(dict.fromkeys(m for m in messages if m))
    if len(unique) <= MESSAGES_NAMED:
        return unique
    return [*unique[:MESSAGES_NAMED], f"and {len(unique) - MESSAGES_NAMED} more"]


def _content_bytes(page: PageObject) -> int:
    """The unpacked size of what pypdf reads a page's text from: its content streams and the
    form XObjects in its resources, nested ones too (each once)."""
    contents = page.get_contents()
    size = len(contents.get_data()) if contents is not None else 0
    return size + _forms_bytes(page.get("/Resources"), set())


def _forms_bytes(resources: Any, seen: set[int]) -> int:
    from pypdf.generic import DictionaryObject, StreamObject

    resources = resources.get_object() if resources is not None else None
    if not isinstance(resources, DictionaryObject):
        return 0
    xobjects = resources.get("/XObject")
    xobjects = xobjects.get_object() if xobjects is not None else None
    if not isinstance(xobjects, DictionaryObject):
        return 0
    size = 0
    for reference in xobjects.values():
        form = reference.get_object()
        if id(form) in seen or not isinstance(form, StreamObject):
            continue
        seen.add(id(form))
        if form.get("/Subtype") == "/Form":
            size += len(form.get_data()) + _forms_bytes(form.get("/Resources"), seen)
    return size


def load_pdf(filename: str, data: bytes) -> Document:
    """Load a ``.pdf`` file. Scanned PDFs without a text layer are refused (no OCR).

    What pypdf reports about a damaged file is named in the reason of the
    :class:`DocumentError` it fails with (``corrupt PDF (EOF marker not found; Stream has
    ended unexpectedly)``), never logged on its own (see the module's docstring).
    """
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise DocumentError(filename, "corrupt PDF: no %PDF header")
    with pypdf_messages() as noted:
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise DocumentError(filename, "PDF is password-protected")
            content = 0
            for pdf_page in reader.pages:
                content += _content_bytes(pdf_page)
                if content > MAX_CONTENT_BYTES:  # stop unpacking (pypdf keeps what it did)
                    raise DocumentError(
                        filename,
                        f"PDF content unpacks to at least {content / 1_000_000:.1f} MB, over the "
                        f"limit of {MAX_CONTENT_BYTES / 1_000_000:.1f} MB",
                    )
            pages = [page.extract_text() or "" for page in reader.pages]
            meta_title = reader.metadata.title if reader.metadata else None
        except DocumentError:
            raise
        except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
            reasons = [*_named(noted), str(exc)]
            raise DocumentError(filename, f"corrupt PDF ({'; '.join(reasons)})") from exc

    builder = SectionBuilder()
    for page in pages:
        builder.paragraph(_reflow(page))
    document = builder.build(str(meta_title or "").strip() or title_from_filename(filename))
    if not document.sections:
        reason = "PDF has no text layer (scanned? OCR is not supported)"
        if noted:
            reason += f"; pypdf reported: {'; '.join(_named(noted))}"
        raise DocumentError(filename, reason)
    if noted:
        logger.info("pdf_repaired file=%s warnings=%s", filename, "; ".join(_named(noted)))
    return document
