"""What a model's streamed answer may contain: its citations rewritten, nothing a poisoned ticket could plant."""

from __future__ import annotations

import re

import pytest

from chains.sanitize import AnswerSanitizer, plain_text

OURS, FOREIGN = "#d4d7349d", "#883528bf"


def _streamed(text: str, refs: list[str], size: int) -> str:
    sanitizer = AnswerSanitizer(refs)
    out = "".join(sanitizer.feed(text[i : i + size]) for i in range(0, len(text), size))
    return out + sanitizer.close()


def test_a_model_copying_a_foreign_reference_or_a_link_from_a_ticket_is_cleaned_however_it_is_chunked() -> None:
    reply = (
        f"Update the firmware [T1]. See [the guide](http://evil.example/x?d=1) ![p](http://evil.example/p.png) "
        f"<img src=x onerror=alert(1)> and ticket [{FOREIGN}], also [{OURS}] and www.evil.example/raw."
    )
    for size in (1, 3, 7, 64, len(reply)):
        answer = _streamed(reply, [OURS], size)
        assert f"[{OURS}]" in answer and "Update the firmware" in answer and "the guide" in answer, (size, answer)
        assert not [m for m in (FOREIGN, "evil.example", "<img", "](", "![") if m in answer], (size, answer)


def test_ticket_text_quoted_in_an_answer_has_no_citation_like_brackets() -> None:
    text = plain_text(f"Reseat the cable [T2] as in [{FOREIGN}]; <b>then</b> reboot, see https://evil.example/a.")
    assert text == "Reseat the cable  as in ; then reboot, see [link removed]"


def test_anonymisation_placeholders_stay_readable_while_markup_goes() -> None:
    text = plain_text("Thank you, <name>. Call <tel_num> or <Tel Nummer>.<br>Use <b>this</b> <img src=x onerror=a()>")
    assert text == "Thank you, [name]. Call [tel_num] or [Tel Nummer]. Use this "


BYPASSES = [
    "<<b></b>script>alert(1)<</b>/script>",
    "<[T2]img src=x onerror=alert(1)>",
    "[click]<b></b>(javascript:alert(1))",
    "[#dead[#12345678]beef] and [T[T2]1]",
    "[a [b] c](//evil.example/x) ![a [b] c](//evil.example/p.png?d=1)",
    "see [here][1]\n\n[1]: //evil.example/?q=x",
    "https:\\\\evil.example\\x, javascript:alert(1), data:image/png;base64,AAAA",
]


@pytest.mark.parametrize("text", BYPASSES)
def test_removing_one_construct_cannot_rebuild_another(text: str) -> None:
    for out in (plain_text(text), _streamed(text, [OURS], 5), _streamed(text, [OURS], len(text))):
        assert not re.search(r"<\w|\]\(|\]\[|\[#(?!d4d7349d)|\[T\d|//evil|javascript:|data:image", out), out


def test_a_construct_released_unfinished_at_the_hold_limit_cannot_close_later() -> None:
    sanitizer = AnswerSanitizer([OURS], hold_limit=100)
    out = sanitizer.feed("[" + "x" * 150) + sanitizer.feed("](javascript:alert(1)) done ") + sanitizer.close()
    assert "](" not in out and "javascript:" not in out, out


def test_a_line_that_starts_with_a_citation_and_a_colon_is_kept() -> None:
    answer = _streamed("[T1]: Update the dock firmware, then reseat the cable.\n", [OURS], 4)
    assert answer == f"[{OURS}]: Update the dock firmware, then reseat the cable.\n"
