"""Building a :class:`~knowledge.models.Document` from a stream of headings and paragraphs."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from knowledge.models import Document, Section

_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n")


def clean_line(text: str) -> str:
    """Collapse runs of spaces and strip the ends."""
    return _SPACES.sub(" ", text).strip()


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, each with clean lines and no empty ones."""
    paragraphs = []
    for block in _BLANK_LINES.split(text):
        lines = [clean_line(line) for line in block.split("\n")]
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            paragraphs.append(paragraph)
    return paragraphs


def title_from_filename(filename: str) -> str:
    """``piano-insurance_2024.md`` → ``Piano insurance 2024``."""
    stem = PurePosixPath(filename.replace("\\", "/")).stem
    words = clean_line(re.sub(r"[-_.]+", " ", stem))
    return words[:1].upper() + words[1:] if words else filename


class SectionBuilder:
    """Collects headings and paragraphs in reading order and groups them into sections.

    A heading of level *n* closes every open heading of level *n* or deeper, so the heading
    path is always the chain of enclosing headings.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []
        self._paragraphs: list[str] = []
        self._sections: list[Section] = []
        self._headings: list[str] = []  # all of them, in order
        self.first_title: str | None = None

    def heading(self, level: int, text: str) -> None:
        """Start a new section under a heading of ``level`` (1 = top)."""
        text = clean_line(text)
        if not text:
            return
        self._flush()
        if level == 1 and self.first_title is None:
            self.first_title = text
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        self._headings.append(text)

    def paragraph(self, text: str) -> None:
        """Add a paragraph (its lines are kept, blank lines inside split it further)."""
        self._paragraphs.extend(split_paragraphs(text))

    def section(self, heading_path: tuple[str, ...], text: str) -> None:
        """Add a whole section with an explicit heading path (FAQ pairs)."""
        self._flush()
        paragraphs = split_paragraphs(text)
        if paragraphs:
            self._sections.append(Section(heading_path, "\n\n".join(paragraphs)))

    def _flush(self) -> None:
        if self._paragraphs:
            path = tuple(text for _, text in self._stack)
            self._sections.append(Section(path, "\n\n".join(self._paragraphs)))
            self._paragraphs = []

    def build(self, title: str) -> Document:
        """The finished document; sections without text are left out. A document of headings
        alone (an outline) is one section of them, one paragraph each: headings are text."""
        self._flush()
        if not self._sections and self._headings:
            self._sections.append(Section((), "\n\n".join(self._headings)))
        return Document(title=title, sections=tuple(self._sections))
