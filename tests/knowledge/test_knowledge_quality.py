"""Search quality with the real local model on a small labelled set (piano removals).

Six documents on different topics of one business (tests/fixtures/knowledge/movers) and 18
caller questions (tests/fixtures/knowledge/movers-questions.json), each labelled with the
document that answers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from knowledge import KnowledgeStore, LocalEmbedder
from knowledge.loaders import load_document

FIXTURES = Path(__file__).parent.parent / "fixtures" / "knowledge"


@pytest.mark.slow
def test_top1_and_top3_accuracy(tmp_path: Path, local_embedder: LocalEmbedder) -> None:
    store = KnowledgeStore(path=tmp_path / "db", embedder=local_embedder)
    report = store.sync("movers", FIXTURES / "movers")
    assert report.ok and report.added == 6
    questions = json.loads((FIXTURES / "movers-questions.json").read_text())

    top1 = top3 = 0
    misses = []
    for item in questions:
        hits = store.search("movers", item["question"], k=3)
        docs = [h.doc_id for h in hits]
        top1 += docs[0] == item["expected"]
        top3 += item["expected"] in docs
        if docs[0] != item["expected"]:
            misses.append((item["question"], docs))
    n = len(questions)
    print(f"\nsearch quality: top-1 {top1}/{n}, top-3 {top3}/{n}; misses: {misses}")
    assert top1 / n >= 0.8
    assert top3 == n


@pytest.mark.slow
def test_quantised_vectors_agree_with_the_packaged_model(
    tmp_path: Path, local_embedder: LocalEmbedder, packaged_embedder: LocalEmbedder
) -> None:
    """The int8-activation model stays close to the vectors of the packaged model."""
    store = KnowledgeStore(path=tmp_path / "db", embedder=local_embedder)
    texts = [
        item["question"] for item in json.loads((FIXTURES / "movers-questions.json").read_text())
    ]
    for path in sorted((FIXTURES / "movers").iterdir()):
        chunks = store.chunker.chunk(path.name, load_document(path.name, path.read_bytes()))
        texts += [c.embed_text for c in chunks]
    new = local_embedder.embed_array(texts)
    old = packaged_embedder.embed_array(texts)
    cosines = (new * old).sum(axis=1)
    print(
        f"\ncosine to the packaged model over {len(texts)} texts: "
        f"mean {cosines.mean():.4f}, min {cosines.min():.4f}"
    )
    assert cosines.mean() >= 0.99
    assert cosines.min() >= 0.97
