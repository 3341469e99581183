"""The embedding model the service runs, on each backend: the design's vectors (mean pooling, L2-normalised, 768-d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from langchain_core.embeddings import Embeddings
from transformers import AutoModel, AutoTokenizer

from tests.conftest import make_settings
from ticket_rag.embeddings.model import build_embeddings
from ticket_rag.runtime.artifacts import managed_model_dir

BACKENDS = ["torch", "onnx-fp32", "onnx-int8"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, Embeddings]:
    return request.param, build_embeddings(make_settings(embedding_backend=request.param))


def _raw_transformer(text: str) -> np.ndarray:
    """tokens -> transformer -> mean pooling -> L2 normalisation, straight from transformers."""
    path = managed_model_dir(make_settings().cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=384)
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (tokens * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1)[0].numpy()


def test_vectors_are_768_dimensional_and_unit_length(backend: tuple[str, Embeddings]) -> None:
    _, embeddings = backend
    vectors = np.array(embeddings.embed_documents(["Cannot log in after password reset", "Printer is jammed"]))
    assert vectors.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_matches_mean_pooling_of_the_raw_transformer(backend: tuple[str, Embeddings]) -> None:
    """The service's vector is the design's; fp32 to float rounding, int8 within quantization error."""
    name, embeddings = backend
    text = "How do I reset my password?"
    expected = _raw_transformer(text)
    actual = np.array(embeddings.embed_query(text))
    if name == "onnx-int8":
        assert float(actual @ expected) > 0.99
    else:
        np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_related_tickets_are_closer_than_unrelated(backend: tuple[str, Embeddings]) -> None:
    _, embeddings = backend
    query, related, unrelated = np.array(
        embeddings.embed_documents(
            [
                "I forgot my password and cannot sign in",
                "Login fails: how to reset a lost password",
                "Invoice shows the wrong VAT rate",
            ]
        )
    )
    assert query @ related > query @ unrelated + 0.2


def test_the_default_backend_is_onnx_int8() -> None:
    assert make_settings().embedding_backend == "onnx-int8"
