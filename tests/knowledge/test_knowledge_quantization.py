"""The derived int8-activation model: built once, reused, rebuilt when corrupt, and the packaged
model as the fallback when it cannot be derived.

The cache mechanics run on a tiny ONNX model with the packaged model's weight layout (int8
initializer, Cast, Mul by a scale, MatMul), which derives in milliseconds; the real model is
derived once per session (the ``local_embedder`` fixture) and reused here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from knowledge import EmbeddingMismatch, KnowledgeStore, LocalEmbedder, quantization
from knowledge import embedders as embedders_module
from knowledge.quantization import DerivationError, DerivedModel, dynamic_int8


def tiny_model(path: Path, *, weights: bool = True) -> bytes:
    """A one-matmul model whose int8 weights are dequantised at run time, like MiniLM's."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    if weights:
        nodes = [
            helper.make_node("Cast", ["w_q"], ["w_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["w_f", "w_scale"], ["w"]),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ]
        initializers = [
            numpy_helper.from_array(rng.integers(-127, 128, (16, 8), dtype=np.int8), "w_q"),
            numpy_helper.from_array(np.full((1, 8), 0.02, dtype=np.float32), "w_scale"),
        ]
        width = 8
    else:
        nodes, initializers, width = [helper.make_node("Relu", ["x"], ["y"])], [], 16
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # what the packaged model uses; onnxruntime reads it
    data: bytes = model.SerializeToString()
    path.write_bytes(data)
    return data


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "tiny.onnx"
    return path, tiny_model(path)


def cached_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.suffix in {".onnx", ".json"})


# -- the cache, on a tiny model ----------------------------------------------------------------


def test_derived_once_then_reused(tmp_path: Path, tiny: tuple[Path, bytes]) -> None:
    source, data = tiny
    cache = tmp_path / "cache"
    first = dynamic_int8(source, data, cache)
    assert first.built and first.path is not None and first.path.parent == cache
    assert first.data == first.path.read_bytes()
    record = json.loads(first.path.with_name(first.path.name + ".json").read_text())
    assert record["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["sha256"] == hashlib.sha256(first.data).hexdigest()
    assert record["recipe"] == quantization.RECIPE
    assert (cache / ".gitignore").read_text().splitlines()[-1] == "*"
    stamp = first.path.stat().st_mtime_ns

    second = dynamic_int8(source, data, cache)
    assert not second.built and second.data == first.data
    assert first.path.stat().st_mtime_ns == stamp
    assert cached_files(cache) == [first.path.name, first.path.name + ".json"]


def test_the_quantised_model_runs_and_agrees(tmp_path: Path, tiny: tuple[Path, bytes]) -> None:
    import onnx
    import onnxruntime as ort

    source, data = tiny
    derived = dynamic_int8(source, data, tmp_path / "cache")
    ops = {node.op_type for node in onnx.load_from_string(derived.data).graph.node}
    assert "MatMulInteger" in ops and "MatMul" not in ops
    x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    want = ort.InferenceSession(data).run(None, {"x": x})[0]
    got = ort.InferenceSession(derived.data).run(None, {"x": x})[0]
    cosines = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    # The agreement LocalEmbedder requires of a derived model before it uses one. Uniform
    # full-range weights are the worst case for x86 CPUs without VNNI (AVX2 only), whose
    # u8 x s8 kernels add pairs of products in 16 bits and saturate: 0.981 at worst on one
    # (7-bit weights, onnxruntime's reduce_range, would give 0.9999 there), over 0.99 on the
    # CPUs this test ran on before. MiniLM barely feels it: on the AVX2 CPU its agreement
    # with the packaged model is the same with 7-bit weights (lowest 0.9856 against 0.9861
    # over the labelled questions and chunks), and test_knowledge_quality.py passes.
    assert cosines.min() >= embedders_module._PROBE_MIN_COSINE
    assert cosines.mean() > 0.99


def test_concurrent_starts_build_once(tmp_path: Path, tiny: tuple[Path, bytes]) -> None:
    source, data = tiny
    cache = tmp_path / "cache"
    start = threading.Barrier(4)
    results: list[DerivedModel] = []

    def derive() -> None:
        start.wait()
        results.append(dynamic_int8(source, data, cache))

    threads = [threading.Thread(target=derive) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.built for r in results) == [False, False, False, True]
    assert len({r.data for r in results}) == 1
    assert len(cached_files(cache)) == 2  # no temporary files left behind


@pytest.mark.parametrize("damage", ["model", "record", "model missing"])
def test_a_corrupt_cache_is_rebuilt(
    tmp_path: Path, tiny: tuple[Path, bytes], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    source, data = tiny
    cache = tmp_path / "cache"
    good = dynamic_int8(source, data, cache)
    assert good.path is not None
    if damage == "model":
        broken = bytearray(good.data)
        broken[len(broken) // 2] ^= 0xFF
        good.path.write_bytes(bytes(broken))
    elif damage == "record":
        good.path.with_name(good.path.name + ".json").write_text("{not json")
    else:
        good.path.unlink()

    with caplog.at_level(logging.WARNING, logger="knowledge"):
        again = dynamic_int8(source, data, cache)
    assert again.built and again.data == good.data
    assert good.path.read_bytes() == good.data
    if damage == "model":
        assert "embedding_model_cache_invalid" in caplog.text
    assert not dynamic_int8(source, data, cache).built


def test_another_source_gets_its_own_file(tmp_path: Path, tiny: tuple[Path, bytes]) -> None:
    source, data = tiny
    cache = tmp_path / "cache"
    first = dynamic_int8(source, data, cache)
    other = tmp_path / "other" / "tiny.onnx"
    other.parent.mkdir()
    other_data = data.replace(b"tiny", b"tinz")  # same weights, another graph name
    other.write_bytes(other_data)
    second = dynamic_int8(other, other_data, cache)
    assert second.built and second.path != first.path
    assert not dynamic_int8(source, data, cache).built


def test_a_graph_without_weight_matmuls_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "relu.onnx"
    data = tiny_model(source, weights=False)
    with pytest.raises(DerivationError, match="no weight matmul"):
        dynamic_int8(source, data, tmp_path / "cache")
    assert cached_files(tmp_path / "cache") == []


def test_an_unwritable_cache_still_derives(
    tmp_path: Path, tiny: tuple[Path, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    source, data = tiny
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="knowledge"):
        derived = dynamic_int8(source, data, blocked / "cache")
    assert derived.built and derived.path is None and derived.data
    assert "embedding_model_cache_unwritable" in caplog.text


def test_without_the_onnx_package_derivation_fails_cleanly(
    tmp_path: Path, tiny: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, data = tiny
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(DerivationError, match="onnx"):
        dynamic_int8(source, data, tmp_path / "cache")


# -- the real model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_embedder_reuses_the_derived_model(
    local_embedder: LocalEmbedder, model_cache: Path
) -> None:
    assert local_embedder.model_origin == "derived"  # the session's cache started empty
    [model] = [p for p in model_cache.iterdir() if p.suffix == ".onnx"]
    stamp = model.stat().st_mtime_ns

    again = LocalEmbedder(cache_dir=model_cache)
    again.load()
    assert again.model_origin == "cached" and again.quantized
    assert again.name == local_embedder.name == LocalEmbedder.QUANTIZED_NAME
    assert model.stat().st_mtime_ns == stamp
    texts = ["Is my piano insured?", "We store pianos in a heated warehouse."]
    assert np.allclose(again.embed_array(texts), local_embedder.embed_array(texts), atol=1e-6)


@pytest.mark.slow
def test_falls_back_to_the_packaged_model_without_onnx(
    tmp_path: Path,
    packaged_embedder: LocalEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    embedder = LocalEmbedder(cache_dir=tmp_path / "models")
    with caplog.at_level(logging.WARNING, logger="knowledge"):
        name = embedder.name
    assert name == LocalEmbedder.MODEL_NAME == packaged_embedder.name
    assert not embedder.quantized and embedder.model_origin == "packaged"
    assert "embedding_model_fallback" in caplog.text
    texts = ["How many steps can you carry a grand piano up?"]
    assert np.allclose(embedder.embed_array(texts), packaged_embedder.embed_array(texts))
    assert not (tmp_path / "models").exists() or cached_files(tmp_path / "models") == []


@pytest.mark.slow
def test_a_derived_model_that_disagrees_is_discarded(
    tmp_path: Path,
    model_cache: Path,
    local_embedder: LocalEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    [model] = [p for p in model_cache.iterdir() if p.suffix == ".onnx"]
    copy = tmp_path / model.name
    copy.write_bytes(model.read_bytes())

    def pretend_built(source: Path, data: bytes, cache_dir: Path) -> DerivedModel:
        return DerivedModel(copy.read_bytes(), copy, built=True)

    monkeypatch.setattr(quantization, "dynamic_int8", pretend_built)
    monkeypatch.setattr(embedders_module, "_PROBE_MIN_COSINE", 1.01)  # nothing agrees that well
    embedder = LocalEmbedder(cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="knowledge"):
        assert embedder.name == LocalEmbedder.MODEL_NAME
    assert "agrees only" in caplog.text
    assert not copy.exists()


@pytest.mark.slow
def test_collections_of_the_packaged_model_must_be_rebuilt(
    tmp_path: Path, local_embedder: LocalEmbedder, packaged_embedder: LocalEmbedder
) -> None:
    doc = b"# Insurance\n\nEvery piano is insured in transit.\n"
    with KnowledgeStore(path=tmp_path / "db", embedder=packaged_embedder) as old:
        old.add_bytes("movers", "insurance.md", doc)
    with KnowledgeStore(path=tmp_path / "db", embedder=local_embedder) as new:
        with pytest.raises(EmbeddingMismatch, match="onnx-int8-dyn"):
            new.search("movers", "is it insured?")
        assert new.drop("movers")
        assert new.add_bytes("movers", "insurance.md", doc).status == "added"
        assert new.search("movers", "is it insured?")[0].doc_id == "insurance.md"


def test_the_default_cache_is_the_users(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert LocalEmbedder().cache_dir == tmp_path / "xdg" / "relay" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert LocalEmbedder().cache_dir == Path.home() / ".cache" / "relay" / "models"
