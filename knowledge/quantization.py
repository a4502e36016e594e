"""A faster copy of the embedding model, derived on this machine and cached.

The packaged all-MiniLM-L6-v2 stores its weights as int8 but dequantises them and computes in
float32. :func:`dynamic_int8` rewrites it with onnxruntime's own tools so that every matrix
multiplication by a weight runs in int8 on int8 activations, quantised per run
(``quantize_dynamic``, per-channel weights): about 2.4 times the throughput per core, cosine
≈ 0.995 to the float32-activation vectors.

Nothing is downloaded: the copy is built from the installed model file the first time it is
needed (a few seconds; it needs the ``onnx`` package) and kept in a cache directory next to a
record of the source file's sha256 and its own. Later starts verify that record and reuse the
file; a missing, stale or corrupt file is rebuilt. Builds take a file lock and land by atomic
rename, so concurrent processes never see half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from knowledge.errors import EmbeddingError

logger = logging.getLogger(__name__)

#: Names the recipe below; change it whenever the derived file would come out different.
RECIPE = "dyn-int8-v1"


class DerivationError(EmbeddingError):
    """The faster model could not be derived (no ``onnx`` package, an unexpected graph...)."""


@dataclass(frozen=True)
class DerivedModel:
    """The derived model's bytes (already checked against its recorded sha256)."""

    data: bytes
    #: Where it is cached; None when the cache directory was not writable.
    path: Path | None
    #: True when this call built it, False when it came from the cache.
    built: bool


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/relay/models``, else ``~/.cache/relay/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relay" / "models"


def dynamic_int8(source: Path, source_data: bytes, cache_dir: Path) -> DerivedModel:
    """The dynamically quantised copy of ``source`` (whose content is ``source_data``),
    from ``cache_dir`` or built into it now.

    Raises :class:`DerivationError` when it cannot be derived.
    """
    source_sha256 = hashlib.sha256(source_data).hexdigest()
    target = cache_dir / f"{source.stem}-{source_sha256[:16]}-{RECIPE}.onnx"
    record = target.with_name(target.name + ".json")
    data = _cached(target, record, source_sha256, warn=True)
    if data is not None:
        return DerivedModel(data, target, built=False)
    try:
        _prepare_dir(cache_dir)
    except OSError as exc:
        logger.warning(
            "embedding_model_cache_unwritable dir=%s error=%s; deriving without caching",
            cache_dir,
            exc,
        )
        with tempfile.TemporaryDirectory(prefix="relay-derive-") as tmp:
            return DerivedModel(_build(source, Path(tmp)), None, built=True)
    with _locked(cache_dir / f"{target.name}.lock"):
        # another process may have built it while we waited for the lock
        data = _cached(target, record, source_sha256)
        if data is not None:
            return DerivedModel(data, target, built=False)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".derive-") as tmp:
            data = _build(source, Path(tmp))
            built = Path(tmp) / "derived.onnx"
            built.write_bytes(data)
            os.replace(built, target)
            facts = {
                "recipe": RECIPE,
                "source": source.name,
                "source_sha256": source_sha256,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "onnxruntime": _version("onnxruntime"),
                "onnx": _version("onnx"),
            }
            written = Path(tmp) / "record.json"
            written.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
            os.replace(written, record)
    logger.info("embedding_model_derived path=%s bytes=%d", target, len(data))
    return DerivedModel(data, target, built=True)


def discard(derived: DerivedModel) -> None:
    """Delete a cached derived model (e.g. one that failed a check after it was built)."""
    if derived.path is not None:
        for path in (derived.path, derived.path.with_name(derived.path.name + ".json")):
            path.unlink(missing_ok=True)


def _cached(target: Path, record: Path, source_sha256: str, *, warn: bool = False) -> bytes | None:
    """The cached file's bytes if its record says it was derived from this source by this
    recipe and its content still has the recorded sha256; None otherwise."""
    try:
        facts = json.loads(record.read_text(encoding="utf-8"))
        data = target.read_bytes()
    except (OSError, ValueError):
        return None
    if (
        not isinstance(facts, dict)
        or facts.get("recipe") != RECIPE
        or facts.get("source_sha256") != source_sha256
        or facts.get("sha256") != hashlib.sha256(data).hexdigest()
    ):
        if warn and target.exists():
            logger.warning("embedding_model_cache_invalid path=%s; rebuilding", target)
        return None
    return data


def _build(source: Path, workdir: Path) -> bytes:
    """Fold the int8 weights into constants, then quantise the weight matmuls dynamically."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise DerivationError(f"cannot derive the quantised model: {exc}") from exc
    prepared, quantized = workdir / "prepared.onnx", workdir / "quantized.onnx"
    try:
        # onnxruntime's basic optimisation folds Cast(int8) * scale into float32 constants,
        # which is what lets quantize_dynamic see the weights (it only quantises constant B).
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            str(prepared),
            str(quantized),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )
        model = onnx.load(str(quantized))
    except Exception as exc:  # onnx and onnxruntime raise many untyped errors
        raise DerivationError(f"cannot derive the quantised model: {exc}") from exc
    if not any(node.op_type == "MatMulInteger" for node in model.graph.node):
        raise DerivationError("cannot derive the quantised model: no weight matmul to quantise")
    return quantized.read_bytes()


def _prepare_dir(cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    ignore = cache_dir / ".gitignore"
    if not ignore.exists():
        # model files never belong in a repository, even when the store lives inside one
        ignore.write_text("# derived embedding models (see knowledge/quantization.py)\n*\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock across processes (POSIX); without fcntl, atomic renames
    alone keep the cache consistent (two processes may then both build)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
