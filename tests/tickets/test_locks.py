"""The store's in-process locks: a queue behind one slow holder is bounded, so it cannot take every worker thread."""

from __future__ import annotations

import threading
import time

import pytest

from ticket_rag.errors import StoreUnavailable
from ticket_rag.tickets.locks import KeyedLocks


def test_waiters_beyond_the_bound_are_refused_at_once_and_the_others_get_the_lock() -> None:
    locks = KeyedLocks(wait_seconds=10, max_waiters=3)
    release, done = threading.Event(), []

    def wait_for_it() -> None:
        with locks.hold(["collection-links"]):
            done.append(1)

    with locks.hold(["collection-links"]):
        waiters = [threading.Thread(target=wait_for_it) for _ in range(3)]
        for thread in waiters:
            thread.start()
        deadline = time.monotonic() + 5
        while locks._entries["collection-links"].users < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable), locks.hold(["collection-links"]):
            pass
        assert time.monotonic() - started < 1  # refused, not queued
        with locks.hold(["another-key"]):  # other keys are not affected
            release.set()
    for thread in waiters:
        thread.join(timeout=10)
    assert len(done) == 3 and locks._entries == {}
