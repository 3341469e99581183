"""The degenerate-output detector: the loops and debris the offline model produced, and ordinary
answers it must pass.
"""

from __future__ import annotations

import pytest

from chains.grounding import facts, ungrounded
from chains.guard import RepetitionGuard, degeneracy

# What a new user saw from the unguarded SmolLM2 (issue 14).
SEEN = [
    'The website is called "[link removed]-12-12-12-12-12-12-12-12-12-12',
    "The answer is: The answer is: The answer is: The answer is: The answer is:",
    "We refunded the duplicate charge. Please allow five days for it to appear. "
    "We refunded the duplicate charge. Please allow five days for it to appear. "
    "We refunded the duplicate charge. Please allow five days for it to appear.",
]
FINE = [
    "Sent a fresh reset link from the admin console; links are valid for 30 minutes. [#58a4c617]",
    "From past tickets:\n- Resolution: Raised the IKE lifetime on the gateway. [#1a2b3c4d]\n"
    "- Reported: The VPN tunnel disconnects every 60 minutes. [#1a2b3c4d]",
    "Update to version 2.3.1, restart the service, then check the logs from 2024-01-02 for error E1234.",
    "Bitte setzen Sie das Passwort im Admin-Bereich zurück. Danach funktioniert die Anmeldung wieder.",
]


@pytest.mark.parametrize("text", SEEN)
def test_the_loops_users_saw_are_degenerate(text: str) -> None:
    problem = degeneracy(text)
    assert problem is not None and problem.kind == "repetition"


@pytest.mark.parametrize("text", FINE)
def test_ordinary_answers_are_not(text: str) -> None:
    assert degeneracy(text) is None


def test_link_debris_and_an_answer_cut_at_the_cap_are_degenerate() -> None:
    leftover = degeneracy("Open the page [link removed]-12 and log in.")
    assert leftover is not None and leftover.kind == "leftover"
    cut = degeneracy("To reset the password, open the", finish_reason="length")
    assert cut is not None and cut.kind == "truncated"


def test_the_stream_guard_trips_as_soon_as_a_loop_starts() -> None:
    guard = RepetitionGuard()
    pieces = ["The answer is: "] * 200
    tripped_at = next(n for n, piece in enumerate(pieces) if guard.feed(piece) is not None)
    assert tripped_at <= 3  # three copies, not the whole token budget


def test_facts_that_no_ticket_holds_are_ungrounded() -> None:
    answer = (
        'Raise the IKE lifetime to 86400 s on GW-12 (v2.3.1); the error "tunnel idle" goes away [#1a2b3c4d]. '
        "Refund 49.99 EUR."
    )
    assert set(facts(answer)) == {"tunnel idle", "GW-12", "2.3.1", "86400", "49.99"}
    ticket = "Raised the IKE lifetime to 86400 s on gateway GW-12 running 2.3.1; the 'tunnel idle' error is gone."
    assert ungrounded(answer, [ticket]) == ["49.99"]
