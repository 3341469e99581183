"""The LLM factory: Groq when a key is set, otherwise no model (the extractive answer), and what its errors mean.

LLM_PROVIDER=local runs SmolLM2-135M in-process, guarded by the chain (chains/answers.py); it is never
chosen automatically, because unguarded it loops and invents (docs/answers.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import groq
import httpx
from langchain_core.language_models import BaseChatModel
from langchain_groq import ChatGroq

from chains.local_llm import LlamaCppChatModel
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.local_llm_artifacts import SMOLLM2_NAME, ensure_smollm2
from ticket_rag.settings import Settings

EXTRACTIVE_NAME = "extractive"
LLMErrorKind = Literal["rate_limited", "timeout", "unavailable"]


@dataclass(frozen=True)
class LLMInfo:
    """Which model answers: for labelling answers, traces and the readiness probe."""

    provider: Literal["groq", "local", "extractive"]
    model: str
    # True when LLM_PROVIDER=auto fell back to the extractive answer because GROQ_API_KEY is unset.
    offline_fallback: bool


def describe_llm(settings: Settings) -> LLMInfo | None:
    """The provider and model that build_llm(settings) uses, without building anything; None for LLM_PROVIDER=none."""
    provider = settings.llm_provider
    if provider == "none":
        return None
    if provider == "groq" or (provider == "auto" and settings.groq_api_key is not None):
        return LLMInfo(provider="groq", model=settings.groq_model, offline_fallback=False)
    if provider == "local":
        return LLMInfo(provider="local", model=SMOLLM2_NAME, offline_fallback=False)
    return LLMInfo(provider="extractive", model=EXTRACTIVE_NAME, offline_fallback=provider == "auto")


def build_llm(settings: Settings) -> BaseChatModel | None:
    """The chat model chosen by LLM_PROVIDER, or None for `none` and the extractive answer; the local model may fetch
    its weights.
    """
    info = describe_llm(settings)
    if info is None or info.provider == "extractive":
        return None
    metadata: dict[str, object] = {"llm_provider": info.provider, "llm_offline_fallback": info.offline_fallback}
    if info.provider == "groq":
        return _build_groq(settings, metadata=metadata)
    return _build_local(settings, metadata=metadata)


def _build_groq(settings: Settings, *, metadata: dict[str, object]) -> BaseChatModel:
    if settings.groq_api_key is None:
        raise ConfigError(
            "LLM_PROVIDER=groq needs GROQ_API_KEY (or set LLM_PROVIDER=auto to answer extractively without it)"
        )
    # ChatGroq's own retries: 408/409/429/5xx and timeouts, obeying Retry-After up to 60 s.
    return ChatGroq(
        model_name=settings.groq_model,
        api_key=settings.groq_api_key,
        base_url=settings.groq_base_url,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
        timeout=settings.llm_timeout,
        max_retries=settings.llm_max_retries,
        metadata=metadata,
    )


def _build_local(settings: Settings, *, metadata: dict[str, object]) -> BaseChatModel:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the local LLM needs llama-cpp-python: run `make setup`, set GROQ_API_KEY, or set LLM_PROVIDER=none"
        ) from None
    return LlamaCppChatModel(
        model_path=ensure_smollm2(settings.cache_dir),
        model_name=SMOLLM2_NAME,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
        metadata=metadata,
    )


def classify_llm_error(exc: BaseException) -> LLMErrorKind:
    """What an LLM call's failure means for the client: 503 for rate_limited and unavailable, 504 for timeout."""
    if isinstance(exc, groq.RateLimitError):
        return "rate_limited"
    if isinstance(exc, (groq.APITimeoutError, httpx.TimeoutException, TimeoutError)):
        return "timeout"
    return "unavailable"


def retry_after_seconds(exc: BaseException) -> int | None:
    """The upstream's Retry-After in whole seconds, when it sent one, for our own 503's Retry-After."""
    if not isinstance(exc, groq.APIStatusError):
        return None
    value = exc.response.headers.get("retry-after")
    try:
        return max(1, round(float(value))) if value is not None else None
    except ValueError:
        return None
