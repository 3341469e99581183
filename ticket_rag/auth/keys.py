"""API keys, roles, collection scopes and per-key rate limits.

A key looks like `trk_<key id>_<secret>`. Only sha256(secret) is stored (in a Weaviate collection
of its own, so every API replica sees the same keys); the key id is public and is what logs show.
Roles nest: admin > write > read. A key scoped to some collections gets 404 for any other, exactly
as if it did not exist.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any

import weaviate
from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from weaviate.classes.config import (
    Configure,
    DataType,
    Property,
    ReplicationDeletionStrategy,
    Tokenization,
)
from weaviate.classes.query import Filter

from ticket_rag.errors import (
    CollectionNotFound,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
)
from ticket_rag.runtime.metrics import RATE_LIMITED
from ticket_rag.tickets.schemas import COLLECTION_PATTERN
from ticket_rag.tickets.store import warn_if_replication_differs, weaviate_errors

logger = logging.getLogger(__name__)

ALL = "*"


class Role(IntEnum):
    read = 1
    write = 2
    admin = 3


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key (its public id, role and collections) or anonymous development access."""

    key_id: str | None
    role: Role
    collections: frozenset[str]

    @property
    def unscoped(self) -> bool:
        """Whether the key reaches every collection, present and future."""
        return ALL in self.collections

    def can_see(self, collection: str) -> bool:
        return self.unscoped or collection in self.collections

    def covers(self, collections: Iterable[str]) -> bool:
        """Whether every one of these collections (`*` included) is within this key's reach."""
        return self.unscoped or all(c != ALL and c in self.collections for c in collections)

    def collection(self, requested: str | None, default: str) -> str:
        """The collection a request works on; a collection outside the key's scope does not exist for it."""
        name = requested or default
        if not self.can_see(name):
            raise CollectionNotFound(f"collection '{name}' does not exist")
        return name

    def require(self, role: Role) -> None:
        if self.role < role:
            raise Forbidden(f"this API key lacks the {role.name} role")


ANONYMOUS = Principal(key_id=None, role=Role.admin, collections=frozenset({ALL}))


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["helpdesk-frontend"])
    role: Role = Field(Role.read, description="read (1), write (2) or admin (3)")
    collections: list[Annotated[str, Field(pattern=COLLECTION_PATTERN + "|^\\*$")]] = Field(
        min_length=1, max_length=100, examples=[["acme"]]
    )


class ApiKeyPublic(BaseModel):
    key_id: str
    name: str
    role: Role
    collections: list[str]
    created_at: datetime
    revoked: bool


class ApiKeyCreated(ApiKeyPublic):
    api_key: str = Field(description="The key itself. Shown once; only its hash is stored.")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class _Cached:
    principal: Principal | None
    secret_hash: str
    fetched: float


class ApiKeyStore:
    """Keys in a Weaviate collection of their own, looked up through a short in-process cache."""

    def __init__(
        self,
        *,
        client: weaviate.WeaviateClient,
        class_name: str,
        cache_seconds: float = 5.0,
        replication_factor: int = 1,
    ) -> None:
        self.client = client
        self.class_name = class_name
        self.cache_seconds = cache_seconds
        self.replication_factor = replication_factor
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def ensure_schema(self) -> None:
        with weaviate_errors():
            if self.client.collections.exists(self.class_name):
                warn_if_replication_differs(self.client, self.class_name, self.replication_factor)
                return
            self.client.collections.create(
                self.class_name,
                description="ticket-rag API keys (hashed)",
                # One shard on as many nodes as the tickets: by default Weaviate spreads the keys over one
                # unreplicated shard per node, and while any node is down no key could be looked up.
                sharding_config=Configure.sharding(desired_count=1),
                replication_config=Configure.replication(
                    factor=self.replication_factor,
                    deletion_strategy=ReplicationDeletionStrategy.TIME_BASED_RESOLUTION,
                ),
                properties=[
                    Property(
                        name="key_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False
                    ),
                    Property(
                        name="secret_hash", data_type=DataType.TEXT, index_filterable=False, index_searchable=False
                    ),
                    Property(name="name", data_type=DataType.TEXT, index_searchable=False),
                    Property(name="role", data_type=DataType.INT),
                    Property(
                        name="collections",
                        data_type=DataType.TEXT_ARRAY,
                        tokenization=Tokenization.FIELD,
                        index_searchable=False,
                    ),
                    Property(name="created_at", data_type=DataType.DATE),
                    Property(name="revoked", data_type=DataType.BOOL),
                ],
            )

    @property
    def _collection(self) -> Any:
        return self.client.collections.use(self.class_name)

    def create(self, *, body: ApiKeyCreate, granted_by: Principal) -> ApiKeyCreated:
        """A new key; the plaintext is returned once and never stored. Nobody grants more than it holds."""
        if not granted_by.covers(body.collections):
            raise Forbidden("this API key may grant only its own collections; only an unscoped admin grants '*'")
        if body.role > granted_by.role:
            raise Forbidden(f"this API key may not grant the {body.role.name} role")
        key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        props = {
            "key_id": key_id,
            "secret_hash": _hash(secret),
            "name": body.name,
            "role": int(body.role),
            "collections": sorted(set(body.collections)),
            "created_at": now,
            "revoked": False,
        }
        with weaviate_errors():
            self._collection.data.insert(props)
        public = ApiKeyPublic.model_validate({k: v for k, v in props.items() if k != "secret_hash"})
        return ApiKeyCreated(**public.model_dump(), api_key=f"trk_{key_id}_{secret}")

    def list(self, *, within: Principal) -> list[ApiKeyPublic]:
        """The keys whose collections all lie within `within`'s reach (an unscoped admin sees every key)."""
        with weaviate_errors():
            found = self._collection.query.fetch_objects(limit=10_000)
        keys = [ApiKeyPublic(**{k: v for k, v in o.properties.items() if k != "secret_hash"}) for o in found.objects]
        return sorted((k for k in keys if within.covers(k.collections)), key=lambda k: k.created_at)

    def revoke(self, *, key_id: str, within: Principal) -> None:
        """Revoke a key; a key that reaches beyond `within`'s collections does not exist for it (404)."""
        with weaviate_errors():
            found = self._collection.query.fetch_objects(filters=Filter.by_property("key_id").equal(key_id), limit=1)
            if not found.objects or not within.covers(found.objects[0].properties.get("collections") or [ALL]):
                raise NotFound(f"API key {key_id} not found")
            self._collection.data.update(uuid=found.objects[0].uuid, properties={"revoked": True})
        with self._lock:
            self._cache.pop(key_id, None)

    def ping(self) -> None:
        """One read through the client's gRPC channel; raises StoreUnavailable while Weaviate cannot answer it."""
        with weaviate_errors():
            self._collection.query.fetch_objects(limit=1, return_properties=["key_id"])

    def authenticate(self, presented: str) -> Principal:
        """The principal of a presented key; Unauthorized for a malformed, unknown or revoked key."""
        parts = presented.split("_")
        if len(parts) < 3 or parts[0] != "trk":
            raise Unauthorized("invalid API key")
        key_id, secret = parts[1], "_".join(parts[2:])
        with self._lock:
            cached = self._cache.get(key_id)
        if cached is None or time.monotonic() - cached.fetched > self.cache_seconds:
            cached = self._fetch(key_id)
            with self._lock:
                self._cache[key_id] = cached
        if cached.principal is None or not hmac.compare_digest(cached.secret_hash, _hash(secret)):
            raise Unauthorized("invalid API key")
        return cached.principal

    def _fetch(self, key_id: str) -> _Cached:
        with weaviate_errors():
            found = self._collection.query.fetch_objects(filters=Filter.by_property("key_id").equal(key_id), limit=1)
        if not found.objects or found.objects[0].properties.get("revoked"):
            return _Cached(principal=None, secret_hash="", fetched=time.monotonic())
        props = found.objects[0].properties
        principal = Principal(key_id=key_id, role=Role(int(props["role"])), collections=frozenset(props["collections"]))
        return _Cached(principal=principal, secret_hash=props["secret_hash"], fetched=time.monotonic())


@dataclass
class RateLimiter:
    """A token bucket per caller: `per_minute` sustained, `burst` at once. Per process (see docs/scaling)."""

    per_minute: int
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, caller: str, *, take: bool = True) -> None:
        """Take a token for caller (only look, with take=False); RateLimited when none is left."""
        if self.per_minute <= 0:
            return
        rate = self.per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                retry_after = max(1, int((1.0 - tokens) / rate + 0.999))
                RATE_LIMITED.inc()
                raise RateLimited("rate limit exceeded; slow down", retry_after=retry_after)
            if not take:
                return
            self._buckets[caller] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget idle callers rather than grow without bound
                self._buckets = dict(list(self._buckets.items())[-50_000:])


# Where a request's resolved principal is kept (in its ASGI scope's per-request state).
_RESOLVED = "ticket_rag.principal"


@dataclass
class Gatekeeper:
    """Resolves the caller of each request: bootstrap admin key, stored key, or anonymous (if allowed)."""

    keys: Callable[[], ApiKeyStore]
    allow_anonymous: bool
    admin_key: str | None
    limiter: RateLimiter
    # Failed authentications per client address: once spent, that address gets 429 before any key is looked at.
    failures: RateLimiter

    def principal(self, request: Request) -> Principal:
        """The caller, resolved once per request: the key gate (before the body is read) and the route share it."""
        state = request.scope.setdefault("state", {})
        resolved = state.get(_RESOLVED)
        if isinstance(resolved, Principal):  # one rate-limit token per request, however often it is asked
            return resolved
        address = f"ip:{request.client.host if request.client else '-'}"
        header, bearer = request.headers.get("x-api-key"), _bearer(request.headers.get("authorization"))
        if header and bearer and not hmac.compare_digest(header.encode(), bearer.encode()):
            # two different keys: which one to believe is not ours to guess, and the wrong one must not go unnoticed
            self.failures.check(address)
            raise Unauthorized("two different API keys (X-API-Key and Authorization: Bearer); send one")
        presented = header or bearer
        if presented:
            self.failures.check(address, take=False)
            principal = self._authenticate(presented, address)
        elif self.allow_anonymous:
            principal = ANONYMOUS
        else:
            raise Unauthorized("an API key is required (X-API-Key header or Authorization: Bearer)")
        state["key_id"] = principal.key_id
        self.limiter.check(principal.key_id or address)
        state[_RESOLVED] = principal
        return principal

    def _authenticate(self, presented: str, address: str) -> Principal:
        if self.admin_key and hmac.compare_digest(presented.encode(), self.admin_key.encode()):
            return Principal(key_id="admin", role=Role.admin, collections=frozenset({ALL}))
        try:
            return self.keys().authenticate(presented)
        except Unauthorized:
            self.failures.check(address)  # this failure spends a token; the one that finds none is a 429
            raise


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


# The caller of the request being served, for code that runs where no Request is at hand (the LangServe runnables).
_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def caller(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the request's principal, which must hold at least `role`."""

    async def dependency(request: Request) -> Principal:
        gatekeeper: Gatekeeper = request.app.state.gatekeeper
        principal = await run_in_threadpool(gatekeeper.principal, request)
        principal.require(role)
        request.state.principal = principal
        _current.set(principal)
        return principal

    return dependency


def authorized_collection(requested: str | None, default: str) -> str:
    """The collection a runnable may read for the current request's caller; fails closed when there is none."""
    principal = _current.get()
    if principal is None:
        raise Unauthorized("no authenticated caller for this request")
    return principal.collection(requested, default)


Reader = Annotated[Principal, Depends(caller(Role.read))]
Writer = Annotated[Principal, Depends(caller(Role.write))]
Admin = Annotated[Principal, Depends(caller(Role.admin))]


def collections_in(payload: Any, *, batch: bool) -> Iterable[str | None]:
    """The collections a LangServe body asks for: what that endpoint runs, `inputs[*]` for batch, else `input`."""
    if not isinstance(payload, dict):
        return []
    items = payload.get("inputs") if batch else [payload.get("input")]
    if not isinstance(items, list):
        return []
    return [item.get("collection") if isinstance(item, dict) else None for item in items]
