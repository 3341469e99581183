"""The RAG chain: normalise -> condense -> retrieve -> filter -> format -> prompt -> LLM -> sanitise.

Its output streams as dict chunks: first {"sources": [...]}, then {"answer": "..."} pieces, then
{"metadata": {...}}. Invoking it adds the chunks up into one RagOutput-shaped dict, so invoke,
batch and stream carry the same answer and sources over the wire.
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableGenerator,
    RunnableLambda,
)
from langchain_core.runnables.utils import AddableDict
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from chains.answers import (
    Evidence,
    escalation_answer,
    extractive_answer,
    guarded_local_answer,
    ticket_text,
    weigh_evidence,
)
from chains.evidence import EvidenceModel
from chains.guard import RepetitionGuard
from chains.prompts import Prompts
from chains.retrieval import TicketRetriever
from chains.sufficiency import Sufficiency, check_sufficiency
from ticket_rag.errors import InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from ticket_rag.embeddings.redaction import keep
from ticket_rag.tickets.keywords import KeywordAnalyzer
from ticket_rag.tickets.schemas import (
    CollectionName,
    QueryText,
    SearchFilters,
    clean_text,
)

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


def without_nulls(schema: Any) -> Any:
    """A JSON schema with `anyOf: [X, null]` folded into X: LangServe's playground cannot render nullable fields."""
    if isinstance(schema, list):
        return [without_nulls(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: without_nulls(value) for key, value in schema.items()}
    options = schema.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        others = [option for option in options if option != {"type": "null"}]
        if len(others) == 1:
            del schema["anyOf"]
            schema = {**others[0], **schema}
            if schema.get("default", 0) is None:
                del schema["default"]
    return schema


class PlaygroundSchema(BaseModel):
    """A model whose JSON schema the LangServe playground can render."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return without_nulls(super().model_json_schema(*args, **kwargs))  # type: ignore[no-any-return]


class ChatTurn(BaseModel):
    role: Literal["human", "ai"]
    content: Annotated[str, StringConstraints(max_length=4000), AfterValidator(clean_text)]


class RagInput(PlaygroundSchema):
    """What the chain takes: a question, and optionally where to look and the conversation so far."""

    # A misspelt field (`colection`) is refused, not silently answered from the default collection.
    model_config = ConfigDict(extra="forbid")

    question: QueryText = Field(examples=["How do I reset my password?"])
    collection: CollectionName | None = Field(None, description="Defaults to the default collection.")
    filters: SearchFilters | None = None
    chat_history: list[ChatTurn] = Field(default_factory=list, max_length=200)
    k: int | None = Field(None, ge=1, le=100, description="Tickets to retrieve; capped by RAG_MAX_K.")
    exclude_ticket: uuid.UUID | None = Field(None, description="A ticket never to use (the one being answered).")
    exclude_tickets: list[uuid.UUID] = Field(
        default_factory=list, max_length=100, description="More tickets never to use (for example, ones known to be outdated)."
    )


class Source(BaseModel):
    ref: str = Field(description="How the answer cites this ticket, e.g. #1a2b3c4d.")
    id: str
    title: str
    status: str | None = None
    priority: str | None = None
    score: float = Field(description="Cosine similarity of the question and the ticket.")
    snippet: str
    resolution: str | None = None


class RagOutput(PlaygroundSchema):
    answer: str
    sources: list[Source]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class ChainOptions:
    default_collection: str = "default"
    k: int = 5
    max_k: int = 20
    min_similarity: float = 0.3
    max_history: int = 20
    alpha: float = 1.0
    model: str | None = None
    provider: str | None = None
    offline_fallback: bool = False
    # The evidence gate: escalate when the evidence score (chains/evidence.py) is below the threshold.
    evidence_model: EvidenceModel | None = None
    escalation_threshold: float | None = None
    keyword_stemmer: str = "english"
    # Ask a Groq model whether the tickets answer before it writes the answer (chains/sufficiency.py).
    sufficiency_check: bool = False
    # Applied to the question and to the ticket text the LLM sees (ticket_rag.embeddings.redaction.redact with REDACT_PII).
    redact: Callable[[str], str] = keep


# --- the steps -----------------------------------------------------------------------------------


def check_limits(data: RagInput, options: ChainOptions) -> None:
    """Refuse what the schema allows but the configured caps do not (RAG_MAX_K, RAG_MAX_HISTORY)."""
    if (data.k or options.k) > options.max_k:
        raise InvalidRequest(f"at most {options.max_k} tickets can be retrieved", loc=("body", "input", "k"))
    if len(data.chat_history) > options.max_history:
        raise InvalidRequest(f"at most {options.max_history} turns are accepted", loc=("body", "input", "chat_history"))


def normalise_question(inputs: RagInput | dict[str, Any], options: ChainOptions) -> dict[str, Any]:
    """Validate the input, clean the question (Unicode NFKC, no control characters, single spaces)."""
    data = inputs if isinstance(inputs, RagInput) else RagInput.model_validate(inputs)
    check_limits(data, options)
    k = data.k or options.k
    text = unicodedata.normalize("NFKC", options.redact(data.question))
    text = "".join(c if unicodedata.category(c)[0] != "C" else " " for c in text)
    return {
        "started": time.perf_counter(),
        "question": " ".join(text.split()),
        "collection": data.collection or options.default_collection,
        "filters": data.filters,
        "history": data.chat_history,
        "k": k,
        "exclude": [t for t in [data.exclude_ticket, *data.exclude_tickets] if t is not None],
    }


def _history_text(history: list[ChatTurn]) -> str:
    return "\n".join(f"{'Agent' if t.role == 'human' else 'Assistant'}: {t.content}" for t in history)


def cited(ticket_id: str) -> str:
    """The reference an answer uses for a ticket."""
    return "#" + ticket_id.replace("-", "")[:8]


def _snippet(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


_DELIMITERS = re.compile(r"</?\s*tickets?\b[^>]*>", re.I)


def _as_data(text: str, limit: int, redact: Callable[[str], str] = keep) -> str:
    """Ticket text as inert data: our delimiters neutralised, shortened (and redacted when asked)."""
    return _snippet(_DELIMITERS.sub("[removed tag]", redact(text)), limit)


def format_context(docs: list[Document], *, limit: int, redact: Callable[[str], str] = keep) -> str:
    """Each ticket in its own delimited block with its reference, status and resolution."""
    blocks = []
    for n, doc in enumerate(docs, start=1):
        meta = doc.metadata
        lines = [
            f'<ticket ref="T{n}" status="{meta.get("status") or "unknown"}" priority="{meta.get("priority") or "unknown"}">',
            f"Title: {_as_data(meta.get('title') or '', 300, redact)}",
            f"Problem: {_as_data(doc.page_content, limit, redact)}",
        ]
        if meta.get("resolution"):
            lines.append(f"Resolution: {_as_data(meta['resolution'], limit, redact)}")
        lines.append("</ticket>")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def to_sources(docs: list[Document]) -> list[dict[str, Any]]:
    return [
        Source(
            ref=cited(str(doc.metadata["id"])),
            id=str(doc.metadata["id"]),
            title=doc.metadata.get("title") or "",
            status=doc.metadata.get("status"),
            priority=doc.metadata.get("priority"),
            score=doc.metadata["similarity"],
            snippet=_snippet(doc.page_content, 240),
            resolution=_snippet(doc.metadata["resolution"], 600) if doc.metadata.get("resolution") else None,
        ).model_dump()
        for doc in docs
    ]


# --- the answer, sanitised as it streams ---------------------------------------------------------------

_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_HTML = re.compile(r"</?[a-z][a-z0-9-]*\b[^>]*>", re.I)  # any HTML element: a client may render the answer
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.I)
_CITATION = re.compile(r"\[\s*(T\d+(?:\s*[,;]\s*T\d+)*)\s*\]", re.I)
_TAG = re.compile(r"<[^>]*>")
_OPEN_LINK = re.compile(r"\[[^\]]*\](?:\([^)]*\)|[^(])", re.S)


class AnswerSanitizer:
    """Rewrites an answer as it streams: [T1] -> the ticket's reference, invented references dropped,
    links, images and raw URLs removed (a poisoned ticket cannot make the answer exfiltrate data).

    Text is held back only while a construct is still open (a '[' without its end, a partial word).
    """

    def __init__(self, refs: list[str], *, keep_citations: bool = True, hold_limit: int = 400) -> None:
        self.refs = refs
        self.keep_citations = keep_citations
        self.hold_limit = hold_limit
        self.buffer = ""
        self.cited: list[str] = []

    def _cite(self, match: re.Match[str]) -> str:
        out = []
        for label in re.split(r"\s*[,;]\s*", match.group(1)):
            n = int(label[1:])
            if 1 <= n <= len(self.refs) and self.keep_citations:
                out.append(f"[{self.refs[n - 1]}]")
                if self.refs[n - 1] not in self.cited:
                    self.cited.append(self.refs[n - 1])
        return " ".join(out)

    def _clean(self, text: str) -> str:
        text = _IMAGE.sub("", text)
        text = _LINK.sub(r"\1", text)
        text = _HTML.sub("", text)
        text = _URL.sub("[link removed]", text)
        return _CITATION.sub(self._cite, text)

    def _safe_end(self) -> int:
        buf = self.buffer
        end = len(buf)
        last_space = max(buf.rfind(" "), buf.rfind("\n"))
        end = min(end, last_space + 1)  # hold the word still being written
        bracket = buf.rfind("[")
        if bracket != -1 and not _OPEN_LINK.match(buf, bracket):
            end = min(end, bracket - 1 if bracket > 0 and buf[bracket - 1] == "!" else bracket)
        angle = buf.rfind("<")
        if angle != -1 and ">" not in buf[angle:]:
            end = min(end, angle)
        for construct in (_IMAGE, _LINK, _TAG):  # never cut through a complete construct either
            for match in construct.finditer(buf, 0, end + 200):
                if match.start() < end < match.end():
                    end = match.start()
        if len(buf) - end > self.hold_limit:
            end = len(buf)
        return max(end, 0)

    def feed(self, text: str) -> str:
        self.buffer += text
        end = self._safe_end()
        ready, self.buffer = self.buffer[:end], self.buffer[end:]
        return self._clean(ready) if ready else ""

    def close(self) -> str:
        ready, self.buffer = self.buffer, ""
        return self._clean(ready)


def _llm_error(exc: Exception) -> UpstreamUnavailable | UpstreamTimeout:
    from chains.llm import classify_llm_error, retry_after_seconds

    kind = classify_llm_error(exc)
    if kind == "timeout":
        return UpstreamTimeout("the language model did not answer in time; try again")
    if kind == "rate_limited":  # the provider's own Retry-After goes on to the client
        return UpstreamUnavailable("the language model is rate-limited; try again shortly", retry_after_seconds(exc))
    return UpstreamUnavailable("the language model is unavailable; try again shortly", retry_after_seconds(exc))


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
    local = llm is not None and options.provider == "local"
    offline = llm is not None and (options.offline_fallback or local)
    extractive = llm is None and options.provider == "extractive"
    judge = llm is not None and options.sufficiency_check and options.provider == "groq"
    context_limit = 300 if offline else 1200
    analyzer = KeywordAnalyzer(options.keyword_stemmer)

    def normalise(inputs: Any) -> dict[str, Any]:
        return normalise_question(inputs, options)

    async def condense(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        state["standalone_question"] = state["question"]
        if state["history"] and llm is not None:
            prompt = prompts.condense.format(history=_history_text(state["history"]), question=state["question"])
            try:
                reply = await llm.ainvoke(prompt, config)
            except Exception as exc:
                raise _llm_error(exc) from exc
            rewritten = " ".join(str(reply.content).split())[:2000]
            if rewritten:
                state["standalone_question"] = rewritten
        return state

    def retrieve(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        from ticket_rag.errors import CollectionNotFound

        started = time.perf_counter()
        if not collection_exists(state["collection"]):
            raise CollectionNotFound(f"collection '{state['collection']}' does not exist")
        state["docs"] = retriever.invoke(
            state["standalone_question"], config, collection=state["collection"], filters=state["filters"],
            k=state["k"], exclude=state["exclude"],
        )  # fmt: skip
        state["retrieve_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return state

    def weigh(state: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        state["evidence"] = weigh_evidence(
            question=state["standalone_question"], docs=state["docs"], analyzer=analyzer,
            model=options.evidence_model, threshold=options.escalation_threshold,
        )  # fmt: skip
        state["evidence_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return state

    def keep_relevant(state: dict[str, Any]) -> dict[str, Any]:
        state["all_docs"] = state["docs"]
        docs = [d for d in state["docs"] if d.metadata["similarity"] >= options.min_similarity]
        state["dropped"] = len(state["docs"]) - len(docs)
        state["docs"] = docs[:3] if offline else docs
        return state

    def build_context(state: dict[str, Any]) -> dict[str, Any]:
        state["context"] = format_context(state["docs"], limit=context_limit, redact=options.redact)
        state["sources"] = to_sources(state["docs"])
        return state

    def offline_answer(state: dict[str, Any], refs: list[str]) -> str:
        return extractive_answer(state["evidence"], state["all_docs"], state["docs"], refs)

    async def _judge(state: dict[str, Any], config: RunnableConfig) -> Sufficiency | None:
        try:
            verdict = await check_sufficiency(
                llm, prompts.sufficiency, context=state["context"], question=state["standalone_question"], config=config  # type: ignore[arg-type]
            )
        except Exception as exc:
            raise _llm_error(exc) from exc
        state["sufficiency"] = verdict.model_dump() if verdict else {"answerable": None, "reason": "no usable verdict"}
        return verdict

    async def answer(states: AsyncIterator[dict[str, Any]], config: RunnableConfig) -> AsyncIterator[AddableDict]:
        # Drain the input first, so the earlier steps' runs end before generation (which may fail) starts.
        for state in [s async for s in states]:
            yield AddableDict(sources=state["sources"])
            refs = [s["ref"] for s in state["sources"]]
            evidence: Evidence = state["evidence"]
            started = time.perf_counter()
            generated = False
            guard: dict[str, str] | None = None
            verdict: Sufficiency | None = None
            if refs and judge and not evidence.escalate:
                try:
                    verdict = await _judge(state, config)
                except (UpstreamUnavailable, UpstreamTimeout) as error:
                    yield AddableDict(error={"status_code": error.status_code, "detail": error.detail})
                    raise
            if not refs:
                kind = "no_tickets"
                yield AddableDict(answer=NO_TICKETS_ANSWER)
            elif evidence.escalate:
                kind = "escalation"
                yield AddableDict(answer=escalation_answer(evidence, state["sources"]))
            elif extractive:
                kind = "extractive"
                lines = offline_answer(state, refs).split("\n")
                for n, line in enumerate(lines):
                    yield AddableDict(answer=line + ("\n" if n < len(lines) - 1 else ""))
            elif llm is None:
                kind = "listing"
                listing = AnswerSanitizer(refs)  # ticket text is untrusted: no links, images or markup in an answer
                yield AddableDict(answer=listing.feed(_listing(state["sources"])) + listing.close())
            elif local:
                generated, kind = True, "generated"
                sanitizer = AnswerSanitizer(refs, keep_citations=False)
                messages = prompts.answer.format_messages(context=state["context"], question=state["standalone_question"])
                try:
                    text, problem = await guarded_local_answer(
                        llm=llm, messages=messages, config=config, clean=lambda t, s=sanitizer: s.feed(t) + s.close(),
                        context=[ticket_text(d) for d in state["docs"]],
                    )  # fmt: skip
                except Exception as exc:
                    error = _llm_error(exc)
                    yield AddableDict(error={"status_code": error.status_code, "detail": error.detail})
                    raise error from exc
                if problem is not None:
                    kind, guard = "extractive", {"kind": problem.kind, "detail": problem.detail}
                    # The detail (which may quote the invented fact) stays in the metadata.
                    text = offline_answer(state, refs) + f"\n\n(The offline model's answer was withheld: {WITHHELD[problem.kind]}.)"
                else:
                    text += "\n\n" + OFFLINE_NOTE.format(model=options.model) + " Sources: " + " ".join(f"[{r}]" for r in refs)
                yield AddableDict(answer=text)
            elif verdict is not None and not verdict.answerable:
                kind = "escalation"
                yield AddableDict(answer=SUFFICIENCY_ANSWER.format(reason=_as_data(verdict.reason, 300) or "no reason given"))
            else:
                generated, kind = True, "generated"
                sanitizer = AnswerSanitizer(refs, keep_citations=not offline)
                loop = RepetitionGuard()
                messages = prompts.answer.format_messages(context=state["context"], question=state["standalone_question"])
                stream = llm.astream(messages, config)
                finish = None
                try:
                    async for chunk in stream:
                        finish = chunk.response_metadata.get("finish_reason") or finish
                        problem = loop.feed(str(chunk.content))
                        if problem is not None:
                            guard = {"kind": problem.kind, "detail": problem.detail}
                            break
                        text = sanitizer.feed(str(chunk.content))
                        if text:
                            yield AddableDict(answer=text)
                except Exception as exc:
                    error = _llm_error(exc)
                    # Stream clients see why before LangServe's own `error` event; invoke raises as usual.
                    yield AddableDict(error={"status_code": error.status_code, "detail": error.detail})
                    raise error from exc
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
                tail = "" if guard else sanitizer.close()
                if guard:
                    tail = f" [The model started repeating itself and was stopped: {guard['detail']}.]"
                elif finish == "length":
                    guard = {"kind": "truncated", "detail": "cut at the token cap (LLM_MAX_TOKENS)"}
                    tail += " [The answer was cut at the token limit.]"
                if offline:
                    tail += "\n\n" + OFFLINE_NOTE.format(model=options.model) + " Sources: " + " ".join(
                        f"[{r}]" for r in refs
                    )
                if tail:
                    yield AddableDict(answer=tail)
            metadata = config.get("metadata") or {}
            yield AddableDict(
                metadata={
                    "model": options.model if generated else None,
                    "provider": options.provider if generated or extractive else None,
                    "offline_fallback": options.offline_fallback and (generated or extractive),
                    "generated": generated,
                    "answer_kind": kind,
                    "guard": guard,
                    "escalated": kind in ("escalation", "no_tickets"),
                    "evidence": evidence.public(),
                    "sufficiency": state.get("sufficiency"),
                    "no_relevant_tickets": not refs,
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
                        "generate": round((time.perf_counter() - started) * 1000, 1) if generated else 0.0,
                        "total": round((time.perf_counter() - state["started"]) * 1000, 1),
                    },
                    "request_id": metadata.get("request_id"),
                    "run_id": metadata.get("ticket_rag_run_id"),
                }
            )

    chain = (
        RunnableLambda(normalise, name="normalise_question")
        | RunnableLambda(_sync_unsupported, afunc=condense, name="condense_question")
        | RunnableLambda(retrieve, name="retrieve_tickets")
        | RunnableLambda(weigh, name="weigh_evidence")
        | RunnableLambda(keep_relevant, name="drop_irrelevant")
        | RunnableLambda(build_context, name="format_context")
        | RunnableGenerator(answer, name="generate_answer")
    )
    return chain.with_types(input_type=RagInput, output_type=RagOutput).with_config(run_name="rag_pipeline")


def _sync_unsupported(state: dict[str, Any]) -> dict[str, Any]:
    raise NotImplementedError("the RAG chain is async: use ainvoke, astream or abatch")


def _listing(sources: list[dict[str, Any]]) -> str:
    """The answer when generation is off (LLM_PROVIDER=none): the tickets and how they were resolved."""
    lines = ["Generation is off; the most relevant past tickets:"]
    for n, s in enumerate(sources, start=1):
        line = f"{n}. [{s['ref']}] {s['title']} ({s['status'] or 'unknown'})"
        if s.get("resolution"):
            line += f": {s['resolution']}"
        lines.append(line)
    return "\n".join(lines)
