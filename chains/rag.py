"""The RAG chain: normalise -> condense -> retrieve -> weigh evidence -> filter -> format -> answer.

Its output streams as dict chunks: first {"sources": [...]}, then {"answer": "..."} pieces, then
{"metadata": {...}}. Invoking it adds the chunks up into one RagOutput-shaped dict, so invoke,
batch and stream carry the same answer and sources over the wire.

How the answer is written depends on the provider: Groq (optionally after a sufficiency check), the
guarded local model, the extractive answer (the tickets' own sentences), or a listing (generation off).
Each way is one method of RagSteps; build_rag_chain composes the named steps.
"""

from __future__ import annotations

import time
import unicodedata
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator, RunnableLambda
from langchain_core.runnables.utils import AddableDict

from chains.answers import (
    Evidence,
    escalation_answer,
    extractive_answer,
    guarded_local_answer,
    ticket_text,
    weigh_evidence,
)
from chains.context import as_data, format_context, history_text, listing, to_sources
from chains.evidence import EvidenceModel
from chains.guard import RepetitionGuard
from chains.prompts import Prompts
from chains.retrieval import TicketRetriever
from chains.sanitize import AnswerSanitizer
from chains.schemas import ChatTurn, RagInput, RagOutput
from chains.sufficiency import Sufficiency, check_sufficiency
from ticket_rag.embeddings.redaction import keep
from ticket_rag.errors import CollectionNotFound, InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from ticket_rag.settings import setting_default
from ticket_rag.tickets.keywords import KeywordAnalyzer
from ticket_rag.tickets.schemas import SearchFilters

NO_TICKETS_ANSWER = (
    "No past ticket matches this question closely enough to answer it. "
    "Please escalate it to a human agent, or add detail and ask again."
)
SUFFICIENCY_ANSWER = (
    "The language model judged that the past tickets do not answer this question ({reason}). "
    "Please escalate it to a human agent."
)
WITHHELD = {
    "repetition": "it repeated itself",
    "truncated": "it was cut at the token limit",
    "leftover": "it left link debris",
    "ungrounded": "it stated numbers or codes that no ticket holds",
    "empty": "it was empty",
}
OFFLINE_NOTE = "Answered by the offline fallback model ({model}); check the cited tickets."


@dataclass(frozen=True)
class ChainOptions:
    default_collection: str = setting_default("default_collection")
    k: int = setting_default("rag_k")
    max_k: int = setting_default("rag_max_k")
    min_similarity: float = setting_default("rag_min_similarity")
    max_history: int = setting_default("rag_max_history")
    alpha: float = setting_default("rag_alpha")
    model: str | None = None
    provider: str | None = None
    offline_fallback: bool = False
    # The evidence gate: escalate when the evidence score (chains/evidence.py) is below the threshold.
    evidence_model: EvidenceModel | None = None
    escalation_threshold: float | None = None
    keyword_stemmer: str = setting_default("keyword_stemmer")
    # Ask a Groq model whether the tickets answer before it writes the answer (chains/sufficiency.py).
    sufficiency_check: bool = False
    # Applied to the question and to the ticket text the LLM sees (ticket_rag.embeddings.redaction.redact with
    # REDACT_PII).
    redact: Callable[[str], str] = keep


class RagState(TypedDict, total=False):
    """What one question carries from step to step (a plain dict at run time, so traces show it as such)."""

    started: float
    question: str
    standalone_question: str
    collection: str
    filters: SearchFilters | None
    history: list[ChatTurn]
    k: int
    exclude: list[uuid.UUID]
    docs: list[Document]  # after drop_irrelevant: the tickets the answer may use
    all_docs: list[Document]  # everything retrieved (the extractive answer may quote a dropped resolution)
    dropped: int
    retrieve_ms: float
    evidence: Evidence
    evidence_ms: float
    context: str
    sources: list[dict[str, Any]]
    sufficiency: dict[str, Any] | None


@dataclass
class Outcome:
    """How the answer was produced, reported in its metadata."""

    kind: str = "generated"  # generated, extractive, listing, escalation, no_tickets
    generated: bool = False
    guard: dict[str, str] | None = None


def check_limits(data: RagInput, options: ChainOptions) -> None:
    """Refuse what the schema allows but the configured caps do not (RAG_MAX_K, RAG_MAX_HISTORY)."""
    if (data.k or options.k) > options.max_k:
        raise InvalidRequest(f"at most {options.max_k} tickets can be retrieved", loc=("body", "input", "k"))
    if len(data.chat_history) > options.max_history:
        raise InvalidRequest(f"at most {options.max_history} turns are accepted", loc=("body", "input", "chat_history"))


def normalise_question(inputs: RagInput | dict[str, Any], options: ChainOptions) -> RagState:
    """Validate the input, clean the question (Unicode NFKC, no control characters, single spaces)."""
    data = inputs if isinstance(inputs, RagInput) else RagInput.model_validate(inputs)
    check_limits(data, options)
    text = unicodedata.normalize("NFKC", options.redact(data.question))
    text = "".join(c if unicodedata.category(c)[0] != "C" else " " for c in text)
    return {
        "started": time.perf_counter(),
        "question": " ".join(text.split()),
        "collection": data.collection or options.default_collection,
        "filters": data.filters,
        "history": data.chat_history,
        "k": data.k or options.k,
        "exclude": [t for t in [data.exclude_ticket, *data.exclude_tickets] if t is not None],
    }


def _llm_error(exc: Exception) -> UpstreamUnavailable | UpstreamTimeout:
    from chains.llm import classify_llm_error, retry_after_seconds

    kind = classify_llm_error(exc)
    if kind == "timeout":
        return UpstreamTimeout("the language model did not answer in time; try again")
    if kind == "rate_limited":  # the provider's own Retry-After goes on to the client
        return UpstreamUnavailable("the language model is rate-limited; try again shortly", retry_after_seconds(exc))
    return UpstreamUnavailable("the language model is unavailable; try again shortly", retry_after_seconds(exc))


def _error_chunk(error: UpstreamUnavailable | UpstreamTimeout) -> AddableDict:
    # Stream clients see why before LangServe's own `error` event; invoke raises as usual.
    return AddableDict(error={"status_code": error.status_code, "detail": error.detail})


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


# --- the steps -------------------------------------------------------------------------------------------


class RagSteps:
    """The chain's steps over one retriever, model, prompts and options; build_rag_chain names and composes them."""

    def __init__(
        self,
        *,
        retriever: TicketRetriever,
        llm: BaseChatModel | None,
        prompts: Prompts,
        options: ChainOptions,
        collection_exists: Callable[[str], bool],
    ) -> None:
        self.retriever, self.llm, self.prompts, self.options = retriever, llm, prompts, options
        self.collection_exists = collection_exists
        self.local = llm is not None and options.provider == "local"
        self.offline = llm is not None and (options.offline_fallback or self.local)
        self.extractive = llm is None and options.provider == "extractive"
        self.judge = llm is not None and options.sufficiency_check and options.provider == "groq"
        self.context_limit = 300 if self.offline else 1200  # the small local model gets shorter tickets
        self.analyzer = KeywordAnalyzer(options.keyword_stemmer)

    def normalise(self, inputs: Any) -> RagState:
        return normalise_question(inputs, self.options)

    async def condense(self, state: RagState, config: RunnableConfig) -> RagState:
        """With a conversation and a model, rewrite the question to stand on its own."""
        state["standalone_question"] = state["question"]
        if state["history"] and self.llm is not None:
            prompt = self.prompts.condense.format(history=history_text(state["history"]), question=state["question"])
            try:
                reply = await self.llm.ainvoke(prompt, config)
            except Exception as exc:
                raise _llm_error(exc) from exc
            rewritten = " ".join(str(reply.content).split())[:2000]
            if rewritten:
                state["standalone_question"] = rewritten
        return state

    def retrieve(self, state: RagState, config: RunnableConfig) -> RagState:
        started = time.perf_counter()
        if not self.collection_exists(state["collection"]):
            raise CollectionNotFound(f"collection '{state['collection']}' does not exist")
        state["docs"] = self.retriever.invoke(
            state["standalone_question"],
            config,
            collection=state["collection"],
            filters=state["filters"],
            k=state["k"],
            exclude=state["exclude"],
        )
        state["retrieve_ms"] = _ms_since(started)
        return state

    def weigh(self, state: RagState) -> RagState:
        """The evidence score that decides escalation (chains/evidence.py), from everything retrieved."""
        started = time.perf_counter()
        state["evidence"] = weigh_evidence(
            question=state["standalone_question"],
            docs=state["docs"],
            analyzer=self.analyzer,
            model=self.options.evidence_model,
            threshold=self.options.escalation_threshold,
        )
        state["evidence_ms"] = _ms_since(started)
        return state

    def keep_relevant(self, state: RagState) -> RagState:
        state["all_docs"] = state["docs"]
        docs = [d for d in state["docs"] if d.metadata["similarity"] >= self.options.min_similarity]
        state["dropped"] = len(state["docs"]) - len(docs)
        state["docs"] = docs[:3] if self.offline else docs
        return state

    def build_context(self, state: RagState) -> RagState:
        state["context"] = format_context(state["docs"], limit=self.context_limit, redact=self.options.redact)
        state["sources"] = to_sources(state["docs"])
        return state

    async def answer(self, states: AsyncIterator[RagState], config: RunnableConfig) -> AsyncIterator[AddableDict]:
        """Sources first, then the answer as it is written, then the metadata."""
        # Drain the input first, so the earlier steps' runs end before generation (which may fail) starts.
        for state in [s async for s in states]:
            yield AddableDict(sources=state["sources"])
            started, outcome = time.perf_counter(), Outcome()
            # aclosing: a client that stops reading closes the model's stream now, not at garbage collection.
            async with aclosing(self._answer_text(state, config, outcome)) as chunks:
                async for chunk in chunks:
                    yield chunk
            yield AddableDict(metadata=self._metadata(state, config, outcome, started))

    # --- the answer, one way per provider --------------------------------------------------------------

    async def _answer_text(
        self, state: RagState, config: RunnableConfig, outcome: Outcome
    ) -> AsyncGenerator[AddableDict, None]:
        refs = [s["ref"] for s in state["sources"]]
        evidence, llm = state["evidence"], self.llm
        verdict: Sufficiency | None = None
        if refs and self.judge and not evidence.escalate:
            try:
                verdict = await self._judge(state, config)
            except (UpstreamUnavailable, UpstreamTimeout) as error:
                yield _error_chunk(error)
                raise
        if not refs:
            outcome.kind = "no_tickets"
            yield AddableDict(answer=NO_TICKETS_ANSWER)
        elif evidence.escalate:
            outcome.kind = "escalation"
            yield AddableDict(answer=escalation_answer(evidence, state["sources"]))
        elif self.extractive:
            outcome.kind = "extractive"
            for line in self._extractive(state, refs).splitlines(keepends=True):
                yield AddableDict(answer=line)
        elif llm is None:
            outcome.kind = "listing"
            sanitizer = AnswerSanitizer(refs)  # ticket text is untrusted: no links, images or markup in an answer
            yield AddableDict(answer=sanitizer.feed(listing(state["sources"])) + sanitizer.close())
        elif self.local:
            async with aclosing(self._local(llm, state, config, refs, outcome)) as chunks:
                async for chunk in chunks:
                    yield chunk
        elif verdict is not None and not verdict.answerable:
            outcome.kind = "escalation"
            yield AddableDict(
                answer=SUFFICIENCY_ANSWER.format(reason=as_data(verdict.reason, 300) or "no reason given")
            )
        else:
            async with aclosing(self._generate(llm, state, config, refs, outcome)) as chunks:
                async for chunk in chunks:
                    yield chunk

    def _extractive(self, state: RagState, refs: list[str]) -> str:
        return extractive_answer(state["evidence"], state["all_docs"], state["docs"], refs)

    def _messages(self, state: RagState) -> list[BaseMessage]:
        return self.prompts.answer.format_messages(context=state["context"], question=state["standalone_question"])

    def _offline_note(self, refs: list[str]) -> str:
        return "\n\n" + OFFLINE_NOTE.format(model=self.options.model) + " Sources: " + " ".join(f"[{r}]" for r in refs)

    async def _judge(self, state: RagState, config: RunnableConfig) -> Sufficiency | None:
        """Ask the model whether the tickets answer the question (structured verdict) before it writes."""
        assert self.llm is not None  # only called when self.judge, which needs a model
        try:
            verdict = await check_sufficiency(
                self.llm,
                self.prompts.sufficiency,
                context=state["context"],
                question=state["standalone_question"],
                config=config,
            )
        except Exception as exc:
            raise _llm_error(exc) from exc
        state["sufficiency"] = verdict.model_dump() if verdict else {"answerable": None, "reason": "no usable verdict"}
        return verdict

    async def _local(
        self, llm: BaseChatModel, state: RagState, config: RunnableConfig, refs: list[str], outcome: Outcome
    ) -> AsyncGenerator[AddableDict, None]:
        """The guarded local model: its whole answer when it is sound, else the extractive answer and why."""
        outcome.generated, outcome.kind = True, "generated"
        sanitizer = AnswerSanitizer(refs, keep_citations=False)
        try:
            text, problem = await guarded_local_answer(
                llm=llm,
                messages=self._messages(state),
                config=config,
                clean=lambda t: sanitizer.feed(t) + sanitizer.close(),
                context=[ticket_text(d) for d in state["docs"]],
            )
        except Exception as exc:
            error = _llm_error(exc)
            yield _error_chunk(error)
            raise error from exc
        if problem is None:
            yield AddableDict(answer=text + self._offline_note(refs))
            return
        outcome.kind, outcome.guard = "extractive", {"kind": problem.kind, "detail": problem.detail}
        # The detail (which may quote the invented fact) stays in the metadata.
        withheld = f"\n\n(The offline model's answer was withheld: {WITHHELD[problem.kind]}.)"
        yield AddableDict(answer=self._extractive(state, refs) + withheld)

    async def _generate(
        self, llm: BaseChatModel, state: RagState, config: RunnableConfig, refs: list[str], outcome: Outcome
    ) -> AsyncGenerator[AddableDict, None]:
        """Groq (or an injected model), streamed through the sanitiser and stopped if it starts to loop."""
        outcome.generated, outcome.kind = True, "generated"
        sanitizer, loop = AnswerSanitizer(refs, keep_citations=not self.offline), RepetitionGuard()
        stream = llm.astream(self._messages(state), config)
        finish = None
        try:
            async for chunk in stream:
                finish = chunk.response_metadata.get("finish_reason") or finish
                if (problem := loop.feed(str(chunk.content))) is not None:
                    outcome.guard = {"kind": problem.kind, "detail": problem.detail}
                    break
                if text := sanitizer.feed(str(chunk.content)):
                    yield AddableDict(answer=text)
        except Exception as exc:
            error = _llm_error(exc)
            yield _error_chunk(error)
            raise error from exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        if tail := self._tail(sanitizer, finish, outcome, refs):
            yield AddableDict(answer=tail)

    def _tail(self, sanitizer: AnswerSanitizer, finish: str | None, outcome: Outcome, refs: list[str]) -> str:
        if outcome.guard:
            tail = f" [The model started repeating itself and was stopped: {outcome.guard['detail']}.]"
        else:
            tail = sanitizer.close()
            if finish == "length":
                outcome.guard = {"kind": "truncated", "detail": "cut at the token cap (LLM_MAX_TOKENS)"}
                tail += " [The answer was cut at the token limit.]"
        return tail + (self._offline_note(refs) if self.offline else "")

    def _metadata(self, state: RagState, config: RunnableConfig, outcome: Outcome, started: float) -> dict[str, Any]:
        options, metadata = self.options, config.get("metadata") or {}
        return {
            "model": options.model if outcome.generated else None,
            "provider": options.provider if outcome.generated or self.extractive else None,
            "offline_fallback": options.offline_fallback and (outcome.generated or self.extractive),
            "generated": outcome.generated,
            "answer_kind": outcome.kind,
            "guard": outcome.guard,
            "escalated": outcome.kind in ("escalation", "no_tickets"),
            "evidence": state["evidence"].public(),
            "sufficiency": state.get("sufficiency"),
            "no_relevant_tickets": not state["sources"],
            "standalone_question": state["standalone_question"],
            "retrieval": {
                "collection": state["collection"],
                "mode": "vector" if options.alpha == 1 else "hybrid",
                "alpha": options.alpha,
                "k": state["k"],
                "min_similarity": options.min_similarity,
                "below_threshold": state["dropped"],
            },
            "timings_ms": {
                "retrieve": state["retrieve_ms"],
                "evidence": state["evidence_ms"],
                "generate": _ms_since(started) if outcome.generated else 0.0,
                "total": _ms_since(state["started"]),
            },
            "request_id": metadata.get("request_id"),
            "run_id": metadata.get("ticket_rag_run_id"),
        }


# --- the chain -------------------------------------------------------------------------------------------


def build_rag_chain(
    *,
    retriever: TicketRetriever,
    llm: BaseChatModel | None,
    prompts: Prompts,
    options: ChainOptions,
    collection_exists: Callable[[str], bool],
) -> Runnable[Any, Any]:
    """Compose the named steps into one runnable (async: ainvoke, astream, abatch)."""
    steps = RagSteps(
        retriever=retriever, llm=llm, prompts=prompts, options=options, collection_exists=collection_exists
    )
    chain = (
        RunnableLambda(steps.normalise, name="normalise_question")
        | RunnableLambda(_sync_unsupported, afunc=steps.condense, name="condense_question")
        | RunnableLambda(steps.retrieve, name="retrieve_tickets")
        | RunnableLambda(steps.weigh, name="weigh_evidence")
        | RunnableLambda(steps.keep_relevant, name="drop_irrelevant")
        | RunnableLambda(steps.build_context, name="format_context")
        # RunnableGenerator hands the config to a transform that takes one; its type hints know only the other form.
        | RunnableGenerator(steps.answer, name="generate_answer")  # type: ignore[arg-type]
    )
    typed = chain.with_types(input_type=RagInput, output_type=RagOutput)
    return cast(Runnable[Any, Any], typed.with_config(run_name="rag_pipeline"))


def _sync_unsupported(state: RagState) -> RagState:
    raise NotImplementedError("the RAG chain is async: use ainvoke, astream or abatch")
