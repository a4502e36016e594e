"""Splitting documents into chunks the embedding model can take whole.

A chunk never crosses a heading: each section is chunked on its own. Inside a section whole
paragraphs are packed together up to the token budget; a paragraph too long for one chunk is
split at sentences, and a sentence too long at token boundaries. Consecutive chunks of one
section share an overlap (the previous chunk's last sentence), so a fact on the seam is whole
in at least one chunk.

A table too long for one chunk is split between its rows instead, and every chunk that
continues it starts with its header row (counted in the chunk's size), so a row is never read
without its column names. The loaders hand a table over as a paragraph of its own, one row per
line, cells separated by ``" | "``, the header row first.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

from knowledge.ids import chunk_id
from knowledge.models import Chunk, Document, Section
from knowledge.tokens import TokenCounter

# A sentence ends at . ! ? or … (optionally followed by a closing quote or bracket) before
# whitespace and a capital, digit or opening quote.
_SENTENCE_END = re.compile(
    r"(?<=[.!?\u2026])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])"
)

#: The model's hard input limit (all-MiniLM-L6-v2 truncates at 256 tokens).
MODEL_MAX_TOKENS = 256
#: [CLS] and [SEP].
SPECIAL_TOKENS = 2
#: 2: a long table's header row starts each chunk that continues it.
CHUNKER_VERSION = 2
#: What separates the cells of a table row (see the module's docstring).
CELL_SEPARATOR = " | "


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    tokens: int
    joiner: str  # what goes before it when it follows another unit
    header: _Unit | None = None  # a table row's: the table's header row


def _is_table(lines: list[str]) -> bool:
    """Lines that are the rows of a table: the first (its header) and at least half of them
    have cells (a row with one non-empty cell has none)."""
    rows = sum(CELL_SEPARATOR in line for line in lines)
    return len(lines) > 1 and CELL_SEPARATOR in lines[0] and rows * 2 >= len(lines)


def split_sentences(text: str) -> list[str]:
    """Sentences of one line of text."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


class Chunker:
    """Turns a :class:`Document` into :class:`Chunk` objects of at most ``max_tokens``
    model tokens each, counting the heading prefix and the model's special tokens."""

    def __init__(
        self,
        counter: TokenCounter,
        *,
        max_tokens: int = 220,
        overlap_tokens: int = 40,
    ) -> None:
        if not 32 <= max_tokens <= MODEL_MAX_TOKENS:
            raise ValueError(f"max_tokens must be between 32 and {MODEL_MAX_TOKENS}")
        if not 0 <= overlap_tokens <= max_tokens // 2:
            raise ValueError("overlap_tokens must be between 0 and half of max_tokens")
        self.counter = counter
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens

    @property
    def fingerprint(self) -> str:
        """Changes whenever the same file would be chunked differently."""
        return f"chunker-v{CHUNKER_VERSION}:{self.max_tokens}:{self.overlap_tokens}"

    def chunk(self, doc_id: str, document: Document) -> list[Chunk]:
        """All chunks of a document, numbered from 0 in reading order."""
        chunks: list[Chunk] = []
        seen: Counter[str] = Counter()
        for section in document.sections:
            prefix = self._prefix(document.title, section)
            budget = self.max_tokens - SPECIAL_TOKENS - self.counter.count(prefix)
            for body in self._bodies(section.text, budget):
                embed_text = f"{prefix}\n{body}" if prefix else body
                chunks.append(
                    Chunk(
                        id=chunk_id(doc_id, embed_text, seen[embed_text]),
                        doc_id=doc_id,
                        position=len(chunks),
                        heading_path=section.heading_path,
                        text=body,
                        embed_text=embed_text,
                        tokens=self.counter.count(embed_text) + SPECIAL_TOKENS,
                    )
                )
                seen[embed_text] += 1
        return chunks

    # -- the heading prefix ------------------------------------------------------------------

    def _prefix(self, title: str, section: Section) -> str:
        """``Title > Heading > Subheading``, at most a third of the budget."""
        path = list(section.heading_path)
        if title and not (path and path[0].casefold() == title.casefold()):
            path.insert(0, title)
        limit = self.max_tokens // 3
        while path:
            prefix = " > ".join(path)
            if self.counter.count(prefix) <= limit:
                return prefix
            if len(path) == 1:
                return self._head(prefix, limit)
            path.pop(0)  # drop the outermost heading first; the innermost says most
        return ""

    def _head(self, text: str, tokens: int) -> str:
        spans = self.counter.spans(text)
        return text[: spans[tokens - 1][1]] if len(spans) > tokens else text

    # -- packing -------------------------------------------------------------------------------

    def _units(self, text: str, budget: int) -> list[_Unit]:
        units: list[_Unit] = []
        for paragraph in text.split("\n\n"):
            tokens = self.counter.count(paragraph)
            if tokens <= budget:
                units.append(_Unit(paragraph, tokens, "\n\n"))
                continue
            table = self._table(paragraph.split("\n"), budget)
            if table:
                units.extend(table)
                continue
            for i, line in enumerate(paragraph.split("\n")):
                for j, sentence in enumerate(split_sentences(line)):
                    joiner = "\n\n" if i == j == 0 else ("\n" if j == 0 else " ")
                    for k, piece in enumerate(self._pieces(sentence, budget)):
                        tokens = self.counter.count(piece)
                        units.append(_Unit(piece, tokens, joiner if k == 0 else " "))
        return units

    def _table(self, lines: list[str], budget: int) -> list[_Unit]:
        """A table's rows as units that each carry its header row; none if ``lines`` are not
        a table, or its header takes more than half the budget (its rows are then chunked as
        lines of text)."""
        if not _is_table(lines):
            return []
        header = _Unit(lines[0], self.counter.count(lines[0]), "\n\n")
        if header.tokens > budget // 2:
            return []
        room = budget - header.tokens  # for the rows of a chunk that repeats the header
        units = [header]
        for line in lines[1:]:
            for k, piece in enumerate(self._pieces(line, room)):
                units.append(
                    _Unit(piece, self.counter.count(piece), "\n" if k == 0 else " ", header)
                )
        return units

    def _pieces(self, sentence: str, budget: int) -> list[str]:
        """A sentence cut into windows of at most ``budget`` tokens, at word starts if possible."""
        spans = self.counter.spans(sentence)
        if len(spans) <= budget:
            return [sentence]
        pieces = []
        start = 0
        while start < len(spans):
            end = min(start + budget, len(spans))
            if end < len(spans):
                # back off to a token that starts a word, keeping at least half a window
                for cut in range(end, start + budget // 2, -1):
                    if _word_start(sentence, spans[cut][0]):
                        end = cut
                        break
            pieces.append(sentence[spans[start][0] : spans[end - 1][1]])
            start = end
        return pieces

    def _bodies(self, text: str, budget: int) -> list[str]:
        bodies: list[str] = []
        current: list[_Unit] = []
        used = 0
        units = self._units(text, budget)
        for i, unit in enumerate(units):
            needed = unit.tokens
            following = units[i + 1] if i + 1 < len(units) else None
            if following is not None and following.header is unit:
                needed += following.tokens  # a table's header row goes with its first row
            if current and used + needed > budget:
                bodies.append(_join(current))
                if unit.header is not None:
                    # a table goes on: its header row instead of an overlap (rows are whole)
                    current, used = [unit.header], unit.header.tokens
                    unit = replace(unit, joiner="\n")  # a row's later piece on a line of its own
                else:
                    room = min(self.overlap_tokens, budget - unit.tokens)
                    overlap = self._overlap(current[-1], room)
                    current = [overlap] if overlap else []
                    used = overlap.tokens if overlap else 0
            current.append(unit)
            used += unit.tokens
        if current:
            bodies.append(_join(current))
        return bodies

    def _overlap(self, last: _Unit, limit: int) -> _Unit | None:
        """The last sentence of the previous chunk (its tail words if the sentence is long)."""
        if limit <= 0:
            return None
        sentences = split_sentences(last.text.rsplit("\n", 1)[-1])
        if not sentences:
            return None
        sentence = sentences[-1]
        spans = self.counter.spans(sentence)
        if len(spans) > limit:
            start = len(spans) - limit
            while start < len(spans) and not _word_start(sentence, spans[start][0]):
                start += 1
            if start >= len(spans):
                return None
            sentence = sentence[spans[start][0] :]
        return _Unit(sentence, self.counter.count(sentence), "\n\n")


def _word_start(text: str, offset: int) -> bool:
    return offset > 0 and text[offset - 1].isspace()


def _join(units: list[_Unit]) -> str:
    return units[0].text + "".join(u.joiner + u.text for u in units[1:])
