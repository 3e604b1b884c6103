"""Sentiment per brand for posts that name several: the text cut into the part about each brand.

"Switched from Acme to Globex, so much better" is positive as a post, but not about Acme. For a post with two
or more brands located in its text, the text is cut between consecutive mentions of different brands, at the
strongest marker between them: a sentence end, then a contrast word (but, however, while ...), then a
comparison word (than, over, vs ...), then a comma, then a switch word (to, for: "from Acme to Globex").
A brand's span is its segments (text before the first mention and after the last, and segments naming no
brand, join the segment before). The model classifies each span as an extra row of the post's batch.

Two brands set against each other mostly carry opposite sentiments, and one side's span alone is often
neutral to the model ("than Spotify for classical", "Lyft picked me up in 4 minutes"): in a post with two
spanned brands, a neutral span takes the opposite of the other brand's polar one. That rule and the markers
were chosen on the dev half of models/data/multibrand/ (docs/BRANDS.md has the numbers on both halves).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_WORD_RE = re.compile(r"\w+")
# Markers by strength; a cut uses the strongest class present between two brands' mentions.
_SENTENCE_RE = re.compile(r"[.!?;:\n]+")
_CONTRAST = frozenset({"but", "however", "whereas", "while", "although", "though", "unlike", "yet", "meanwhile"})
_COMPARISON = frozenset({"than", "over", "vs", "versus", "instead", "compared"})
_SWITCH = frozenset({"to", "for"})
# Words that only list brands ("Acme, Globex and Initech all ..."): such a gap is not cut.
_JOINERS = frozenset({"and", "or", "nor", "the", "both", "&"})


@dataclass(frozen=True, slots=True)
class BrandSpan:
    """The part of a post about one brand."""

    brand: str
    text: str


@dataclass(frozen=True, slots=True)
class Scored:
    label: str
    scores: dict[str, float]


def _names(brand: str, terms: Iterable[str]) -> list[tuple[str, ...]]:
    names = {tuple(word.casefold() for word in _WORD_RE.findall(term)) for term in (brand, *terms)}
    # Longest first, so "Apple Music" is found before "Apple".
    return sorted((name for name in names if name), key=len, reverse=True)


def _mentions(text: str, brands: Sequence[str], terms: Mapping[str, Iterable[str]]) -> list[tuple[int, int, str]]:
    """(start, end) character offsets of each located brand mention, in text order, not overlapping."""
    words = [(m.start(), m.end(), m.group().casefold()) for m in _WORD_RE.finditer(text)]
    folded = [word for _, _, word in words]
    candidates = []
    for brand in brands:
        for name in _names(brand, terms.get(brand, ())):
            n = len(name)
            candidates += [(n, i, brand) for i in range(len(folded) - n + 1) if tuple(folded[i : i + n]) == name]
    taken: set[int] = set()
    found = []
    for n, i, brand in sorted(candidates, key=lambda c: (-c[0], c[1])):
        if taken.isdisjoint(range(i, i + n)):
            taken.update(range(i, i + n))
            found.append((words[i][0], words[i + n - 1][1], brand))
    return sorted(found)


def split_brands(
    text: str, brands: Sequence[str], terms: Mapping[str, Iterable[str]] | None = None
) -> list[BrandSpan] | None:
    """One span per brand located in text (by its name, or a word of `terms`: the words its query finds it
    by), in order of first mention; None when fewer than two brands are located or no cut is found (the
    post-level sentiment then stands for every brand)."""
    if len(brands) < 2:
        return None
    mentions = _mentions(text, brands, terms or {})
    if len({brand for _, _, brand in mentions}) < 2:
        return None
    cuts: list[int] = []
    # The brands each segment names: a gap that is not cut keeps both sides in one segment.
    segments = [[mentions[0][2]]]
    for (_, end, left), (start, _, right) in itertools.pairwise(mentions):
        cut = _cut(text, end, start) if left != right else None
        if cut is not None:
            cuts.append(cut)
            segments.append([right])
        elif right not in segments[-1]:
            segments[-1].append(right)
    if not cuts:
        return None
    bounds = [0, *cuts, len(text)]
    parts: dict[str, list[str]] = {}
    for index, named in enumerate(segments):
        for brand in named:
            parts.setdefault(brand, []).append(text[bounds[index] : bounds[index + 1]].strip())
    return [BrandSpan(brand, " ".join(p for p in pieces if p)) for brand, pieces in parts.items()]


def _cut(text: str, start: int, end: int) -> int | None:
    """Where to cut the gap text[start:end] between two brands' mentions; None when the gap only lists them
    or holds no marker."""
    gap = text[start:end]
    words = [(m.start() + start, m.group().casefold()) for m in _WORD_RE.finditer(gap)]
    sentence = list(_SENTENCE_RE.finditer(gap))
    if sentence:
        return start + sentence[-1].end()
    if all(word in _JOINERS for _, word in words):
        return None
    for markers in (_CONTRAST, _COMPARISON):
        for offset, word in words:
            if word in markers:
                return offset
    comma = gap.rfind(",")
    if comma >= 0:
        return start + comma + 1
    return next((offset for offset, word in words if word in _SWITCH), None)


def opposite(scored: Scored) -> Scored:
    """The other side of a contrast: negative and positive swapped."""
    scores = dict(scored.scores)
    scores["negative"], scores["positive"] = scored.scores.get("positive", 0.0), scored.scores.get("negative", 0.0)
    label = {"negative": "positive", "positive": "negative"}.get(scored.label, scored.label)
    return Scored(label, scores)


def brand_sentiments(spans: Sequence[BrandSpan], own: Sequence[Scored]) -> dict[str, Scored]:
    """Each spanned brand's sentiment from its span's classification (`own`, in `spans` order); of two spanned
    brands, a neutral one takes the opposite of the other's sentiment."""
    result = {span.brand: scored for span, scored in zip(spans, own, strict=True)}
    if len(own) == 2 and [scored.label == "neutral" for scored in own].count(True) == 1:
        neutral, polar = (0, 1) if own[0].label == "neutral" else (1, 0)
        result[spans[neutral].brand] = opposite(own[polar])
    return result
