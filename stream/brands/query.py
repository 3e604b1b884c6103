"""Brand queries: parse once into an AST, compile to predicates, match each post against every brand cheaply.

A post is tokenized once into a `PostIndex` (units with positions, hashtags, @mentions): a unit is a word in
spaced scripts and one character in scripts written without spaces (Chinese, Japanese, Thai), so a query word
in those scripts is a run of units and matches inside a run of text. Every compiled query
has a *trigger set*: index keys at least one of which a post must contain for the query to possibly match.
The catalog keeps an inverted index key -> brands, so a post only runs the predicates of brands whose
trigger keys it contains; with hundreds of brands most are never evaluated for a given post.

Syntax (see docs/BRANDS.md): words, "quoted phrases", #hashtags, @mentions, AND, OR, NOT (upper case),
juxtaposition = AND, parentheses, `a NEAR/n b`, `case:Word`, `case:"Exact Phrase"`, `lang:en`,
`platform:x`, `author:id`. Precedence, tightest first: NOT, NEAR/n, AND, OR.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import regex
import yaml

if TYPE_CHECKING:
    from stream.validate import ValidPost

log = logging.getLogger(__name__)

FIELDS = ("lang", "platform", "author", "case")

# Scripts written without spaces between words. `ー` (Script=Common) lengthens katakana and hiragana vowels.
_UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}ー"
# A unit never starts with a combining mark or joiner, so the variation selector of "❤️" is not a word.
_START = r"(?![\p{M}\p{Join_Control}])"
# `regex`, not `re`: its \w keeps combining marks (Thai vowels, Devanagari signs) inside their word, where
# `re` splits "น้ำ" into "น" and "ำ". A `#` or `@` only starts a tag at a word boundary, so "mail@acme.com"
# yields the words mail, acme, com. Group numbers are the unit kinds below.
_TOKEN_RE = regex.compile(
    rf"(?<!\w)([#@]){_START}(\w+)"
    rf"|((?:[{_UNSPACED}]\p{{M}}*)+)"
    rf"|{_START}(?:(\p{{Hangul}}+)|([^\W{_UNSPACED}\p{{Hangul}}]+))"
)
_TAG, CHAR, HANGUL, WORD = 2, 3, 4, 5
_CHAR_RE = regex.compile(rf"[{_UNSPACED}]\p{{M}}*")
_MARK_RE = regex.compile(r"\p{M}")
_TAG_BODY_RE = regex.compile(rf"{_START}\w+")
# ASCII text (most English posts) has only WORD units, which `re` finds twice as fast as `regex`.
_ASCII_TOKEN_RE = re.compile(r"(?<!\w)([#@])(\w+)|(\w+)")


def tokenize(text: str) -> list[tuple[str, str, int]]:
    """The units of a post's or a query's text after NFKC, as (tag, unit, kind); the one tokenizer of both.

    kind WORD: a word of a spaced script; HANGUL: a Korean word (Hangul is split from other scripts, so
    "LG전자" is "LG" and "전자"); CHAR: one character of an unspaced script with its combining marks (Chinese,
    Japanese, Thai), split from other scripts too ("我买了iPhone": 我, 买, 了, iPhone). `tag` is "#body" or
    "@body" on the first unit of a hashtag or @mention, else "".
    """
    text = unicodedata.normalize("NFKC", text)
    if text.isascii():
        return [
            (prefix + body, body, WORD) if prefix else ("", word, WORD)
            for prefix, body, word in _ASCII_TOKEN_RE.findall(text)
        ]
    return _units(text)


def _units(text: str) -> list[tuple[str, str, int]]:
    units: list[tuple[str, str, int]] = []
    for match in _TOKEN_RE.finditer(text):
        kind: int = match.lastindex
        if kind == CHAR:
            run = match.group()
            # Han and kana runs seldom carry a mark (a character is then a unit), Thai ones nearly always.
            units += [("", char, CHAR) for char in (_CHAR_RE.findall(run) if _MARK_RE.search(run) else run)]
        elif kind == _TAG:
            prefix, body = match.group(1, 2)
            tagged = _units(body)  # not empty: a tag body starts with a letter, digit or _
            tagged[0] = (prefix + body, tagged[0][1], tagged[0][2])
            units += tagged
        else:
            units.append(("", match.group(), kind))
    return units


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


class PostIndex:
    """One post, tokenized once for all brands."""

    __slots__ = ("author", "keys", "language", "platform", "positions", "raw_words", "words")

    def __init__(self, text: str, language: str = "", platform: str = "", author: str = "") -> None:
        units = tokenize(text)
        self.raw_words = [unit for _, unit, _ in units]
        self.words = [unit.casefold() for unit in self.raw_words]
        # Keys: "unit", "#tag", "@mention" -> unit positions (a tag: its first unit's). A tag body is also
        # plain units, so the term `acme` matches "#Acme" and "@acme" while `#acme` matches the hashtag only.
        self.positions: dict[str, list[int]] = {}
        add = self.positions.setdefault
        for position, word in enumerate(self.words):
            add(word, []).append(position)
        previous = WORD
        for position, (tag, _, kind) in enumerate(units):
            if tag:
                add(tag.casefold(), []).append(position)
            if kind == CHAR and previous == CHAR:
                # Two characters in a row are a key: a query word in an unspaced script is indexed by its first
                # two, far fewer posts than those holding its first character.
                add(self.words[position - 1] + self.words[position], []).append(position - 1)
            previous = kind
            if kind == HANGUL:
                # Korean attaches particles and compounds without a space (삼성이, 삼성전자): a query word matches
                # the start of a Hangul word, so each of its prefixes is a key too.
                word = self.words[position]
                for end in range(1, len(word)):
                    add(word[:end], []).append(position)
        self.keys = self.positions.keys()
        self.language = _fold(language)
        self.platform = _fold(platform)
        self.author = _fold(author)


def _words(text: str) -> list[tuple[str, int]]:
    """The raw units a text tokenizes into, exactly as a post's text would be, with their kinds."""
    return [(unit, kind) for _, unit, kind in tokenize(text)]


# ----------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class Phrase:
    """One unit or consecutive units, with their kinds (`tokenize`); `case` compares the original spelling."""

    words: tuple[str, ...]
    kinds: tuple[int, ...]
    case: bool = False


@dataclass(frozen=True, slots=True)
class Tag:
    prefix: str  # "#" or "@"
    name: str


@dataclass(frozen=True, slots=True)
class FieldFilter:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


Positional = Phrase | Tag


@dataclass(frozen=True, slots=True)
class Near:
    # Each side: alternatives, as written `(refund OR "money back")`.
    left: tuple[Positional, ...]
    right: tuple[Positional, ...]
    distance: int


Node = Phrase | Tag | FieldFilter | Not | And | Or | Near


# ------------------------------------------------------------------------------------------ parsing


class QuerySyntaxError(ValueError):
    """A malformed query; line and column are 1-based and point into the brands file when there is one."""

    def __init__(
        self, message: str, line: int, column: int, *, source: str = "<query>", brand: str | None = None, text: str = ""
    ) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        self.brand = brand
        self.text = text  # the offending source line, for the caret display
        where = f"{source}:{line}:{column}: " + (f"brand {brand!r}: " if brand else "")
        caret = f"\n    {text}\n    {' ' * (column - 1)}^" if text else ""
        super().__init__(f"{where}{message}{caret}")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "(", ")", "AND", "OR", "NOT", "NEAR", "PHRASE", "WORD", "EOF"
    text: str
    offset: int
    distance: int = 0


class _Lexer:
    def __init__(self, query: str) -> None:
        self.query = query

    def error(self, message: str, offset: int) -> QuerySyntaxError:
        before = self.query[:offset]
        line = before.count("\n") + 1
        column = offset - (before.rfind("\n") + 1) + 1
        return QuerySyntaxError(message, line, column, text=self.query.splitlines()[line - 1] if self.query else "")

    def tokens(self) -> list[_Token]:
        query, i, out = self.query, 0, []
        while i < len(query):
            char = query[i]
            if char.isspace():
                i += 1
            elif char in "()":
                out.append(_Token(char, char, i))
                i += 1
            elif char == '"':
                end = self._closing_quote(i)
                out.append(_Token("PHRASE", query[i + 1 : end], i))
                i = end + 1
            else:
                start = i
                while i < len(query) and not query[i].isspace() and query[i] not in '()"':
                    i += 1
                # field:"quoted value" is one token
                if i < len(query) and query[i] == '"' and query[i - 1] == ":":
                    i = self._closing_quote(i) + 1
                out.append(self._word(query[start:i], start))
        out.append(_Token("EOF", "", len(query)))
        return out

    def _closing_quote(self, start: int) -> int:
        end = self.query.find('"', start + 1)
        if end < 0:
            raise self.error("unterminated quoted phrase", start)
        return end

    def _word(self, text: str, offset: int) -> _Token:
        if text in ("AND", "OR", "NOT"):
            return _Token(text, text, offset)
        if text.startswith("NEAR"):
            match = re.fullmatch(r"NEAR/(\d+)", text)
            if not match:
                raise self.error("NEAR needs a distance in words, as in NEAR/3", offset)
            return _Token("NEAR", text, offset, int(match.group(1)))
        return _Token("WORD", text, offset)


class _Parser:
    def __init__(self, query: str) -> None:
        self.lexer = _Lexer(query)
        self.tokens = self.lexer.tokens()
        self.i = 0

    @property
    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def parse(self) -> Node:
        if self.peek.kind == "EOF":
            raise self.lexer.error("empty query", 0)
        node = self.or_expr()
        if self.peek.kind == ")":
            raise self.lexer.error("unexpected ')' without a matching '('", self.peek.offset)
        if self.peek.kind != "EOF":  # pragma: no cover - or_expr consumes until ')' or EOF
            raise self.lexer.error(f"unexpected {self.peek.text!r}", self.peek.offset)
        return node

    def or_expr(self) -> Node:
        children = [self.and_expr()]
        while self.peek.kind == "OR":
            self.take()
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def and_expr(self) -> Node:
        children = [self.near_expr()]
        while self.peek.kind in ("AND", "NOT", "(", "PHRASE", "WORD"):
            if self.peek.kind == "AND":
                self.take()
            children.append(self.near_expr())
        return children[0] if len(children) == 1 else And(tuple(children))

    def near_expr(self) -> Node:
        start = self.peek
        node = self.unary()
        while self.peek.kind == "NEAR":
            near = self.take()
            operand = self.peek
            right = self.unary()
            left = self._positional(node, start, near)
            node = Near(left, self._positional(right, operand, near), near.distance)
            start = operand
        return node

    def _positional(self, node: Node, token: _Token, near: _Token) -> tuple[Positional, ...]:
        if isinstance(node, Phrase | Tag):
            return (node,)
        if isinstance(node, Or) and all(isinstance(c, Phrase | Tag) for c in node.children):
            return tuple(c for c in node.children if isinstance(c, Phrase | Tag))
        if isinstance(node, Near):
            raise self.lexer.error("NEAR cannot be chained; combine two NEARs with AND", near.offset)
        raise self.lexer.error(
            "NEAR works on words, phrases, #hashtags, @mentions and OR-groups of them only", token.offset
        )

    def unary(self) -> Node:
        if self.peek.kind == "NOT":
            self.take()
            return Not(self.unary())
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "(":
            if self.peek.kind == ")":
                raise self.lexer.error("empty parentheses", token.offset)
            node = self.or_expr()
            if self.peek.kind != ")":
                raise self.lexer.error("unclosed '('", token.offset)
            self.take()
            return node
        if token.kind == "PHRASE":
            return self._phrase(token.text, token.offset + 1, case=False)
        if token.kind == "WORD":
            return self._word(token)
        what = "end of query" if token.kind == "EOF" else repr(token.text)
        previous = self.tokens[self.i - 2].text if self.i >= 2 else ""
        after = f" after {previous!r}" if previous in ("AND", "OR", "NOT") or previous.startswith("NEAR") else ""
        raise self.lexer.error(f"expected a term, phrase, tag or '('{after}, found {what}", token.offset)

    def _phrase(self, text: str, offset: int, *, case: bool) -> Phrase:
        units = _words(text)
        if not units:
            raise self.lexer.error("a phrase needs at least one letter or digit", offset)
        words = tuple(unit if case else unit.casefold() for unit, _ in units)
        return Phrase(words, tuple(kind for _, kind in units), case)

    def _word(self, token: _Token) -> Node:
        text = token.text
        if text[0] in "#@":
            body = text[1:]
            if not _TAG_BODY_RE.fullmatch(body):
                raise self.lexer.error(f"{text[0]} must be followed by letters, digits or _", token.offset)
            return Tag(text[0], _fold(body))
        name, colon, value = text.partition(":")
        if colon and re.fullmatch(r"[A-Za-z_]+", name):
            if name not in FIELDS:
                raise self.lexer.error(f"unknown field {name!r}; known fields: {', '.join(FIELDS)}", token.offset)
            value_offset = token.offset + len(name) + 1
            if value.startswith('"'):
                value, value_offset = value[1:-1], value_offset + 1
            if not value:
                raise self.lexer.error(f"{name}: needs a value", token.offset)
            if name == "case":
                return self._phrase(value, value_offset, case=True)
            return FieldFilter(name, _fold(value))
        return self._phrase(text, token.offset, case=False)


def parse_query(query: str) -> Node:
    """The AST of one query; raises QuerySyntaxError with a position inside `query`."""
    return _Parser(query).parse()


# ---------------------------------------------------------------------------------------- compiling

Predicate = Callable[[PostIndex], bool]
Spans = Callable[[PostIndex], list[tuple[int, int]]]


def _alternatives(nodes: tuple[Positional, ...]) -> Spans:
    parts = [_spans(node) for node in nodes]
    if len(parts) == 1:
        return parts[0]
    return lambda post: [span for part in parts for span in part(post)]


def _spans(node: Positional) -> Spans:
    """Occurrences as (first, last) unit positions."""
    if isinstance(node, Tag):
        key, last = node.prefix + node.name, len(_words(node.name)) - 1

        def tag_spans(post: PostIndex) -> list[tuple[int, int]]:
            return [(p, p + last) for p in post.positions.get(key, ())]

        return tag_spans
    words, case = node.words, node.case
    first, n = _fold(words[0]), len(words)
    if n == 1 and not case:

        def word_spans(post: PostIndex) -> list[tuple[int, int]]:
            return [(p, p) for p in post.positions.get(first, ())]

        return word_spans
    folded = tuple(_fold(w) for w in words)
    same = _same_units(tuple(kind == HANGUL for kind in node.kinds))

    def phrase_spans(post: PostIndex) -> list[tuple[int, int]]:
        found = []
        for p in post.positions.get(first, ()):
            if same(post.words[p : p + n], folded) and (not case or same(post.raw_words[p : p + n], words)):
                found.append((p, p + n - 1))
        return found

    return phrase_spans


def _same_units(prefix: tuple[bool, ...]) -> Callable[[list[str], tuple[str, ...]], bool]:
    """Whether a post's units are a phrase's: equal, or starting with its `prefix` (Hangul) units."""
    if not any(prefix):
        return lambda found, wanted: tuple(found) == wanted

    def same(found: list[str], wanted: tuple[str, ...]) -> bool:
        return len(found) == len(wanted) and all(
            f.startswith(w) if pre else f == w for f, w, pre in zip(found, wanted, prefix, strict=True)
        )

    return same


def _compile(node: Node) -> Predicate:
    if isinstance(node, Phrase):
        if len(node.words) == 1 and not node.case:
            key = node.words[0]
            return lambda post: key in post.keys
        spans = _spans(node)
        return lambda post: bool(spans(post))
    if isinstance(node, Tag):
        key = node.prefix + node.name
        return lambda post: key in post.keys
    if isinstance(node, FieldFilter):
        value = node.value
        if node.name == "lang":
            return lambda post: post.language == value
        if node.name == "platform":
            return lambda post: post.platform == value
        return lambda post: post.author == value
    if isinstance(node, Not):
        child = _compile(node.child)
        return lambda post: not child(post)
    if isinstance(node, And):
        parts = tuple(_compile(c) for c in node.children)
        return lambda post: all(part(post) for part in parts)
    if isinstance(node, Or):
        parts = tuple(_compile(c) for c in node.children)
        return lambda post: any(part(post) for part in parts)
    left, right, distance = _alternatives(node.left), _alternatives(node.right), node.distance

    def near(post: PostIndex) -> bool:
        b_spans = right(post)
        # At most n other words between the two occurrences, in either order.
        return any(
            (b0 - a1 - 1 if b0 > a1 else a0 - b1 - 1) <= distance
            for a0, a1 in left(post)
            for b0, b1 in b_spans
            if b0 > a1 or a0 > b1
        )

    return near


def triggers(node: Node) -> frozenset[str] | None:
    """Index keys one of which a matching post must contain; None when a post could match without any."""
    if isinstance(node, Phrase):
        # A run of unspaced characters is indexed by two of them in a row (PostIndex has those pairs as keys).
        units = [(_fold(w), kind) for w, kind in zip(node.words, node.kinds, strict=True)]
        pairs = [a + b for (a, a_kind), (b, b_kind) in itertools.pairwise(units) if a_kind == b_kind == CHAR]
        return frozenset([max([w for w, _ in units] + pairs, key=len)])
    if isinstance(node, Tag):
        return frozenset([node.prefix + node.name])
    if isinstance(node, FieldFilter | Not):
        return None
    if isinstance(node, Near):
        left, right = (triggers(Or(side)) for side in (node.left, node.right))
        assert left is not None and right is not None
        return min(left, right, key=len)
    sets = [triggers(c) for c in node.children]
    if isinstance(node, Or):
        return None if any(s is None for s in sets) else frozenset().union(*(s for s in sets if s is not None))
    candidates = [s for s in sets if s is not None]
    return min(candidates, key=len) if candidates else None


@dataclass(frozen=True, slots=True)
class BrandQuery:
    brand: str
    query: str
    predicate: Predicate
    triggers: frozenset[str]


def compile_query(brand: str, query: str, exclude_authors: Iterable[str] = ()) -> BrandQuery:
    node = parse_query(query)
    keys = triggers(node)
    if keys is None:
        raise _Lexer(query).error(
            "the query needs at least one word, phrase, #hashtag or @mention that must be present "
            "(NOT, lang:, platform: and author: alone would match almost every post)",
            0,
        )
    excluded = frozenset(_fold(a) for a in exclude_authors)
    predicate = _compile(node)
    if excluded:
        base = predicate

        def predicate(post: PostIndex) -> bool:
            return post.author not in excluded and base(post)

    return BrandQuery(brand, query, predicate, keys)


# ------------------------------------------------------------------------------------------ catalog


@dataclass(slots=True)
class BrandCatalog:
    """Every brand's compiled query, and the inverted index that picks which ones a post can match."""

    queries: list[BrandQuery]
    source: str = "<brands>"
    _index: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _names: frozenset[str] = field(default=frozenset(), repr=False)
    _terms: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for number, query in enumerate(self.queries):
            for key in query.triggers:
                self._index.setdefault(key, []).append(number)
        self._names = frozenset(q.brand for q in self.queries)
        self._terms = {q.brand: frozenset(key.lstrip("#@") for key in q.triggers) for q in self.queries}

    @property
    def brands(self) -> list[str]:
        return [q.brand for q in self.queries]

    @property
    def brand_names(self) -> frozenset[str]:
        return self._names

    @property
    def brand_terms(self) -> Mapping[str, frozenset[str]]:
        """Per brand, the words a post it matches contains one of (its query's triggers, without # and @): where
        a brand is named in a text (stream/brands/aspects.py)."""
        return self._terms

    def match_index(self, post: PostIndex) -> list[str]:
        index = self._index
        candidates: set[int] = set()
        for key in post.keys:
            hits = index.get(key)
            if hits:
                candidates.update(hits)
        return [self.queries[n].brand for n in sorted(candidates) if self.queries[n].predicate(post)]

    def match_post(self, text: str, language: str = "", platform: str = "", author: str = "") -> list[str]:
        """Brands whose query the post matches, in catalog order."""
        return self.match_index(PostIndex(text, language, platform, author))

    def match(self, valid: ValidPost) -> list[str]:
        """The processor's BrandMatcher protocol: language is the validated one (tag or detected)."""
        post = valid.post
        return self.match_post(post.text, valid.language, post.platform, post.author.id)

    @classmethod
    def from_mapping(cls, brands: Mapping[str, str | Mapping[str, Any]], source: str = "<brands>") -> BrandCatalog:
        """{brand: query} or {brand: {query: ..., exclude_authors: [...]}}; positions relative to each query."""
        return cls([_compile_entry(brand, spec, source) for brand, spec in brands.items()], source)

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<brands>") -> BrandCatalog:
        return cls(_load_yaml(text, source), source)

    @classmethod
    def from_yaml(cls, path: Path) -> BrandCatalog:
        return cls.from_yaml_text(path.read_text(encoding="utf-8"), str(path))


def _compile_entry(brand: str, spec: str | Mapping[str, Any], source: str) -> BrandQuery:
    query, excluded = (spec, []) if isinstance(spec, str) else (spec.get("query", ""), spec.get("exclude_authors", []))
    try:
        return compile_query(brand, query, excluded)
    except QuerySyntaxError as error:
        raise QuerySyntaxError(
            error.message, error.line, error.column, source=source, brand=brand, text=error.text
        ) from None


def _load_yaml(text: str, source: str) -> list[BrandQuery]:
    lines = text.splitlines()

    def fail(message: str, mark: yaml.Mark | None, brand: str | None = None) -> QuerySyntaxError:
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        shown = lines[line - 1] if 0 < line <= len(lines) else ""
        return QuerySyntaxError(message, line, column, source=source, brand=brand, text=shown)

    try:
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as error:
        raise fail(f"YAML: {error.problem}", error.problem_mark) from None
    brands_node = mapping_value(root, "brands")
    if not isinstance(brands_node, yaml.MappingNode):
        raise fail("expected a top-level mapping `brands: {name: query, ...}`", root.start_mark if root else None)
    queries: list[BrandQuery] = []
    seen: set[str] = set()
    for key_node, value_node in brands_node.value:
        brand = str(key_node.value)
        if brand in seen:
            raise fail(f"brand {brand!r} is defined twice", key_node.start_mark)
        seen.add(brand)
        query_node, excluded = value_node, []
        if isinstance(value_node, yaml.MappingNode):
            query_node = mapping_value(value_node, "query")
            excluded_node = mapping_value(value_node, "exclude_authors")
            if excluded_node is not None:
                if not isinstance(excluded_node, yaml.SequenceNode):
                    raise fail("exclude_authors must be a list of author ids", excluded_node.start_mark, brand)
                excluded = [str(item.value) for item in excluded_node.value]
            unknown = {str(k.value) for k, _ in value_node.value} - {"query", "exclude_authors"}
            if unknown:
                known = "known: query, exclude_authors"
                raise fail(f"unknown keys {sorted(unknown)} ({known})", value_node.start_mark, brand)
        if not isinstance(query_node, yaml.ScalarNode):
            raise fail("expected a query string", (query_node or value_node).start_mark, brand)
        try:
            queries.append(compile_query(brand, str(query_node.value), excluded))
        except QuerySyntaxError as error:
            line, column = _file_position(query_node, lines, error.line, error.column)
            shown = lines[line - 1] if 0 < line <= len(lines) else error.text
            message = error.message
            end = query_node.end_mark
            if query_node.style is None and "#" in lines[end.line][end.column :]:
                message += " (in YAML ' #' starts a comment: quote a query that contains #hashtags)"
            raise QuerySyntaxError(message, line, column, source=source, brand=brand, text=shown) from None
    return queries


def mapping_value(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if key_node.value == key:
            return value_node  # type: ignore[no-any-return]
    return None


def _file_position(node: yaml.ScalarNode, lines: list[str], line: int, column: int) -> tuple[int, int]:
    """Map a position inside a query to the brands file (exact for one-line and `|` block scalars)."""
    start = node.start_mark
    if node.style in (None, "'", '"') and start.line == node.end_mark.line:
        return start.line + 1, start.column + 1 + (1 if node.style else 0) + column - 1
    if node.style == "|":
        body = [n for n in range(start.line + 1, min(node.end_mark.line + 1, len(lines))) if lines[n].strip()]
        if body:
            indent = len(lines[body[0]]) - len(lines[body[0]].lstrip(" "))
            return start.line + 1 + line, indent + column
    return start.line + 1, start.column + 1


class Matcher(Protocol):
    def match(self, valid: ValidPost) -> list[str]: ...

    @property
    def brand_names(self) -> frozenset[str]: ...

    @property
    def brand_terms(self) -> Mapping[str, frozenset[str]]: ...


def post_brands(valid: ValidPost, matcher: Matcher) -> list[str]:
    """The brands a post is about: the source's brand hints, then the matched brands, each once."""
    return list(dict.fromkeys([*valid.brands, *matcher.match(valid)]))


class HintedBrands:
    """Which brand hints become brands: those a brand query defines, and the first `limit` other names.

    Each brand is a mention per post (carrying its text), brand-monitor state and metric labels; hints come
    from whoever writes the input topic, so they must not mint brands without end. Hints past the limit
    are left out of what `admit` returns (the post is still served).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._names: set[str] = set()

    def admit(self, hints: list[str], defined: frozenset[str] = frozenset()) -> list[str]:
        admitted = []
        for name in hints:
            if name in defined or name in self._names:
                admitted.append(name)
            elif len(self._names) < self._limit:
                self._names.add(name)
                admitted.append(name)
        return admitted


class ReloadingCatalog:
    """A catalog bound to its file: re-read when the file changes (checked at most every `check_s`).

    A file that no longer parses is logged and ignored; the previous catalog keeps matching.
    """

    def __init__(self, path: Path, check_s: float = 5.0) -> None:
        self.path = path
        self.check_s = check_s
        self.catalog = BrandCatalog.from_yaml(path)
        self._stamp = self._file_stamp()
        self._next_check = time.monotonic() + check_s

    def _file_stamp(self) -> tuple[int, int]:
        stat = os.stat(self.path)
        return stat.st_mtime_ns, stat.st_size

    def reload(self) -> bool:
        """Swap in the file's current catalog; False (old one kept) if it does not parse."""
        try:
            # Taken before reading, so a broken file is reported once, not at every check.
            self._stamp = self._file_stamp()
            catalog = BrandCatalog.from_yaml(self.path)
        except (OSError, QuerySyntaxError) as error:
            log.error("brands file not reloaded, keeping %d brands: %s", len(self.catalog.queries), error)
            return False
        self.catalog = catalog
        log.info("brands file reloaded: %d brands", len(catalog.queries))
        return True

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_s
        try:
            changed = self._file_stamp() != self._stamp
        except OSError:
            changed = False
        if changed:
            self.reload()

    def match(self, valid: ValidPost) -> list[str]:
        self.maybe_reload()
        return self.catalog.match(valid)

    @property
    def brand_names(self) -> frozenset[str]:
        return self.catalog.brand_names

    @property
    def brand_terms(self) -> Mapping[str, frozenset[str]]:
        return self.catalog.brand_terms
