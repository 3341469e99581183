"""The answer, sanitised as it streams: citations rewritten, links, images, markup and URLs removed; and ticket text
made safe to quote (plain_text)."""

from __future__ import annotations

import re
from collections.abc import Callable

# Every repeat is bounded: ticket text reaches these (up to 20,000 characters), and an unbounded `[^\]]*` scans to the
# end of the text from every "[", quadratic on "[[[[...".
_IMAGE = re.compile(r"!\[[^\]\n]{0,500}\]\([^)\n]{0,2000}\)")
_LINK = re.compile(r"\[([^\]\n]{0,500})\]\([^)\n]{0,2000}\)")
_HTML = re.compile(r"</?[a-z][a-z0-9-]*\b[^>]{0,2000}>", re.I)  # any HTML element: a client may render the answer
# URLs: with a scheme (a backslash works as a slash in browsers), www., protocol-relative, and script/data URLs
_URL = re.compile(
    r"\b(?:https?|ftp):[\\/]{2}\S+|\bwww\.\S+|(?<![\w/:])//[\w-]+(?:\.[\w-]+)+\S*"
    r"|\b(?:javascript|vbscript):\S+|\bdata:[\w/+.-]+[;,]\S*",
    re.I,
)
_CITATION = re.compile(r"\[\s*(T\d+(?:\s*[,;]\s*T\d+)*)\s*\]", re.I)
_TAG = re.compile(r"<[^>]{0,2000}>")
_OPEN_LINK = re.compile(r"\[[^\]]{0,500}\](?:\([^)]{0,2000}\)|[^(])", re.S)
# A reference-style link's definition whose destination looks like one ("[1]: //evil.example", "[1]: <x:y>"; not
# "[T1]: Update the firmware."), and what is left of link syntax ("](" or "]["), which breaks any reference anyway.
_LINK_DEFINITION = re.compile(r"^[ \t]*\[[^\]\n]{0,500}\]:[ \t]*(?:<|/|www\.|[a-z][\w+.-]{0,30}:)\S*.*$", re.M | re.I)
_LINK_JOIN = re.compile(r"\]([(\[])")
# A ticket reference as answers write it (chains/context.cited): "[#" and 8 hex digits "]".
_REFERENCE = re.compile(r"\[\s*(#[0-9a-f]{8})\s*\]", re.I)
# Anything in a ticket's own text that would read as a citation in an answer: a reference or a [T1] label.
_CITATION_LIKE = re.compile(r"\[\s*(?:#[0-9a-f]{4,}|T\d{1,6}(?:\s*[,;]\s*T\d{1,6}){0,50})\s*\]", re.I)
# Removing one construct can join its neighbours into another ("<<b></b>script>", "[#dead[#12345678]beef]"): each
# cleaning runs until nothing changes, and text still changing after this many rounds loses its brackets.
_ROUNDS = 6


def _unlinked(text: str) -> str:
    text = _LINK_DEFINITION.sub("", text)
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _HTML.sub("", text)
    return _URL.sub("[link removed]", text)


def _stable(clean: Callable[[str], str], text: str) -> str:
    for _ in range(_ROUNDS):
        cleaned = clean(text)
        if cleaned == text:
            return _LINK_JOIN.sub(r"] \1", cleaned)
        text = cleaned
    return _defanged(text)


def _defanged(text: str) -> str:
    """Text that can form no link, tag or citation any more."""
    return text.translate(str.maketrans("[]<>", "()‹›"))


# A bare <word> that is no HTML element is an anonymisation placeholder (the demo tickets' <name>, <tel_num>,
# <Tel Nummer>): kept, as [name], rather than dropped with the markup, so "call <tel_num>" still reads as a gap.
_LINE_BREAK = re.compile(r"<br\s*/?>", re.I)
_PLACEHOLDER_TAG = re.compile(r"<([A-Za-z][\w -]{0,30}?)>")
_HTML_ELEMENTS = frozenset(
    "a abbr address area article aside audio b base bdi bdo big blink blockquote body br button canvas caption center "
    "cite code col colgroup data datalist dd del details dfn dialog div dl dt em embed fieldset figcaption figure font "
    "footer form frame frameset h1 h2 h3 h4 h5 h6 head header hr html i iframe image img input ins kbd label legend li "
    "link main map mark marquee math menu meta meter nav noscript object ol optgroup option output p param picture "
    "plaintext pre progress q rp rt ruby s samp script section select slot small source span strike strong style sub "
    "summary sup svg table tbody td template textarea tfoot th thead time title tr track tt u ul var video wbr "
    "xmp".split()
)


def _placeholder(match: re.Match[str]) -> str:
    name = match.group(1)
    return match.group(0) if name.split()[0].lower() in _HTML_ELEMENTS else f"[{name}]"


def plain_text(text: str) -> str:
    """Ticket text as an answer may quote it (the extractive answer, the listing, an escalation's closest ticket):
    no images, links, markup or URLs, and nothing that would read as a citation ([#1a2b3c4d], [T2]), since a ticket
    could otherwise make an answer cite tickets it never retrieved, another collection's included. Anonymisation
    placeholders stay, in brackets: <tel_num> becomes [tel_num]."""
    text = _stable(_plain_once, text)
    return text.replace("<", "‹").replace(">", "›")  # plain text: nothing left can open a tag


def _plain_once(text: str) -> str:
    text = _LINE_BREAK.sub(" ", _PLACEHOLDER_TAG.sub(_placeholder, text))
    return _CITATION_LIKE.sub("", _unlinked(text))


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
        return _stable(self._clean_once, text)

    def _clean_once(self, text: str) -> str:
        text = _unlinked(text)
        # a reference copied from a ticket's text: kept only for a ticket this answer retrieved
        text = _REFERENCE.sub(lambda m: m.group(0) if m.group(1).lower() in self.refs else "", text)
        return _CITATION.sub(self._cite, text)  # in the loop: a dropped citation can join its neighbours too

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
        if len(buf) - end > self.hold_limit:  # released unfinished: what was held can no longer open anything
            self.buffer = buf = buf[:end] + _defanged(buf[end:])
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
