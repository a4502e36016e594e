"""Markdown: ATX and setext headings, fenced code kept verbatim, inline markup removed."""

from __future__ import annotations

import re

from knowledge.encoding import decode_text
from knowledge.loaders.sections import SectionBuilder, title_from_filename
from knowledge.models import Document

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_LINK_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s+\S+.*$")
_EMPHASIS = re.compile(r"(\*\*|\*|~~)(?=\S)(.+?)(?<=\S)\1")
_UNDERSCORE_EMPHASIS = re.compile(r"(?<!\w)(__|_)(?=\S)(.+?)(?<=\S)\1(?!\w)")
_CODE = re.compile(r"`([^`]+)`")
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n(?:---|\.\.\.)\n", re.DOTALL)
_FRONT_TITLE = re.compile(r"^title:\s*[\"']?(.*?)[\"']?\s*$", re.MULTILINE)


def inline(text: str) -> str:
    """Markdown inline markup to plain text: links keep their words, images their alt text."""
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _REF_LINK.sub(r"\1", text)
    text = _CODE.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\2", text)
    text = _UNDERSCORE_EMPHASIS.sub(r"\2", text)
    return _TAG.sub("", text)


def _table_row(line: str) -> str:
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return " | ".join(cell for cell in cells if cell)


def parse_markdown(filename: str, text: str) -> Document:
    """Parse Markdown text into sections (pure function; see :func:`load_markdown`)."""
    builder = SectionBuilder()
    title: str | None = None
    front = _FRONT_MATTER.match(text)
    if front:
        found = _FRONT_TITLE.search(front.group(1))
        title = found.group(1).strip() if found else None
        text = text[front.end() :]
    text = _COMMENT.sub("", text)

    lines: list[str] = []  # the paragraph being read
    in_table = False  # whether ``lines`` are a table's rows
    fence: str | None = None

    def flush() -> None:
        if lines:
            builder.paragraph("\n".join(lines))
            lines.clear()

    for raw in text.split("\n"):
        if fence is not None:
            if raw.strip().startswith(fence):
                fence = None
                flush()
            else:
                lines.append(raw)
            continue
        opening = _FENCE.match(raw)
        if opening:
            flush()
            fence = opening.group(1)
            continue
        if not raw.strip():
            flush()
            continue
        atx = _ATX.match(raw)
        if atx:
            flush()
            builder.heading(len(atx.group(1)), inline(atx.group(2) or ""))
            continue
        setext = _SETEXT.match(raw)
        if setext and lines:
            heading = " ".join(line.strip() for line in lines)
            lines.clear()
            builder.heading(1 if setext.group(1).startswith("=") else 2, inline(heading))
            continue
        if setext or _LINK_DEF.match(raw) or _TABLE_RULE.match(raw):
            continue  # a thematic break, a link definition or a table's rule line
        line = raw.strip()
        row = line.startswith("|")
        if row != in_table:
            flush()  # a table is a paragraph of its own, for the chunker (knowledge.chunking)
            in_table = row
        lines.append(inline(_table_row(line) if row else line))
    flush()
    return builder.build(title or builder.first_title or title_from_filename(filename))


def load_markdown(filename: str, data: bytes) -> Document:
    """Load a ``.md`` file."""
    return parse_markdown(filename, decode_text(filename, data))


def load_text(filename: str, data: bytes) -> Document:
    """Load a plain ``.txt`` file: one section, paragraphs at blank lines."""
    builder = SectionBuilder()
    builder.paragraph(decode_text(filename, data))
    return builder.build(title_from_filename(filename))
