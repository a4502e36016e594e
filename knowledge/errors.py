"""The errors the knowledge layer raises.

Everything derives from :class:`KnowledgeError`, so a caller can catch the whole layer in one
``except``. Foreign errors (Chroma, onnxruntime, pypdf, httpx) are converted at the boundary with
``raise ... from exc``.
"""

from __future__ import annotations


class KnowledgeError(Exception):
    """Base class of every error raised by :mod:`knowledge`."""


class DocumentError(KnowledgeError):
    """One document could not be loaded: empty, unreadable, corrupt, unsupported, too big,
    undecodable, or given an unsafe name.

    In a batch (:meth:`knowledge.KnowledgeStore.add`) this error is recorded against the file
    and the rest of the batch goes on.
    """

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason

    def __reduce__(self) -> tuple[type[DocumentError], tuple[str, str]]:
        # raised in the loading process (knowledge.loading) and re-raised in the store's
        return (type(self), (self.filename, self.reason))


class EmbeddingMismatch(KnowledgeError):
    """A collection was built with another embedding model than the one in use.

    Vectors from two models live in different spaces, so mixing them would return nonsense;
    the collection must be rebuilt with the new model, or the old model configured again.
    """

    def __init__(self, collection: str, stored: str, current: str) -> None:
        super().__init__(
            f"collection {collection!r} was built with embedding model {stored!r}, "
            f"but this store embeds with {current!r}; configure {stored!r} again or "
            f"drop the collection and load its documents anew"
        )
        self.collection = collection
        self.stored = stored
        self.current = current


class EmbeddingError(KnowledgeError):
    """The embedder failed: its model file is missing or corrupt, or its API call failed."""


class KnowledgeTimeout(KnowledgeError):
    """An asynchronous knowledge call did not finish in time."""


class KnowledgeBusy(KnowledgeTimeout):
    """A search refused at once because it could not finish in time: the work already queued
    ahead of it would take longer than its deadline (load shedding). A timeout, sooner."""


class StoreUnavailable(KnowledgeError):
    """The vector store (a Chroma server or the local data directory) cannot be reached."""


class UnknownCollection(KnowledgeError):
    """The named collection does not exist (nothing has been loaded into it)."""


class UnknownDocument(KnowledgeError):
    """The named document is not in the collection."""
