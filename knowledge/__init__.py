"""relay's knowledge layer: documents → chunks → vectors → search.

Importing this package is cheap: chromadb, onnxruntime, tokenizers and the document parsers
load on first use. It never imports :mod:`relay`.

>>> store = KnowledgeStore(path=Path("data/chroma"))          # doctest: +SKIP
>>> store.sync("movers", Path("data/knowledge/movers"))      # doctest: +SKIP
>>> store.search("movers", "do you insure the piano?", k=3)   # doctest: +SKIP
"""

from __future__ import annotations

from knowledge.aio import AsyncKnowledge
from knowledge.embedders import Embedder, LocalEmbedder, OpenAIEmbedder
from knowledge.errors import (
    DocumentError,
    EmbeddingError,
    EmbeddingMismatch,
    KnowledgeBusy,
    KnowledgeError,
    KnowledgeTimeout,
    StoreUnavailable,
    UnknownCollection,
    UnknownDocument,
)
from knowledge.loaders import SUPPORTED_SUFFIXES
from knowledge.models import (
    ChunkInfo,
    DocumentDetail,
    DocumentInfo,
    DocumentVersion,
    FileResult,
    FileStatus,
    Hit,
    IngestReport,
)
from knowledge.store import KnowledgeStore

__all__ = [
    "SUPPORTED_SUFFIXES",
    "AsyncKnowledge",
    "ChunkInfo",
    "DocumentDetail",
    "DocumentError",
    "DocumentInfo",
    "DocumentVersion",
    "Embedder",
    "EmbeddingError",
    "EmbeddingMismatch",
    "FileResult",
    "FileStatus",
    "Hit",
    "IngestReport",
    "KnowledgeBusy",
    "KnowledgeError",
    "KnowledgeStore",
    "KnowledgeTimeout",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "StoreUnavailable",
    "UnknownCollection",
    "UnknownDocument",
]
