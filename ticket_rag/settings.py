"""All configuration, read once from the environment and `.env`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ticket_rag.errors import ConfigError

DEFAULT_MODEL_ID = "sentence-transformers/all-mpnet-base-v2"
DEFAULT_MODEL_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
WEAVIATE_VERSION = "v1.39.3"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ticket-rag"


class Settings(BaseSettings):
    """ticket-rag's settings; each field is the upper-case environment variable of the same name."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True)

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    cors_origins: list[str] = ["http://localhost:3000", "http://localhost:5173"]
    # The proxies whose X-Forwarded-For names the client (comma-separated addresses or networks, "*" for any).
    # Unset: the header is ignored and the client is the connecting address, so no caller can pick the address its
    # rate limits and invalid-key lockouts are counted under. Set it only when every request comes through a proxy
    # that overwrites the header (deploy/nginx.conf does).
    forwarded_allow_ips: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    # Security. Anonymous access: unset means allowed in development, refused in production.
    allow_anonymous: bool | None = None
    # A bootstrap admin key (create the others with it: POST /admin/keys or `ticket-rag keys create`).
    admin_api_key: SecretStr | None = None
    api_key_cache_seconds: float = Field(5.0, ge=0, le=300)
    # Per key (or client IP for anonymous callers), per API process.
    rate_limit_per_minute: int = Field(600, ge=0)
    rate_limit_burst: int = Field(60, ge=1)
    # Invalid API keys per client address per minute (10 at once) before that address gets 429; 0 turns it off.
    auth_failures_per_minute: int = Field(30, ge=0)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Replace email addresses and phone numbers before text is embedded or sent to the LLM.
    redact_pii: bool = False

    data_dir: Path = Path("data")
    cache_dir: Path = Field(default_factory=_default_cache_dir)

    # An external Weaviate (docker compose, a cluster). Unset: run the embedded one.
    weaviate_url: str | None = None
    weaviate_grpc_url: str | None = None
    weaviate_api_key: SecretStr | None = None
    # The embedded Weaviate.
    weaviate_version: str = WEAVIATE_VERSION
    weaviate_binary: Path | None = None
    weaviate_http_port: int = Field(8080, ge=1, le=65535)
    weaviate_grpc_port: int = Field(50051, ge=1, le=65535)
    weaviate_startup_timeout: float = Field(90.0, gt=0)
    # Memory of the embedded Weaviate (docs/scaling.md): the Go heap's soft limit (GOMEMLIMIT, e.g. "3328MiB"; unset:
    # Go's default, which lets the heap grow to twice its live data), and how it reads its files: mmap (maps them, so
    # the page cache counts in its resident set) or pread (reads them; measured at 1M tickets in a 4 GiB cgroup).
    weaviate_memory_limit: str | None = Field(None, pattern=r"^[1-9][0-9]*(B|KiB|MiB|GiB|TiB)$")
    weaviate_lsm_access: Literal["mmap", "pread"] = "mmap"
    # Per-call deadline towards Weaviate, seconds.
    weaviate_timeout: float = Field(10.0, gt=0, le=600)
    # The Weaviate collection that holds every ticket; ticket-rag collections are its tenants.
    weaviate_class: str = "Ticket"
    # A multi-node Weaviate (docs/scaling.md): copies of each collection, applied when ticket-rag creates its
    # Weaviate collections; at most the number of Weaviate nodes. Each tenant is one shard, placed by Weaviate.
    weaviate_replication_factor: int = Field(1, ge=1, le=100)
    # Replicas that must answer each read and write: ONE, QUORUM (a majority) or ALL.
    weaviate_consistency: Literal["ONE", "QUORUM", "ALL"] = "QUORUM"
    # What the vector index holds in memory (ticket_rag/tickets/compression.py, docs/scaling.md): none (float32),
    # rq8 / rq1 (rotational quantization, 8 or 1 bit a dimension), bq (binary) or pq (product). Applied when ticket-rag
    # creates its Weaviate collection; `ticket-rag compress` turns it on for one that holds tickets.
    vector_compression: Literal["none", "rq8", "rq1", "bq", "pq"] = "rq8"
    # Candidates re-scored with the full vectors after a compressed search; unset: Weaviate's default (rq8 20, rq1 512).
    vector_rescore_limit: int | None = Field(None, ge=0, le=100_000)

    embedding_model: str = DEFAULT_MODEL_ID
    # Expected sha256 of model.safetensors for a local model; empty to skip the check.
    embedding_sha256: str = DEFAULT_MODEL_SHA256
    embedding_batch_size: int = Field(32, ge=1, le=1024)
    # The runtime that computes vectors from the same weights: torch (sentence-transformers, fp32), or ONNX
    # Runtime in fp32 (the same vectors, faster) or int8 (fastest; docs/benchmarks-embeddings.md). The ONNX
    # graphs are exported from the verified weights into CACHE_DIR/onnx/ on first use.
    embedding_backend: Literal["torch", "onnx-fp32", "onnx-int8"] = "onnx-int8"
    # Query vectors kept for repeated queries (0 turns the cache off).
    query_cache_size: int = Field(4096, ge=0, le=1_000_000)

    default_collection: str = "default"

    # Tickets and search
    # Chosen by 5-fold cross-validation on the GitBugs dev pairs (`ticket-rag eval-duplicates`, docs/triage.md).
    duplicate_threshold: float = Field(0.63, ge=0, le=1)
    similar_on_create: int = Field(5, ge=0, le=50)
    search_max_limit: int = Field(100, ge=1, le=1000)
    page_max_size: int = Field(200, ge=1, le=10000)
    bulk_max_batch: int = Field(500, ge=1, le=10000)
    hybrid_alpha: float = Field(0.5, ge=0, le=1)
    # Triage (docs/triage.md): labelled neighbours that vote and are shown as evidence; the accuracy a field's
    # confidence floor must give on the collection's own tickets (out-of-fold), from which the floor is chosen.
    triage_neighbours: int = Field(10, ge=1, le=100)
    triage_target_accuracy: float = Field(0.9, gt=0, le=1)
    # Seconds between checks whether a collection's labels changed (then its model is refitted in the background).
    triage_refresh_seconds: float = Field(30.0, ge=0, le=86400)
    # Keyword (BM25) search matches stemmed words (Snowball); after changing the stemmer run `ticket-rag reindex`.
    keyword_stemmer: str = "english"
    # Weight of a title word against a description word in keyword search.
    keyword_title_boost: float = Field(1.0, gt=0, le=10)

    # The RAG chain
    rag_k: int = Field(5, ge=1, le=50)
    rag_max_k: int = Field(20, ge=1, le=100)
    # Tickets less similar (cosine) to the question than this are not used as context.
    rag_min_similarity: float = Field(0.25, ge=-1, le=1)
    # Weight of the vector part when the RAG retriever runs Weaviate's hybrid query (1 = pure vector); 0.5 as
    # HYBRID_ALPHA, chosen on SciFact (docs/quality.md).
    rag_alpha: float = Field(0.5, ge=0, le=1)
    rag_max_history: int = Field(20, ge=0, le=200)
    rag_max_batch: int = Field(8, ge=1, le=100)
    prompts_dir: Path = Path(__file__).resolve().parent.parent / "prompts"

    # Escalate when the evidence score (chains/evidence.py) is below this; unset: the calibrated threshold
    # in RAG_EVIDENCE_MODEL (docs/answers.md); 0 turns the gate off.
    rag_escalation_threshold: float | None = Field(None, ge=0, le=1)
    # With Groq: the model first says (as JSON) whether the tickets answer the question; escalate when not.
    rag_sufficiency_check: bool = True
    rag_evidence_model: Path = Path(__file__).resolve().parent.parent / "chains" / "evidence_model.json"

    # The LLM. auto: Groq when GROQ_API_KEY is set, else the extractive answer (no model).
    llm_provider: Literal["auto", "groq", "local", "extractive", "none"] = "auto"
    groq_api_key: SecretStr | None = None
    groq_model: str = "llama-3.3-70b-versatile"
    # Only for tests and proxies: where the Groq client sends requests.
    groq_base_url: str | None = None
    llm_temperature: float = Field(0.1, ge=0, le=2)
    llm_timeout: float = Field(30.0, gt=0, le=600)
    llm_max_retries: int = Field(2, ge=0, le=10)
    llm_max_tokens: int = Field(512, ge=16, le=8192)

    @field_validator("weaviate_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not re.match(r"^https?://[^/\s:]+(:\d+)?/?$", v):
            raise ValueError("must look like http://host:8080 or https://host")
        return v.rstrip("/")

    @field_validator("weaviate_grpc_url")
    @classmethod
    def _check_grpc(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not re.match(r"^(grpcs?://)?[^/\s:]+:\d+$", v):
            raise ValueError("must look like host:50051 (or grpcs://host:443)")
        return v

    @field_validator("weaviate_class")
    @classmethod
    def _check_class(cls, v: str) -> str:
        if not re.match(r"^[A-Z][A-Za-z0-9_]{0,63}$", v):
            raise ValueError("must be a Weaviate class name: a capital letter, then letters, digits or _")
        return v

    @field_validator("keyword_stemmer")
    @classmethod
    def _check_stemmer(cls, v: str) -> str:
        from ticket_rag.tickets.keywords import stemmer_languages

        v = v.strip().lower()
        if v not in stemmer_languages():
            raise ValueError(f"must be one of {', '.join(stemmer_languages())}")
        return v

    @field_validator("embedding_sha256")
    @classmethod
    def _check_sha(cls, v: str) -> str:
        v = v.strip().lower()
        if v and not re.match(r"^[0-9a-f]{64}$", v):
            raise ValueError("must be 64 hex digits, or empty to skip the check")
        return v

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.environment == "production":
            if "*" in self.cors_origins:
                raise ValueError("CORS_ORIGINS: '*' is not allowed in production; list the frontend's origins")
            if self.admin_api_key is not None and len(self.admin_api_key.get_secret_value()) < 24:
                raise ValueError("ADMIN_API_KEY: use at least 24 random characters in production")
        return self

    @property
    def anonymous_allowed(self) -> bool:
        """Anonymous callers get full access: the development default, and only by ALLOW_ANONYMOUS=true
        in production.
        """
        return self.allow_anonymous if self.allow_anonymous is not None else self.environment == "development"

    @property
    def embedded_weaviate(self) -> bool:
        return self.weaviate_url is None


def setting_default(name: str) -> Any:
    """A setting's default, for code that can also run without Settings (the chain, the store, the tools), so that
    there is one default per value and it is this class's."""
    return Settings.model_fields[name].default


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning a validation error into a ConfigError that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"] if isinstance(p, str)).upper()
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {msg}" if name else msg)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
