from __future__ import annotations

import numpy as np
import torch
from langchain_core.embeddings import Embeddings
from transformers import AutoModel, AutoTokenizer

from ticket_rag.artifacts import managed_model_dir
from tests.conftest import make_settings


def test_vectors_are_768_dimensional_and_unit_length(embeddings: Embeddings) -> None:
    vectors = np.array(embeddings.embed_documents(["Cannot log in after password reset", "Printer is jammed"]))
    assert vectors.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_matches_mean_pooling_of_the_raw_transformer(embeddings: Embeddings) -> None:
    """The service's vector is the design's: tokens -> transformer -> mean pooling -> L2 normalisation."""
    text = "How do I reset my password?"
    path = managed_model_dir(make_settings().cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=384)
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (tokens * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(pooled, dim=1)[0].numpy()
    np.testing.assert_allclose(np.array(embeddings.embed_query(text)), expected, atol=1e-4)


def test_related_tickets_are_closer_than_unrelated(embeddings: Embeddings) -> None:
    query, related, unrelated = np.array(
        embeddings.embed_documents(
            ["I forgot my password and cannot sign in", "Login fails: how to reset a lost password", "Invoice shows the wrong VAT rate"]
        )
    )
    assert query @ related > query @ unrelated + 0.2
