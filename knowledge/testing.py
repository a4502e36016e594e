"""Fakes for tests of code that uses the knowledge layer (ours and yours).

:class:`HashingEmbedder` is a deterministic bag-of-words embedder: no model, no download,
microseconds per text, and texts that share words score higher, so search tests still mean
something.
"""

from __future__ import annotations

import hashlib
import re

_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Hashes each lower-cased word into one of ``dimensions`` buckets; L2-normalised.

    ``calls`` counts :meth:`embed` calls and ``texts_embedded`` the texts seen, so a test can
    assert that nothing was re-embedded.
    """

    def __init__(self, dimensions: int = 64, *, name: str = "hashing-test-embedder") -> None:
        self.name = name
        self.dimensions = dimensions
        self.calls = 0
        self.texts_embedded = 0

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit vector per text; the empty text maps to a fixed unit vector."""
        self.calls += 1
        self.texts_embedded += len(texts)
        return [self._vector(text) for text in texts]

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dimensions
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self.dimensions
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = sum(x * x for x in vector) ** 0.5
        if norm == 0:
            vector[0] = 1.0
            return vector
        return [x / norm for x in vector]
