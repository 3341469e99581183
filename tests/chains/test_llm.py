"""The Groq boundary, through the real ChatGroq client against a loopback Groq; provider choice; error kinds."""

from __future__ import annotations

import asyncio
import threading
import time

import groq
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_groq import ChatGroq

from chains.llm import (
    LLMInfo,
    build_llm,
    classify_llm_error,
    describe_llm,
    retry_after_seconds,
)
from tests.conftest import make_settings
from tests.fakes.groq_server import CHAT_PATH, FakeGroq, Reply
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.weaviate import free_port
from ticket_rag.settings import Settings

KEY = "gsk-test-not-a-real-key"
QUESTION = [SystemMessage("You answer support questions."), HumanMessage("How do I reset my router?")]


def groq_settings(base_url: str, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "llm_provider": "groq",
        "groq_api_key": KEY,
        "groq_base_url": base_url,
        "groq_model": "llama-test-8b",
        "llm_temperature": 0.2,
        "llm_max_tokens": 300,
        "llm_timeout": 5.0,
        "llm_max_retries": 2,
    }
    return make_settings(**{**base, **overrides})


def groq_llm(base_url: str, **overrides: object) -> BaseChatModel:
    llm = build_llm(groq_settings(base_url, **overrides))
    assert isinstance(llm, ChatGroq)
    return llm


def test_answer_and_request_shape(fake_groq: FakeGroq) -> None:
    answer = groq_llm(fake_groq.url).invoke(QUESTION)

    assert answer.content == "Hello from fake Groq."
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 4
    [request] = fake_groq.requests
    assert request.path == CHAT_PATH
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "llama-test-8b"
    assert request.body["messages"] == [
        {"role": "system", "content": "You answer support questions."},
        {"role": "user", "content": "How do I reset my router?"},
    ]
    assert request.body["temperature"] == 0.2
    assert request.body["max_tokens"] == 300
    assert not request.body.get("stream")


def test_stream_arrives_chunk_by_chunk(fake_groq: FakeGroq) -> None:
    # The server holds back everything after the first chunk until the test has seen it,
    # so a client that buffered the whole response would get a truncated stream.
    seen_first = threading.Event()
    fake_groq.then(Reply(chunks=["Unplug", " it", " for", " ten", " seconds."], gate=seen_first))

    stream = groq_llm(fake_groq.url).stream(QUESTION)
    first = next(stream)
    seen_first.set()
    rest = list(stream)

    texts = [c.content for c in [first, *rest] if c.content]
    assert texts == ["Unplug", " it", " for", " ten", " seconds."]
    assert sum(rest, first).response_metadata.get("finish_reason") == "stop"
    assert fake_groq.requests[0].body["stream"] is True


def test_async_stream(fake_groq: FakeGroq) -> None:
    llm = groq_llm(fake_groq.url)

    async def collect() -> list[str]:
        return [str(c.content) async for c in llm.astream(QUESTION) if c.content]

    assert asyncio.run(collect()) == ["Hello", " from", " fake", " Groq."]


def test_rate_limit_is_retried_then_answered(fake_groq: FakeGroq) -> None:
    fake_groq.then(Reply(status=429, headers={"retry-after": "1"}))

    answer = groq_llm(fake_groq.url).invoke(QUESTION)

    assert answer.content == "Hello from fake Groq."
    assert len(fake_groq.requests) == 2
    assert fake_groq.requests[1].headers["x-stainless-retry-count"] == "1"


def test_persistent_rate_limit_is_rate_limited(fake_groq: FakeGroq) -> None:
    fake_groq.default = Reply(status=429, headers={"retry-after": "7"})

    with pytest.raises(groq.RateLimitError) as caught:
        groq_llm(fake_groq.url, llm_max_retries=0).invoke(QUESTION)

    assert classify_llm_error(caught.value) == "rate_limited"
    assert retry_after_seconds(caught.value) == 7
    assert len(fake_groq.requests) == 1


def test_persistent_server_error_gives_up_after_the_retries(fake_groq: FakeGroq) -> None:
    fake_groq.default = Reply(status=500)

    with pytest.raises(groq.InternalServerError) as caught:
        groq_llm(fake_groq.url, llm_max_retries=2).invoke(QUESTION)

    assert len(fake_groq.requests) == 3
    assert classify_llm_error(caught.value) == "unavailable"
    assert retry_after_seconds(caught.value) is None


def test_slow_upstream_times_out(fake_groq: FakeGroq) -> None:
    fake_groq.default = Reply(delay=60)
    started = time.monotonic()

    with pytest.raises(groq.APITimeoutError) as caught:
        groq_llm(fake_groq.url, llm_timeout=1.0, llm_max_retries=1).invoke(QUESTION)

    # Two attempts of 1 s each plus one backoff of under a second; generous for a busy machine.
    assert time.monotonic() - started < 15
    assert len(fake_groq.requests) == 2
    assert classify_llm_error(caught.value) == "timeout"


def test_unreachable_upstream_is_unavailable() -> None:
    with pytest.raises(groq.APIConnectionError) as caught:
        groq_llm(f"http://127.0.0.1:{free_port()}", llm_max_retries=0).invoke(QUESTION)

    assert not isinstance(caught.value, groq.APITimeoutError)
    assert classify_llm_error(caught.value) == "unavailable"


def test_none_builds_nothing() -> None:
    settings = make_settings(llm_provider="none", groq_api_key=KEY)

    assert build_llm(settings) is None
    assert describe_llm(settings) is None


def test_auto_with_a_key_picks_groq() -> None:
    settings = make_settings(llm_provider="auto", groq_api_key=KEY, groq_model="llama-test-8b")

    assert describe_llm(settings) == LLMInfo(provider="groq", model="llama-test-8b", offline_fallback=False)
    llm = build_llm(settings)
    assert isinstance(llm, ChatGroq) and llm.model_name == "llama-test-8b"
    assert llm.metadata is not None
    assert llm.metadata["llm_provider"] == "groq" and llm.metadata["llm_offline_fallback"] is False


def test_auto_without_a_key_falls_back_to_the_extractive_answer() -> None:
    settings = make_settings(llm_provider="auto", groq_api_key=None)

    assert describe_llm(settings) == LLMInfo(provider="extractive", model="extractive", offline_fallback=True)
    assert build_llm(settings) is None  # no model: the chain answers with the tickets' own sentences


def test_local_by_choice_is_not_a_fallback() -> None:
    settings = make_settings(llm_provider="local", groq_api_key=KEY)

    info = describe_llm(settings)
    assert info is not None and info.provider == "local" and not info.offline_fallback


def test_groq_without_a_key_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="GROQ_API_KEY"):
        build_llm(make_settings(llm_provider="groq", groq_api_key=None))


def test_the_key_never_shows_in_the_model_repr(fake_groq: FakeGroq) -> None:
    llm = groq_llm(fake_groq.url)

    assert KEY not in repr(llm) and KEY not in str(llm.dict())
