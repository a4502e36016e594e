"""Turning file bytes into text: UTF-8 first, legacy 8-bit encodings only when they fit."""

from __future__ import annotations

import codecs
import re

from knowledge.errors import DocumentError

# Control characters (Unicode category Cc) other than tab, newline, form feed and carriage
# return: their presence means the bytes were not text in the encoding tried.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def _printable(text: str) -> bool:
    return _CONTROL.search(text) is None


def decode_text(filename: str, data: bytes) -> str:
    """Decode a text file.

    Order: a UTF-16/UTF-8 byte-order mark decides; else strict UTF-8; else cp1252, then
    latin-1, each accepted only when every character is printable (Windows "smart quotes"
    files decode, binary data does not). NUL bytes mean binary. Raises :class:`DocumentError`
    when nothing fits. Line endings come back as ``\\n``.
    """
    text: str | None = None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DocumentError(filename, "invalid UTF-16 text") from exc
    elif b"\x00" in data:
        raise DocumentError(filename, "binary data, not text (NUL bytes)")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            for encoding in ("cp1252", "latin-1"):
                try:
                    candidate = data.decode(encoding)
                except UnicodeDecodeError:
                    continue
                if _printable(candidate):
                    text = candidate
                    break
    if text is None or not _printable(text):
        raise DocumentError(filename, "not decodable as UTF-8, cp1252 or latin-1 text")
    return text.replace("\r\n", "\n").replace("\r", "\n")
