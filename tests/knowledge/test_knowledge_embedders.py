"""The local ONNX embedder (real model, offline) and the OpenAI-compatible one (fake transport)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import httpx
import pytest

from knowledge import EmbeddingError, LocalEmbedder, OpenAIEmbedder
from knowledge.embedders import Embedder
from knowledge.testing import HashingEmbedder


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embedders_fit_the_protocol(local_embedder: LocalEmbedder) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    for embedder in (local_embedder, HashingEmbedder(), OpenAIEmbedder(client)):
        assert isinstance(embedder, Embedder)
    client.close()


def test_local_embedder_vectors(local_embedder: LocalEmbedder) -> None:
    assert local_embedder.name == "all-MiniLM-L6-v2-onnx-int8-dyn"
    assert local_embedder.quantized
    assert local_embedder.load_seconds is not None and local_embedder.load_seconds < 30
    texts = [
        "How much does it cost to move a grand piano?",
        "What is the price of moving a grand piano?",
        "Is the storage warehouse heated in winter?",
    ]
    vectors = local_embedder.embed(texts)
    assert [len(v) for v in vectors] == [384] * 3
    assert all(math.isclose(math.sqrt(cosine(v, v)), 1.0, rel_tol=1e-5) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > 0.8
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert local_embedder.embed([]) == []


@pytest.mark.parametrize("model", ["local_embedder", "packaged_embedder"])
def test_neighbours_and_padding_do_not_change_vectors(
    model: str, request: pytest.FixtureRequest
) -> None:
    embedder: LocalEmbedder = request.getfixturevalue(model)
    short = "Stairs cost extra."
    long = "A much longer text about carrying an upright piano up four flights of stairs. " * 8
    others = [f"Storage costs {n} pounds a week near Croydon." for n in range(12)]
    alone = embedder.embed([short])[0]
    padded = embedder.embed([long, short, long])[1]
    crowded = embedder.embed([*others, short, long])[len(others)]
    assert cosine(alone, padded) > 0.99999
    assert cosine(alone, crowded) > 0.99999


def test_inputs_over_the_model_limit_are_truncated(local_embedder: LocalEmbedder) -> None:
    (vector,) = local_embedder.embed(["piano " * 1000])
    assert len(vector) == 384


def test_model_loads_once_under_concurrency(model_cache: Path) -> None:
    embedder = LocalEmbedder(cache_dir=model_cache)
    results: list[list[list[float]]] = []
    threads = [
        threading.Thread(target=lambda: results.append(embedder.embed(["same text"])))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert all(cosine(r[0], results[0][0]) > 0.99999 for r in results)
    session = embedder._session
    embedder.load()
    assert embedder._session is session


def test_wrong_model_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(EmbeddingError, match="cannot load"):
        LocalEmbedder(model_path=bogus, name="bogus").embed(["x"])
    with pytest.raises(EmbeddingError, match="cannot read"):
        LocalEmbedder(model_path=tmp_path / "missing.onnx").embed(["x"])


# -- OpenAI-compatible -------------------------------------------------------------------------


def fake_openai(requests: list[dict[str, object]], *, dims: int = 4) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append({"url": str(request.url), "auth": request.headers.get("authorization"),
                         **body})  # fmt: skip
        data = [
            {"object": "embedding", "index": i, "embedding": [float(i + 1)] * dims}
            for i in range(len(body["input"]))
        ]
        data.reverse()  # the API does not promise order; the index does
        return httpx.Response(200, json={"object": "list", "data": data, "model": body["model"]})

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_openai_embedder_batches_orders_and_normalises() -> None:
    requests: list[dict[str, object]] = []
    with fake_openai(requests) as client:
        embedder = OpenAIEmbedder(
            client,
            model="text-embedding-3-small",
            dimensions=4,
            base_url="http://llm.test/v1/",
            api_key="sk-test",
            batch_size=2,
        )
        vectors = embedder.embed(["a", "b", "c"])
    assert embedder.name == "openai:text-embedding-3-small:4"
    assert [r["input"] for r in requests] == [["a", "b"], ["c"]]
    assert requests[0]["url"] == "http://llm.test/v1/embeddings"
    assert requests[0]["auth"] == "Bearer sk-test"
    assert requests[0]["dimensions"] == 4 and requests[0]["model"] == "text-embedding-3-small"
    assert vectors == [[0.5] * 4, [0.5] * 4, [0.5] * 4]


def test_openai_native_dimensions_are_not_sent() -> None:
    requests: list[dict[str, object]] = []
    with fake_openai(requests, dims=1536) as client:
        embedder = OpenAIEmbedder(client)
        assert embedder.dimensions == 1536
        embedder.embed(["a"])
    assert "dimensions" not in requests[0]
    with pytest.raises(ValueError, match="dimensions"):
        OpenAIEmbedder(client, model="some-local-model")


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(429, text="rate limited"), "HTTP 429"),
        (httpx.Response(200, json={"nothing": []}), "unexpected"),
        (httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0]}]}), "dimensions"),
    ],
)
def test_openai_errors(response: httpx.Response, message: str) -> None:
    with (
        httpx.Client(transport=httpx.MockTransport(lambda r: response)) as client,
        pytest.raises(EmbeddingError, match=message),
    ):
        OpenAIEmbedder(client, dimensions=4).embed(["a"])


def test_openai_transport_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        httpx.Client(transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(EmbeddingError, match="connection refused"),
    ):
        OpenAIEmbedder(client).embed(["a"])
