"""Stable identifiers: document ids from file names, chunk ids from content."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import PurePosixPath

from knowledge.errors import DocumentError

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sha256_hex(data: bytes | str) -> str:
    """Hex sha256 of bytes, or of a string's UTF-8 encoding."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


def document_id(relative_name: str) -> str:
    """The document id for a file's name relative to the folder it was loaded from.

    Unicode NFC, forward slashes, lower case, so ``Docs\\Pricing.md`` and ``docs/pricing.md``
    name the same document on every platform.
    """
    name = unicodedata.normalize("NFC", relative_name).replace("\\", "/").strip()
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts).lower()


def safe_relative_name(filename: str) -> str:
    """Check an uploaded file name and return it as a clean relative POSIX path.

    Raises :class:`DocumentError` for empty names, absolute paths (``/x``, ``C:\\x``,
    ``\\\\server\\x``), any ``..`` component and control characters: an upload must never
    name a file outside its collection.
    """
    original = filename
    name = unicodedata.normalize("NFC", filename).strip()
    if not name:
        raise DocumentError(original or "<empty>", "empty file name")
    if _CONTROL.search(name):
        raise DocumentError(original, "control characters in file name")
    name = name.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        raise DocumentError(original, "absolute path not allowed (path traversal)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise DocumentError(original, "'..' in file name not allowed (path traversal)")
    if not parts:
        raise DocumentError(original, "empty file name")
    return str(PurePosixPath(*parts))


def chunk_id(doc_id: str, embed_text: str, occurrence: int = 0) -> str:
    """``<doc id>#<hash of the embedded text>``, ``.<n>`` added for the n-th repeat of the same
    text in one document.

    The id does not include the chunk's position, so a chunk whose text survives an edit
    keeps its id (and its vector: an edit re-embeds only the chunks it touched).
    """
    suffix = f".{occurrence}" if occurrence else ""
    return f"{doc_id}#{sha256_hex(embed_text)[:16]}{suffix}"
