"""In-process locks that serialize the read-modify-write steps of the ticket store.

Weaviate has no transactions and no conditional write: a PATCH reads the ticket, merges, re-embeds and writes it
back, and a duplicate confirmation reads both tickets and writes lists of ids back. Two such requests interleaved
lose one of the writes. Within one API process these locks make each of them atomic:

- one lock per ticket (`tickets`): a PATCH, a delete, a create or import that replaces the ticket, and the link
  writes of a confirmation or deletion hold it, so the stored text, keyword terms, vector and links come from one
  merge;
- one lock per collection for duplicate links (`links`): confirmations, rejections and deletions hold it while they
  read and rewrite links, so concurrent confirms onto one original are all kept and a cycle check sees every link.

Order, so that two holders never wait for each other: the links lock first, then the ticket locks, all at once and
sorted. Nothing that holds a ticket lock asks for another lock.

Only within one process: several API replicas (docs/scaling.md) each have their own, so two replicas can still
interleave writes to one ticket. That limit is documented in docs/scaling.md.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from ticket_rag.errors import StoreUnavailable

# A holder waits at most this long: longer than one write's deadline (30 s), and it keeps a queue behind a hung
# write from filling the thread pool for ever.
WAIT_SECONDS = 90.0
# At most this many requests wait for one key (a ticket, or a collection's links) besides its holder; more are a 503
# at once. Each waiter is a worker thread of the shared pool (40): one slow holder, say a delete of an original with
# thousands of duplicates, must not let a queue behind it take every thread of the process.
MAX_WAITERS = 16


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class KeyedLocks:
    """Mutexes by name, made on first use and dropped when nobody holds or waits for them."""

    def __init__(self, *, wait_seconds: float = WAIT_SECONDS, max_waiters: int = MAX_WAITERS) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.wait_seconds = wait_seconds
        self.max_waiters = max_waiters

    @contextmanager
    def hold(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold every key's lock, taken in sorted order; StoreUnavailable if one is not free in time."""
        ordered = sorted(set(keys))
        with self._guard:
            entries = [self._entries.setdefault(key, _Entry()) for key in ordered]
            if any(entry.users > self.max_waiters for entry in entries):  # a holder and max_waiters waiting already
                for key, entry in zip(ordered, entries, strict=True):
                    if entry.users == 0:
                        del self._entries[key]
                raise StoreUnavailable("too many changes to the same tickets are waiting; try again shortly")
            for entry in entries:
                entry.users += 1
        held: list[_Entry] = []
        deadline = time.monotonic() + self.wait_seconds  # for all the keys together, not each
        try:
            for entry in entries:
                if not entry.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise StoreUnavailable("another change to the same tickets is still running; try again shortly")
                held.append(entry)
            yield
        finally:
            for entry in reversed(held):
                entry.lock.release()
            with self._guard:
                for key, entry in zip(ordered, entries, strict=True):
                    entry.users -= 1
                    if entry.users == 0:
                        del self._entries[key]


class TicketLocks:
    """The store's locks: per ticket, and per collection for duplicate links (see the module docstring)."""

    def __init__(self, *, wait_seconds: float = WAIT_SECONDS) -> None:
        self._tickets = KeyedLocks(wait_seconds=wait_seconds)
        self._links = KeyedLocks(wait_seconds=wait_seconds)

    def tickets(self, collection: str, ticket_ids: Iterable[uuid.UUID]) -> AbstractContextManager[None]:
        """Hold these tickets' locks (take `links` first when both are needed)."""
        return self._tickets.hold(f"{collection}\x00{ticket_id}" for ticket_id in ticket_ids)

    def links(self, collection: str) -> AbstractContextManager[None]:
        """Hold the collection's duplicate-link lock."""
        return self._links.hold([collection])
