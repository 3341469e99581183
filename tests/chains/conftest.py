"""Fixtures for the LLM layer: the loopback Groq."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.groq_server import FakeGroq


@pytest.fixture()
def fake_groq() -> Iterator[FakeGroq]:
    """A fresh fake Groq per test, on a free loopback port."""
    with FakeGroq() as fake:
        yield fake
