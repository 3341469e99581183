"""An offline chat model: a GGUF file run in-process by llama.cpp, wrapped as a LangChain chat model.

Meant for SmolLM2-135M-Instruct when no Groq key is set: fast enough on one core (40-80 tokens/s)
but weak at grounding, so callers must not trust it to cite or quote the context it was given.
The prompt and the answer share n_ctx tokens; a longer prompt raises ValueError. LLM_TIMEOUT does not
apply here: LLM_MAX_TOKENS bounds the time instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

if TYPE_CHECKING:
    from llama_cpp import Llama

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


@dataclass
class _Loaded:
    llama: Llama
    # llama.cpp's context is not thread-safe: one generation at a time per loaded model.
    lock: threading.Lock


_LOADED: dict[tuple[Path, int, int | None], _Loaded] = {}
_LOADED_LOCK = threading.Lock()


def _load(path: Path, *, n_ctx: int, n_threads: int | None) -> _Loaded:
    """The process-wide llama.cpp model for this file, loaded on first use."""
    key = (path.resolve(), n_ctx, n_threads)
    with _LOADED_LOCK:
        if key not in _LOADED:
            from llama_cpp import Llama

            _LOADED[key] = _Loaded(
                Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False),
                threading.Lock(),
            )
        return _LOADED[key]


def _to_llama(message: BaseMessage) -> dict[str, str]:
    role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
    if role is None:
        raise ValueError(f"the local model takes system, human and ai messages, not {message.type}")
    return {"role": role, "content": message.text}


def _usage(usage: dict[str, int] | None) -> UsageMetadata | None:
    if not usage:
        return None
    return UsageMetadata(
        input_tokens=usage.get("prompt_tokens", 0),
        output_tokens=usage.get("completion_tokens", 0),
        total_tokens=usage.get("total_tokens", 0),
    )


class LlamaCppChatModel(BaseChatModel):
    """A GGUF chat model run in-process by llama-cpp-python, with the model's own chat template."""

    model_path: Path
    model_name: str
    temperature: float = 0.1
    max_tokens: int = 512
    n_ctx: int = 2048
    n_threads: int | None = None

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def load(self) -> None:
        """Load the weights now rather than on the first call (start-up, readiness)."""
        _load(self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads)

    def _params(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "messages": [_to_llama(m) for m in messages],
            "temperature": kwargs.get("temperature", self.temperature),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "stop": stop or [],
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        loaded = _load(self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads)
        params = self._params(messages, stop, kwargs)
        with loaded.lock:
            response: Any = loaded.llama.create_chat_completion(**params)
        choice = response["choices"][0]
        metadata = {"model_name": self.model_name, "finish_reason": choice.get("finish_reason")}
        message = AIMessage(
            content=choice["message"].get("content") or "",
            response_metadata=metadata,
            usage_metadata=_usage(response.get("usage")),
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=metadata)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        loaded = _load(self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads)
        params = self._params(messages, stop, kwargs)
        # Held until the stream ends or its consumer closes it, so a second caller waits its turn.
        with loaded.lock:
            parts: Any = loaded.llama.create_chat_completion(**params, stream=True)
            for part in parts:
                choice = part["choices"][0]
                text = choice["delta"].get("content") or ""
                finish = choice.get("finish_reason")
                if not text and not finish:
                    continue
                metadata = {"model_name": self.model_name, "finish_reason": finish} if finish else {}
                chunk = ChatGenerationChunk(
                    message=AIMessageChunk(content=text, response_metadata=metadata),
                    generation_info=metadata or None,
                )
                if run_manager and text:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
