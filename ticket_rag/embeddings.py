"""The embedding model: all-mpnet-base-v2 through langchain-huggingface, loaded once from local files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from langchain_huggingface import HuggingFaceEmbeddings

from ticket_rag.artifacts import resolve_model
from ticket_rag.settings import ConfigError, Settings

logger = logging.getLogger(__name__)


def build_embeddings(settings: Settings) -> HuggingFaceEmbeddings:
    """Load the sentence-transformers model (mean pooling, L2-normalised vectors) on the CPU."""
    model = resolve_model(
        settings.embedding_model, cache_dir=settings.cache_dir, expected_sha256=settings.embedding_sha256
    )
    local = Path(model).is_dir()
    if local:
        # A local folder must never fall back to a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        embeddings = HuggingFaceEmbeddings(
            model_name=model,
            model_kwargs={"device": "cpu", "local_files_only": local},
            encode_kwargs={"normalize_embeddings": True, "batch_size": settings.embedding_batch_size},
        )
    except Exception as exc:
        raise ConfigError(f"EMBEDDING_MODEL {model} could not be loaded: {type(exc).__name__}: {exc}") from exc
    logger.info("loaded embedding model %s (%d dimensions)", model, embedding_dimension(embeddings))
    return embeddings


def embedding_dimension(embeddings: object) -> int:
    """The vector size the model produces."""
    client = getattr(embeddings, "_client", None)
    if client is not None and hasattr(client, "get_embedding_dimension"):
        return int(client.get_embedding_dimension())
    if client is not None and hasattr(client, "get_sentence_embedding_dimension"):
        return int(client.get_sentence_embedding_dimension())
    return len(embeddings.embed_query("dimension probe"))  # type: ignore[attr-defined]
