"""The embedding model: all-mpnet-base-v2, loaded once from local files, on torch or ONNX Runtime."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import cast

from langchain_core.embeddings import Embeddings
from langchain_huggingface import HuggingFaceEmbeddings

from ticket_rag.errors import ConfigError
from ticket_rag.runtime.artifacts import MODEL_ALIASES, resolve_model
from ticket_rag.settings import DEFAULT_MODEL_SHA256, Settings

logger = logging.getLogger(__name__)


def build_embeddings(settings: Settings) -> Embeddings:
    """Load the embedding model (mean pooling, L2-normalised vectors) on the CPU, with EMBEDDING_BACKEND's runtime."""
    model = resolve_model(
        settings.embedding_model, cache_dir=settings.cache_dir, expected_sha256=settings.embedding_sha256
    )
    if settings.embedding_backend != "torch":
        return _build_onnx(settings, model)
    local = Path(model).is_dir()
    if local:
        # A local folder must never fall back to a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
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


def prepare_embeddings(settings: Settings) -> None:
    """Fetch and verify the weights and, for an ONNX backend, export them (first run only) without loading the model."""
    model = resolve_model(
        settings.embedding_model, cache_dir=settings.cache_dir, expected_sha256=settings.embedding_sha256
    )
    if settings.embedding_backend != "torch":
        from ticket_rag.embeddings.onnx import ensure_onnx_model

        _check_local(settings, model)
        ensure_onnx_model(
            Path(model), settings.cache_dir, settings.embedding_backend, source_sha256=_source_sha256(settings)
        )


def _check_local(settings: Settings, model: str) -> None:
    if not Path(model).is_dir():
        raise ConfigError(
            f"EMBEDDING_BACKEND={settings.embedding_backend} needs a local model folder, "
            f"and EMBEDDING_MODEL {model} is a hub id"
        )


def _source_sha256(settings: Settings) -> str | None:
    # resolve_model has just checked the weights against this hash (the default model always against its own).
    return (DEFAULT_MODEL_SHA256 if settings.embedding_model in MODEL_ALIASES else settings.embedding_sha256) or None


def _build_onnx(settings: Settings, model: str) -> Embeddings:
    from ticket_rag.embeddings.onnx import OnnxVariant, build_onnx_embeddings

    _check_local(settings, model)
    embeddings = build_onnx_embeddings(
        Path(model),
        settings.cache_dir,
        cast(OnnxVariant, settings.embedding_backend),
        source_sha256=_source_sha256(settings),
        batch_size=settings.embedding_batch_size,
    )
    logger.info(
        "loaded embedding model %s on %s (%d dimensions)",
        model,
        settings.embedding_backend,
        embedding_dimension(embeddings),
    )
    return embeddings


def embedding_dimension(embeddings: object) -> int:
    """The vector size the model produces."""
    client = getattr(embeddings, "_client", None)
    if client is not None and hasattr(client, "get_embedding_dimension"):
        return int(client.get_embedding_dimension())
    if client is not None and hasattr(client, "get_sentence_embedding_dimension"):
        return int(client.get_sentence_embedding_dimension())
    return len(embeddings.embed_query("dimension probe"))  # type: ignore[attr-defined]
