"""Text features for noise control and term statistics: normalised hash, MinHash signature, link-only test, terms.

Near-duplicates use a MinHash of word shingles rather than the embedding: the signature is 32 bytes, so the
recent signatures of a brand fit in its changelogged state, it is deterministic, and the backtest needs no
model to reproduce the worker's decisions.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_URL_RE = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION_RE = re.compile(r"(?<!\w)@\w+")
_TAG_RE = re.compile(r"(?<!\w)#\w+")
_RETWEET_RE = re.compile(r"^\s*rt\b[\s:]*", re.IGNORECASE)
_WORD_RE = re.compile(r"\w+")

MINHASH_PERMUTATIONS = 16
_MERSENNE = (1 << 61) - 1
_MASK16 = 0xFFFF
# Fixed (a, b) pairs: signatures must compare equal across workers, restarts and the backtest.
_PERMUTATIONS = tuple(
    (
        int.from_bytes(hashlib.blake2b(f"a{i}".encode(), digest_size=8).digest(), "big") % (_MERSENNE - 1) + 1,
        int.from_bytes(hashlib.blake2b(f"b{i}".encode(), digest_size=8).digest(), "big") % _MERSENNE,
    )
    for i in range(MINHASH_PERMUTATIONS)
)

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing don down during each few for from further get got had has have having
    he her here hers herself him himself his how i if in into is it its itself just like me more most my myself
    no nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very was
    we were what when where which while who whom why will with would you your yours yourself yourselves im ive
    dont cant its thats amp http https www com rt""".split()  # noqa: SIM905
)


def normalise(text: str) -> str:
    """What makes two posts the same post: case, URLs, @mentions, a retweet prefix and punctuation ignored."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _RETWEET_RE.sub("", _MENTION_RE.sub(" ", _URL_RE.sub(" ", text)))
    return " ".join(_WORD_RE.findall(text))


def text_hash(normalised: str) -> str:
    return hashlib.blake2b(normalised.encode(), digest_size=8).hexdigest()


def minhash(normalised: str) -> bytes:
    """16 permutations x 16 bits over word 3-shingles (single words for very short texts)."""
    words = normalised.split()
    size = 3 if len(words) >= 3 else 1
    shingles = {" ".join(words[i : i + size]) for i in range(max(1, len(words) - size + 1))}
    hashes = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") for s in shingles]
    signature = bytearray()
    for a, b in _PERMUTATIONS:
        value = min((a * h + b) % _MERSENNE for h in hashes) & _MASK16
        signature += value.to_bytes(2, "big")
    return bytes(signature)


def best_similarity(signature: bytes, others: list[bytes]) -> float:
    """The highest estimated Jaccard similarity of `signature`'s shingles to any of `others`'."""
    if not others:
        return 0.0
    stacked = np.frombuffer(b"".join(others), dtype=">u2").reshape(len(others), MINHASH_PERMUTATIONS)
    same = (stacked == np.frombuffer(signature, dtype=">u2")).sum(axis=1)
    return float(same.max()) / MINHASH_PERMUTATIONS


def has_link(text: str) -> bool:
    return _URL_RE.search(text) is not None


def is_link_only(text: str, min_words: int = 3) -> bool:
    """A link with (almost) nothing but tags and mentions around it."""
    if not has_link(text):
        return False
    rest = _TAG_RE.sub(" ", _MENTION_RE.sub(" ", _URL_RE.sub(" ", text)))
    return len(_WORD_RE.findall(rest)) < min_words


# Longer "words" are noise (run-together text, encoded blobs); each kept term is state a window carries.
MAX_TERM_CHARS = 40


def terms(text: str) -> set[str]:
    """Content words of a post for the distinguishing-terms statistic (hashtags kept with their #)."""
    text = _MENTION_RE.sub(" ", _URL_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()))
    found = {tag for tag in _TAG_RE.findall(text) if len(tag) <= MAX_TERM_CHARS}
    found.update(
        word
        for word in _WORD_RE.findall(_TAG_RE.sub(" ", text))
        if 2 < len(word) <= MAX_TERM_CHARS and not word.isdigit()
    )
    return found - STOPWORDS
