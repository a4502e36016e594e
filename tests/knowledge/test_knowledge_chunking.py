"""Chunk boundaries: headings respected, token limit honoured, overlap between neighbours."""

from __future__ import annotations

import itertools
import random

import pytest

from knowledge.chunking import Chunker, split_sentences
from knowledge.loaders import load_document
from knowledge.models import Document, Section
from knowledge.tokens import WordPieceCounter

WORDS = [
    "piano", "crew", "stairs", "narrow", "hoist", "upright", "grand", "insurance", "storage",
    "warehouse", "deposit", "quote", "weekend", "van", "straps", "dolly", "tuning", "humidity",
    "survey", "doorway", "landing", "customer", "booking",
]  # fmt: skip


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize() + rng.choice(".!?")


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def model_tokens(counter: WordPieceCounter, text: str) -> int:
    """What the model sees: the text's tokens plus [CLS] and [SEP]."""
    return counter.count(text) + 2


def test_each_section_is_chunked_on_its_own(counter: WordPieceCounter) -> None:
    document = load_document(
        "moving.md",
        b"# Moving\nShort intro.\n\n## Stairs\nStairs cost extra.\n\n## Hoists\nHoists for windows.\n",
    )
    chunks = Chunker(counter).chunk("moving.md", document)
    assert [(c.heading_path, c.text) for c in chunks] == [
        (("Moving",), "Short intro."),
        (("Moving", "Stairs"), "Stairs cost extra."),
        (("Moving", "Hoists"), "Hoists for windows."),
    ]
    assert [c.position for c in chunks] == [0, 1, 2]
    assert chunks[1].embed_text == "Moving > Stairs\nStairs cost extra."


def test_title_prefixes_sections_without_it(counter: WordPieceCounter) -> None:
    document = Document("Piano insurance", (Section(("Claims",), "Within 14 days."),))
    (chunk,) = Chunker(counter).chunk("insurance.txt", document)
    assert chunk.embed_text == "Piano insurance > Claims\nWithin 14 days."
    assert chunk.text == "Within 14 days."


@pytest.mark.parametrize("max_tokens", [64, 128, 220, 256])
def test_max_tokens_honoured_with_prefix_and_special_tokens(
    counter: WordPieceCounter, max_tokens: int
) -> None:
    rng = random.Random(max_tokens)
    paragraphs = [paragraph(rng, rng.randint(1, 12)) for _ in range(30)]
    giant_sentence = " ".join(rng.choice(WORDS) for _ in range(600)) + "."
    unbroken = "x" * 3000  # one "word" of hundreds of tokens
    text = "\n\n".join([*paragraphs, giant_sentence, unbroken])
    heading = tuple(f"Heading level {i} about pianos" for i in range(4))
    document = Document("A long title for the removals handbook", (Section(heading, text),))
    chunks = Chunker(counter, max_tokens=max_tokens, overlap_tokens=16).chunk("long.md", document)
    assert len(chunks) > 5
    for chunk in chunks:
        assert model_tokens(counter, chunk.embed_text) <= max_tokens
        assert chunk.tokens == model_tokens(counter, chunk.embed_text)
        assert chunk.embed_text.endswith(chunk.text)
    # nothing lost: every word of the source is in some chunk
    words = set(text.split())
    covered = set(" ".join(c.text for c in chunks).split())
    assert words <= covered


def test_paragraphs_are_kept_whole_when_they_fit(counter: WordPieceCounter) -> None:
    rng = random.Random(1)
    paragraphs = [paragraph(rng, 3) for _ in range(12)]
    document = Document("T", (Section((), "\n\n".join(paragraphs)),))
    chunks = Chunker(counter, max_tokens=128, overlap_tokens=0).chunk("p.md", document)
    assert len(chunks) > 1
    for chunk in chunks:
        for part in chunk.text.split("\n\n"):
            assert part in paragraphs


def test_consecutive_chunks_overlap_by_a_sentence(counter: WordPieceCounter) -> None:
    rng = random.Random(7)
    text = paragraph(rng, 40)  # one paragraph far over the limit: split at sentences
    document = Document("T", (Section(("Stairs",), text),))
    chunks = Chunker(counter, max_tokens=100, overlap_tokens=40).chunk("s.md", document)
    assert len(chunks) >= 3
    for before, after in itertools.pairwise(chunks):
        last_sentence = split_sentences(before.text)[-1]
        assert after.text.startswith(last_sentence)
        assert counter.count(last_sentence) <= 40


def test_no_overlap_across_headings(counter: WordPieceCounter) -> None:
    rng = random.Random(3)
    document = Document(
        "T",
        (Section(("A",), paragraph(rng, 30)), Section(("B",), "Completely different words.")),
    )
    chunks = Chunker(counter, max_tokens=100).chunk("s.md", document)
    assert chunks[-1].text == "Completely different words."


def test_ids_are_stable_and_unique(counter: WordPieceCounter) -> None:
    document = Document("T", (Section(("A",), "Same text."), Section(("A",), "Same text.")))
    first = Chunker(counter).chunk("faq.md", document)
    again = Chunker(counter).chunk("faq.md", document)
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == 2
    assert all(c.id.startswith("faq.md#") for c in first)


def test_faq_pairs_are_one_chunk_each(counter: WordPieceCounter) -> None:
    data = b"question,answer\nDo you move grand pianos?,Yes.\nDo you store pianos?,Yes.\n"
    chunks = Chunker(counter).chunk("faq.csv", load_document("faq.csv", data))
    assert [c.text for c in chunks] == [
        "Q: Do you move grand pianos?\nA: Yes.",
        "Q: Do you store pianos?\nA: Yes.",
    ]


def test_chunker_settings_are_checked(counter: WordPieceCounter) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        Chunker(counter, max_tokens=300)
    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunker(counter, max_tokens=100, overlap_tokens=60)
