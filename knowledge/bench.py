"""Benchmark: ingest throughput and retrieval latency with the local model.

Run ``python -m knowledge.bench`` (about a minute on 2 cores). It measures

* model load time (including deriving the quantised model when the cache is cold) and raw
  embedding throughput,
* ingest throughput through the whole pipeline (parse, chunk, embed, write) for the shipped
  example documents (``data/knowledge/*``, realistic chunks of about 60 tokens) and for a
  generated piano removals knowledge base (varied sentences from templates): FAQ-sized chunks
  and section-sized chunks (packed up to the 220-token limit),
* search latency p50/p95 at 1,000 and 10,000 chunks, query embedding included.

Embedding 10,000 chunks would take minutes on 2 cores, so the 10,000-chunk collection reuses
the vectors of the ingested chunks: each further record is a real chunk's vector with a little
noise added (renormalised), so the index holds 10,000 distinct points of realistic spread.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from knowledge.embedders import LocalEmbedder
from knowledge.store import KnowledgeStore

#: The example knowledge bases shipped in the repository (absent from an installed package).
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "knowledge"

PIANOS = ["upright piano", "baby grand", "concert grand", "digital piano", "pianola", "organ"]
PLACES = ["Croydon", "Brighton", "Kent", "Surrey", "Oxford", "Reading", "Guildford", "Leeds"]
FLOORS = ["ground floor", "first floor", "second floor", "third floor", "top floor", "basement"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]

TOPICS: dict[str, list[str]] = {
    "Stairs and access": [
        "Carrying a {piano} to the {floor} takes {n} movers and about {m} minutes.",
        "Each extra flight of stairs adds {price} pounds to the quote.",
        "Tight landings and turning staircases in {place} often need a site survey first.",
        "When the stairs are too narrow we hoist the {piano} through a window.",
        "Please measure the narrowest doorway; a {piano} needs at least {m} centimetres.",
        "Our crew lays floor protection on every step before the {piano} goes up.",
    ],
    "Insurance": [
        "Every {piano} is insured in transit up to {big} pounds at no extra cost.",
        "Claims for damage must reach us within {n} days of the move.",
        "Instruments worth more than {big} pounds need an extra valuation-based policy.",
        "We record existing scratches on a condition report before we lift the {piano}.",
        "Repairs are carried out by an independent technician chosen by you.",
    ],
    "Storage": [
        "Storing a {piano} costs {price} pounds a week, billed monthly.",
        "Our warehouse near {place} is kept at a steady temperature and humidity.",
        "You can visit your {piano} by appointment every {day}.",
        "We need {n} working days' notice to deliver a piano back out of storage.",
        "Each instrument is wrapped in padded blankets and stored off the floor.",
    ],
    "Cancellation": [
        "Cancelling more than {n} days before the move costs nothing.",
        "A deposit of {pct} percent secures the booking and is refunded on early cancellation.",
        "Moving the date is free once if you tell us by {day}.",
        "If the crew cannot get the {piano} out on the day, the full price is due.",
    ],
    "Areas": [
        "We run daily moves around {place} and weekly trips to {place2}.",
        "Moves to the islands and the Highlands are quoted individually.",
        "Our {place} depot covers everything within {n} miles.",
        "International moves to France and Belgium go by road with a partner.",
    ],
    "Pricing": [
        "Moving a {piano} within {place} costs from {price} pounds.",
        "Weekend and evening moves carry a {pct} percent surcharge.",
        "A quote is valid for {n} days and includes padding, straps and a specialist van.",
        "Send the two postcodes and a photo of the route for a fixed price.",
        "Tuning after the move costs {price} pounds when booked with the removal.",
    ],
}


def _sentence(rng: random.Random, topic: str) -> str:
    template = rng.choice(TOPICS[topic])
    return template.format(
        piano=rng.choice(PIANOS),
        place=rng.choice(PLACES),
        place2=rng.choice(PLACES),
        floor=rng.choice(FLOORS),
        day=rng.choice(DAYS),
        n=rng.randint(2, 12),
        m=rng.randint(20, 90),
        price=rng.randint(3, 60) * 10,
        big=rng.choice([20_000, 50_000, 100_000]),
        pct=rng.choice([10, 15, 20, 25]),
    )


def _paragraph(rng: random.Random, topic: str, sentences: int) -> str:
    return " ".join(_sentence(rng, topic) for _ in range(sentences))


def section_document(rng: random.Random, number: int) -> bytes:
    """A Markdown guide: a few topics, each with paragraphs of 2-6 sentences."""
    lines = [f"# Customer guide {number}", ""]
    for topic in rng.sample(sorted(TOPICS), 3):
        lines += [f"## {topic}", ""]
        for _ in range(rng.randint(1, 4)):
            lines += [_paragraph(rng, topic, rng.randint(2, 6)), ""]
    return "\n".join(lines).encode()


def faq_document(rng: random.Random, pairs: int) -> bytes:
    """An FAQ table: one short question and a one- or two-sentence answer per row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["question", "answer", "category"])
    for _ in range(pairs):
        topic = rng.choice(sorted(TOPICS))
        question = f"What should I know about {topic.lower()} for a {rng.choice(PIANOS)}?"
        writer.writerow([question, _paragraph(rng, topic, rng.randint(1, 2)), topic])
    return out.getvalue().encode()


QUESTIONS = [
    "How much does it cost to move a {piano} to the {floor}?",
    "Is my {piano} insured if it gets damaged?",
    "Can you store a {piano} for a few months near {place}?",
    "What happens to my deposit if I cancel?",
    "Do you cover {place}?",
    "Is it more expensive to move on a {day}?",
    "Can you get a {piano} up a narrow staircase?",
    "How much notice do you need to bring it back from storage?",
]


def questions(rng: random.Random, count: int) -> list[str]:
    """Varied caller questions."""
    return [
        rng.choice(QUESTIONS).format(
            piano=rng.choice(PIANOS),
            floor=rng.choice(FLOORS),
            place=rng.choice(PLACES),
            day=rng.choice(DAYS),
        )
        for _ in range(count)
    ]


@dataclass
class IngestFigure:
    label: str
    chunks: int
    tokens: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds


@dataclass
class SearchFigure:
    chunks: int
    total_ms: list[float]
    embed_ms: list[float]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _ingest(
    store: KnowledgeStore, collection: str, label: str, files: list[tuple[str, bytes]]
) -> IngestFigure:
    started, cpu_started = time.perf_counter(), time.process_time()
    for name, data in files:
        store.add_bytes(collection, name, data)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    tokens = sum(c.tokens for d in store.list_documents(collection)
                 for c in store.show(collection, d.doc_id).chunks)  # fmt: skip
    return IngestFigure(label, store.count(collection), tokens, seconds, cpu_seconds)


def _ingest_folders(store: KnowledgeStore, folders: list[Path], label: str) -> IngestFigure:
    """Sync each folder into its own collection, as ``relay knowledge sync`` does."""
    prefix = label.split()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    for folder in folders:
        store.sync(f"{prefix}-{folder.name}", folder)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    chunks = tokens = 0
    for folder in folders:
        collection = f"{prefix}-{folder.name}"
        for doc in store.list_documents(collection):
            for chunk in store.show(collection, doc.doc_id).chunks:
                chunks += 1
                tokens += chunk.tokens
    names = ", ".join(folder.name for folder in folders)
    return IngestFigure(f"{label} ({names})", chunks, tokens, seconds, cpu_seconds)


def _fill(store: KnowledgeStore, source: str, target: str, size: int, rng: random.Random) -> None:
    """Copy ``source``'s records into ``target`` until it holds ``size``, adding noise to
    reused vectors (see the module docstring)."""
    import numpy as np

    backend = store._backend
    src = backend.collection(
        source, model=store.embedder.name, dimensions=store.embedder.dimensions, create=False
    )
    dst = backend.collection(
        target, model=store.embedder.name, dimensions=store.embedder.dimensions, create=True
    )
    assert src is not None and dst is not None
    records = backend.get(src, include=["embeddings", "documents", "metadatas"])
    vectors = np.asarray(records["embeddings"], dtype=np.float32)
    noise_rng = np.random.default_rng(rng.randint(0, 2**31))
    batch = 1000
    for start in range(0, size, batch):
        count = min(batch, size - start)
        picks = [(start + i) % len(vectors) for i in range(count)]
        block = vectors[picks]
        if start + count > len(vectors):
            block = block + noise_rng.normal(0, 0.02, block.shape).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
        backend.upsert(
            dst,
            [f"bench-{start + i}" for i in range(count)],
            block.tolist(),
            [records["documents"][p] for p in picks],
            [records["metadatas"][p] for p in picks],
        )


def _search(
    store: KnowledgeStore, collection: str, asked: Sequence[str], embedder: LocalEmbedder
) -> SearchFigure:
    for question in asked[:10]:  # warm the index and the model
        store.search(collection, question, k=4)
    total, embed = [], []
    for question in asked:
        started = time.perf_counter()
        store.search(collection, question, k=4)
        total.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        embedder.embed([question])
        embed.append((time.perf_counter() - started) * 1000)
    return SearchFigure(store.count(collection), total, embed)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(
        prog="python -m knowledge.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--chunks", type=int, default=600, help="chunks to ingest per profile")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--docs",
        type=Path,
        nargs="*",
        default=None,
        help=f"folders of real documents to ingest (default: every folder in {SHIPPED})",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="where the derived model is cached"
    )
    parser.add_argument(
        "--no-quantize", action="store_true", help="use the packaged model as it is"
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    folders: list[Path] = args.docs
    if folders is None:
        folders = sorted(p for p in SHIPPED.iterdir() if p.is_dir()) if SHIPPED.is_dir() else []

    started = time.perf_counter()
    embedder = LocalEmbedder(cache_dir=args.cache_dir, quantize=not args.no_quantize)
    embedder.load()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="knowledge-bench-"))
        store = stack.enter_context(KnowledgeStore(path=Path(tmp), embedder=embedder))

        # raw embedding throughput on section-sized texts
        sample = [
            _paragraph(rng, rng.choice(sorted(TOPICS)), rng.randint(3, 8))
            for _ in range(min(128, args.chunks))
        ]
        embedder.embed(sample[:8])
        t0 = time.perf_counter()
        embedder.embed(sample)
        raw_seconds = time.perf_counter() - t0
        raw_tokens = sum(store.chunker.counter.count(s) + 2 for s in sample)

        faq_files: list[tuple[str, bytes]] = []
        while sum(f[1].count(b"\n") - 1 for f in faq_files) < args.chunks:
            faq_files.append((f"faq-{len(faq_files)}.csv", faq_document(rng, min(50, args.chunks))))
        section_files = [
            (f"guide-{i}.md", section_document(rng, i)) for i in range(args.chunks // 5)
        ]
        ingests = []
        if folders:
            # the first pass also imports the parsers and creates the collections
            ingests.append(_ingest_folders(store, folders, "first load, shipped docs"))
            ingests.append(_ingest_folders(store, folders, "shipped docs"))
        ingests.append(_ingest(store, "bench-faq", "FAQ-sized chunks", faq_files))
        ingests.append(_ingest(store, "bench-sections", "section chunks (≤220 tok)", section_files))
        # a second pass over unchanged files must write nothing
        t0 = time.perf_counter()
        for name, data in section_files:
            store.add_bytes("bench-sections", name, data)
        unchanged_seconds = time.perf_counter() - t0

        asked = questions(rng, args.queries)
        searches = []
        for size in args.sizes:
            name = f"bench-{size}"
            _fill(store, "bench-sections", name, size, rng)
            searches.append(_search(store, name, asked, embedder))
    elapsed = time.perf_counter() - started

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nknowledge bench: {embedder.name}, {embedder.threads} threads, {os.cpu_count()} CPUs, "
        f"{elapsed:.0f} s; load average {load} (other processes skew every figure)"
    )
    print(
        f"  model load                          {embedder.load_seconds or 0:8.2f} s "
        f"({embedder.model_origin} model)"
    )
    print(
        f"  raw embedding                       {len(sample) / raw_seconds:8.0f} texts/s "
        f"({raw_tokens / len(sample):.0f} tokens avg, {raw_tokens / raw_seconds:,.0f} tokens/s)"
    )
    print(
        "  ingest (parse+chunk+embed+write)      chunks  avg tok  chunks/s   tokens/s"
        "   (CPU s, all threads)"
    )
    for ingest in ingests:
        print(
            f"    {ingest.label[:34]:34s} {ingest.chunks:5d} {ingest.tokens / ingest.chunks:8.0f} "
            f"{ingest.rate:9.0f} {ingest.tokens / ingest.seconds:10,.0f}"
            f"   ({ingest.cpu_seconds:.1f} CPU s in {ingest.seconds:.1f} s)"
        )
    print(f"    re-add {len(section_files)} unchanged files {unchanged_seconds * 1000:19.0f} ms")
    print("  search k=4, query embedding included    p50 ms   p95 ms   (embed p50   p95)")
    for search in searches:
        print(
            f"    {search.chunks:>6,d} chunks {'':25s}"
            f"{_pct(search.total_ms, 50):8.2f} {_pct(search.total_ms, 95):8.2f}"
            f"   ({_pct(search.embed_ms, 50):8.2f} {_pct(search.embed_ms, 95):6.2f})"
        )
    print("  targets: ingest >= 150 chunks/s; search <= 10 ms p95 at 10,000 chunks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
