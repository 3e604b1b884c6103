"""Brand query language: semantics of every construct, malformed queries with file positions, reload."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stream.brands.query import (
    BrandCatalog,
    HintedBrands,
    QuerySyntaxError,
    ReloadingCatalog,
    compile_query,
    parse_query,
)


def matches(query: str, text: str, **fields: str) -> bool:
    return BrandCatalog([compile_query("B", query)]).match_post(text, **fields) == ["B"]


@pytest.mark.parametrize(
    ("query", "text", "expected"),
    [
        ("acme", "I love ACME rockets", True),
        ("acme", "acmes are great", False),
        ("acme", "Thanks @acme!", True),  # a bare term also matches the tag forms
        ("acme", "so #Acme", True),
        ("#acme", "acme is fine", False),
        ("#acme", "so #ACME today", True),
        ("@acme", "mail me at me@acme.com", False),  # not a mention: no word boundary before @
        ("@acme", "hey @Acme_ fix it", False),
        ('"acme corp"', "acme corp ships", True),
        ('"acme corp"', "corp acme ships", False),
        ('"t-mobile"', "my T Mobile bill", True),  # a phrase tokenizes like post text
        ("t-mobile", "my t-mobile bill", True),
        ("case:Apple", "apple pie", False),
        ("case:Apple", "Apple launched", True),
        ('case:"Apple Pay"', "apple pay Apple Pay", True),
        ("acme AND rocket", "acme rocket", True),
        ("acme rocket", "acme only", False),  # juxtaposition is AND
        ("acme OR globex", "just globex", True),
        ("acme NOT refund", "acme refund please", False),
        ("acme AND NOT refund", "acme rocks", True),
        ("acme (rocket OR anvil)", "acme anvil", True),
        ("acme (rocket OR anvil)", "acme hammer", False),
        ("NOT spam acme", "acme", True),
        ("acme NEAR/1 rocket", "acme rocket", True),
        ("acme NEAR/1 rocket", "rocket acme", True),
        ("acme NEAR/0 rocket", "acme red rocket", False),
        ("acme NEAR/1 rocket", "acme red rocket", True),
        ("acme NEAR/1 rocket", "acme big red rocket", False),
        ('"acme corp" NEAR/3 #fail', "acme corp did it again #fail", True),
        ('"acme corp" NEAR/3 #fail', "acme corp did it once again #fail", False),
        ('acme NEAR/2 (refund OR "money back")', "acme, I want my money back", False),
        ('acme NEAR/3 (refund OR "money back")', "acme, I want my money back", True),
        ('acme NEAR/3 (refund OR "money back")', "refund now acme", True),
        ("acme and", "acme", False),  # lower-case and is a word
        ("acme lang:en", "acme", True),
        ("acme lang:de", "acme", False),
        ("acme platform:reddit", "acme", False),
        ("acme NOT author:acme_bot", "acme", False),
        ("acme NOT author:other", "acme", True),
    ],
)
def test_semantics(query: str, text: str, expected: bool) -> None:
    assert matches(query, text, language="en", platform="x", author="acme_bot") is expected


def test_exclude_authors_and_several_brands_per_post() -> None:
    catalog = BrandCatalog.from_mapping(
        {"Acme": {"query": "acme", "exclude_authors": ["AcmeSupport"]}, "Globex": "globex", "Other": "initech"}
    )
    assert catalog.match_post("acme vs globex", author="someone") == ["Acme", "Globex"]
    assert catalog.match_post("acme vs globex", author="acmesupport") == ["Globex"]
    assert catalog.match_post("nothing here") == []


def test_precedence() -> None:
    # NOT binds tightest, then NEAR, then AND, then OR.
    assert repr(parse_query("a OR b c")) == repr(parse_query("a OR (b AND c)"))
    assert repr(parse_query("NOT a b")) == repr(parse_query("(NOT a) AND b"))
    assert matches("a OR b c", "a")
    assert not matches("a OR b c", "b")


@pytest.mark.parametrize(
    ("query", "column", "message"),
    [
        ("", 1, "empty query"),
        ("acme AND", 9, "after 'AND'"),
        ("acme OR OR globex", 9, "found 'OR'"),
        ("(acme OR globex", 1, "unclosed '('"),
        ("acme OR globex)", 15, "unexpected ')'"),
        ('acme "corp', 6, "unterminated quoted phrase"),
        ("acme ()", 6, "empty parentheses"),
        ("acme NEAR/x corp", 6, "NEAR needs a distance"),
        ("acme NEAR corp", 6, "NEAR needs a distance"),
        ("acme NEAR/2 (corp inc)", 13, "NEAR works on words"),
        ("a NEAR/2 b NEAR/2 c", 12, "NEAR cannot be chained"),
        ("acme colour:red", 6, "unknown field 'colour'"),
        ("acme lang:", 6, "needs a value"),
        ("acme #", 6, "# must be followed"),
        ('acme "!!"', 7, "at least one letter"),
        ("NOT acme", 1, "at least one word"),
        ("lang:en platform:x", 1, "at least one word"),
    ],
)
def test_malformed_queries_report_the_column(query: str, column: int, message: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        compile_query("B", query)
    assert caught.value.line == 1
    assert caught.value.column == column
    assert message in caught.value.message


def test_errors_point_into_the_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "brands.yaml"
    path.write_text(
        "brands:\n  Acme: 'acme OR #acme'\n  Globex:\n    query: |\n      globex OR\n      (\"globex corp\" AND)\n",
        encoding="utf-8",
    )
    with pytest.raises(QuerySyntaxError) as caught:
        BrandCatalog.from_yaml(path)
    error = caught.value
    assert (error.line, error.column, error.brand) == (6, 25, "Globex")
    assert str(error).startswith(f"{path}:6:25: brand 'Globex': expected a term")
    assert error.text == '      ("globex corp" AND)'

    path.write_text("brands:\n  Acme: 'acme OR (rocket'\n  Globex: \"globex AND\"\n", encoding="utf-8")
    with pytest.raises(QuerySyntaxError) as caught:
        BrandCatalog.from_yaml(path)
    assert (caught.value.line, caught.value.column) == (2, 18)


def test_an_unquoted_hashtag_is_a_yaml_comment_and_the_error_says_so() -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        BrandCatalog.from_yaml_text("brands:\n  Acme: acme OR #acme\n", "b.yaml")
    assert "quote a query that contains #hashtags" in caught.value.message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("brands: [acme]\n", 1, "top-level mapping"),
        ("brands:\n  Acme: acme\n  Acme: globex\n", 3, "defined twice"),
        ("brands:\n  Acme: {query: acme, colour: red}\n", 2, "unknown keys"),
        ("brands:\n  Acme: [acme]\n", 2, "expected a query string"),
        ("brands:\n  Acme: 'acme\n", 3, "YAML"),
    ],
)
def test_malformed_files(text: str, line: int, message: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        BrandCatalog.from_yaml_text(text, "b.yaml")
    assert caught.value.line == line
    assert message in caught.value.message


def test_reload_swaps_and_keeps_the_old_catalog_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "brands.yaml"
    path.write_text("brands:\n  Acme: acme\n", encoding="utf-8")
    holder = ReloadingCatalog(path, check_s=0.0)
    assert holder.catalog.match_post("acme and globex") == ["Acme"]

    path.write_text("brands:\n  Acme: acme\n  Globex: globex\n", encoding="utf-8")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    holder.maybe_reload()
    assert holder.catalog.match_post("acme and globex") == ["Acme", "Globex"]

    path.write_text("brands:\n  Acme: (acme\n", encoding="utf-8")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000_000))
    assert holder.reload() is False
    assert holder.catalog.brands == ["Acme", "Globex"]


def test_the_catalog_only_evaluates_candidate_brands() -> None:
    catalog = BrandCatalog.from_mapping({f"brand{i}": f"word{i} OR #tag{i}" for i in range(500)})
    assert catalog.match_post("I like word7 and #tag400 but not word9000") == ["brand7", "brand400"]


def test_hints_mint_at_most_the_limit_of_brands_no_query_defines() -> None:
    hints = HintedBrands(limit=2)
    defined = frozenset({"Acme"})
    assert hints.admit(["Acme", "Globex"], defined) == ["Acme", "Globex"]
    assert hints.admit(["Initech", "Globex"], defined) == ["Initech", "Globex"]
    assert hints.admit(["Umbrella", "Acme", "x" * 50], defined) == ["Acme"], "a defined brand is never dropped"
