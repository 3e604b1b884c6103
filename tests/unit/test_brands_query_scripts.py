"""Brand queries in every script: words of Chinese, Japanese and Thai (written without spaces) match inside a
run of text, Korean words match at the start of a word (particles and compounds attach without a space),
Latin and other spaced scripts match whole words; the candidate index never loses a match."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from stream.brands.query import (
    CHAR,
    HANGUL,
    WORD,
    BrandCatalog,
    BrandQuery,
    PostIndex,
    QuerySyntaxError,
    _units,
    compile_query,
    parse_query,
    tokenize,
    triggers,
)


def matches(query: str, text: str, author: str = "someone") -> bool:
    return BrandCatalog([compile_query("B", query)]).match_post(text, author=author) == ["B"]


@pytest.mark.parametrize(
    ("query", "text", "expected"),
    [
        # Chinese: a word is its characters in a row, anywhere in the text.
        ("华为", "我喜欢华为手机", True),
        ("华为", "华为", True),
        ("华为", "华而不实的为人", False),
        ("华为手机", "华为的手机", False),
        ('"华为 手机"', "我的华为手机坏了", True),  # spaces between Chinese characters do not matter
        ("华为手机", "华为 手机", True),
        ("华为", "華為手機", False),  # NFKC does not map traditional to simplified characters
        ("华为 OR 華為", "華為手機", True),
        ("华为 AND 退款", "华为的退款太慢了", True),
        ("华为 NOT 退款", "华为的退款太慢了", False),
        ("华为 NEAR/1 退款", "华为的退款", True),  # NEAR counts characters in these scripts
        ("华为 NEAR/2 退款", "华为手机的退款", False),
        ("华为 NEAR/3 退款", "华为手机的退款", True),
        ("#华为", "#华为 新品发布会", True),
        ("#华为", "#华为手机 新品", False),  # a hashtag matches the whole tag
        ("华为", "#华为手机 新品", True),  # a word matches inside a tag's text
        ("#华为手机", "今天的话题#华为手机#", False),  # no tag: `#` follows a letter
        ("#华为手机", "话题 #华为手机# 讨论", True),
        ("@华为", "谢谢 @华为 的客服", True),
        # Japanese: katakana and kanji brands inside kana and kanji text; half-width katakana after NFKC.
        ("ソニー", "ソニーのヘッドホンが壊れた", True),
        ("ソニー", "ｿﾆｰのﾍｯﾄﾞﾎﾝが壊れた", True),
        ("ソニー", "ソニックが好き", False),
        ("任天堂", "任天堂のスイッチを買った", True),
        ("トヨタ", "昨日トヨタの車を買いました", True),
        ('"ソニー ストア"', "ソニーストアで買った", True),
        ("ソニー NOT 株価", "ソニーの株価が上がった", False),
        ("ソニー NOT 株価", "ソニーのテレビが届いた", True),
        # Thai: a word matches inside a run, but never a different syllable (a tone mark or vowel differs).
        ("ช้าง", "เบียร์ช้างอร่อยมาก", True),
        ("ช้าง", "ฉันชอบเบียร์ช้าง มาก", True),
        ("ช้าง", "ช่างซ่อมรถ", False),
        ("น้ำ", "นำเข้าสินค้า", False),
        ("กา", "กินข้าว", False),
        ("#ช้าง", "ดื่ม #ช้าง กัน", True),
        # Korean: spaced, a word matches the start of a word (particles, compounds).
        ("삼성", "삼성 폰 좋아요", True),
        ("삼성", "삼성전자 주가가 올랐다", True),
        ("삼성", "삼성이 또 해냈다", True),
        ("전자", "삼성전자", False),
        ("삼성전자", "삼성 전자", False),
        ('"삼성 갤럭시"', "삼성 갤럭시를 샀다", True),
        ('"삼성 갤럭시"', "삼성 노트북과 갤럭시", False),
        ("#삼성", "#삼성전자 행사", False),
        ("lg", "LG전자 TV", True),  # Hangul is split from Latin
        ("iphone", "iPhone을 샀어요", True),
        # Mixed scripts and Latin: Latin words stay whole words, full-width forms fold to ASCII.
        ("iphone", "我买了iPhone", True),
        ("iphone", "我买了iPhone15", False),
        ('"华为 mate60"', "我的华为Mate60坏了", True),
        ("acme", "我喜欢acme", True),
        ("acme", "我喜欢acmeville", False),
        ("acme", "acmeville", False),
        ("acme", "ＡＣＭＥ最高", True),
        ("sony", "ＳＯＮＹのテレビ", True),
        ("case:iPhone", "我买了iPhone", True),
        ("case:iPhone", "我买了iphone", False),
        # Combining marks stay in their word; a stray one (the variation selector of ❤️) is no word.
        ("acme NEAR/0 refund", "acme ❤️ refund", True),
        ("नमस्ते", "नमस्ते दोस्तों", True),
        ("café", "CAFÉ au lait", True),
    ],
)
def test_semantics_per_script(query: str, text: str, expected: bool) -> None:
    assert matches(query, text) is expected


def test_a_short_chinese_word_matches_inside_longer_words_and_not_excludes_them() -> None:
    # 小米 (Xiaomi) is also millet: substring matching finds it in 小米粥 (millet porridge); NOT excludes that.
    assert matches("小米", "早上喝了小米粥")
    assert not matches("小米 NOT 小米粥", "早上喝了小米粥")
    assert matches("小米 NOT 小米粥", "小米的新手机不错")


def test_author_exclusions_and_several_brands_in_one_chinese_post() -> None:
    catalog = BrandCatalog.from_mapping(
        {"Huawei": {"query": "华为 OR huawei", "exclude_authors": ["华为客服"]}, "Xiaomi": "小米", "Sony": "ソニー"}
    )
    assert catalog.match_post("华为和小米哪个好", author="someone") == ["Huawei", "Xiaomi"]
    assert catalog.match_post("华为和小米哪个好", author="华为客服") == ["Xiaomi"]


def test_tokenize_splits_scripts_into_units() -> None:
    assert tokenize("我买了iPhone") == [("", "我", CHAR), ("", "买", CHAR), ("", "了", CHAR), ("", "iPhone", WORD)]
    assert tokenize("LG전자 #华为P50") == [
        ("", "LG", WORD),
        ("", "전자", HANGUL),
        ("#华为P50", "华", CHAR),
        ("", "为", CHAR),
        ("", "P50", WORD),
    ]
    # A Thai character keeps its marks (NFKC splits ำ into ํ and า).
    assert [unit for _, unit, _ in tokenize("ปั๊มน้ำ")] == ["ปั๊", "ม", "น้ํ", "า"]


def test_unspaced_words_are_indexed_by_two_characters() -> None:
    assert triggers(parse_query("华为手机")) == {"华为"}
    assert triggers(parse_query("ソニー")) == {"ソニ"}
    assert triggers(parse_query("鼎")) == {"鼎"}
    assert triggers(parse_query('"华为 nova"')) == {"nova"}
    assert triggers(parse_query("삼성")) == {"삼성"}
    assert {"华为", "为手", "手机"} <= PostIndex("华为手机").keys
    assert {"삼", "삼성", "삼성전", "삼성전자"} <= PostIndex("삼성전자").keys


def test_the_catalog_only_evaluates_candidate_brands_in_unspaced_scripts() -> None:
    # Brand names share characters with each other and with the text; the two-character index keys keep the
    # candidates to the brands whose first two characters the post holds.
    names = [a + b + c for a in "华小天光美乐" for b in "为米星达新科" for c in "海尔联想京东"]
    evaluated: list[str] = []

    def counted(brand: str) -> BrandQuery:
        query = compile_query(brand, brand)

        def predicate(post: PostIndex) -> bool:
            evaluated.append(brand)
            return query.predicate(post)

        return BrandQuery(brand, brand, predicate, query.triggers)

    catalog = BrandCatalog([counted(name) for name in names])
    assert catalog.match_post("我买了小米海的新手机，不是华为京，小达") == ["华为京", "小米海"]
    assert sorted(evaluated) == sorted(n for n in names if n[:2] in ("华为", "小米", "小达"))
    assert len(evaluated) == 18, "216 brands hold these characters; only those starting with one pair run"


def test_a_thai_tag_with_marks_is_a_valid_query() -> None:
    assert matches("#น้ำ", "ดื่ม #น้ำ เยอะๆ")
    with pytest.raises(QuerySyntaxError, match="must be followed"):
        compile_query("B", "#\u0e49")  # a tag cannot start with a combining mark


# ------------------------------------------------------------------------------------------ properties

# Han and full-width kana: NFKC leaves them as they are, so a+w+b is still a, w and b after normalising.
HAN_KANA = (
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
    | st.characters(min_codepoint=0x3041, max_codepoint=0x3096)
    | st.characters(min_codepoint=0x30A1, max_codepoint=0x30FA)
    | st.just("ー")
)
# A Thai syllable: a consonant, an optional vowel above and an optional tone mark (marks attach to it).
THAI_SYLLABLE = st.tuples(
    st.characters(min_codepoint=0x0E01, max_codepoint=0x0E2E),
    st.sampled_from(["", "\u0e31", "\u0e34", "\u0e35"]),
    st.sampled_from(["", "\u0e48", "\u0e49"]),
).map("".join)
LATIN_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(
    lambda w: w not in ("and", "or", "not")
)


@given(st.text(HAN_KANA, min_size=1, max_size=6), st.text(HAN_KANA, max_size=12), st.text(HAN_KANA, max_size=12))
def test_a_chinese_or_japanese_word_matches_anywhere_in_a_run(word: str, before: str, after: str) -> None:
    assert matches(word, before + word + after)


@given(
    st.lists(THAI_SYLLABLE, min_size=1, max_size=3).map("".join),
    st.lists(THAI_SYLLABLE, max_size=5).map("".join),
    st.lists(THAI_SYLLABLE, max_size=5).map("".join),
)
def test_a_thai_word_matches_anywhere_in_a_run(word: str, before: str, after: str) -> None:
    assert matches(word, before + word + after)


@given(LATIN_WORD, st.text(HAN_KANA, max_size=8), st.text(HAN_KANA, max_size=8))
def test_a_latin_word_matches_inside_chinese_or_japanese_text(word: str, before: str, after: str) -> None:
    assert matches(word, before + word.upper() + after)


@given(LATIN_WORD, LATIN_WORD)
def test_a_latin_word_never_matches_inside_a_longer_latin_word(word: str, more: str) -> None:
    assert not matches(word, f"{more}{word}, {word}{more}!")


@given(st.text(st.characters(max_codepoint=0x7F)))
def test_the_ascii_fast_path_tokenizes_as_the_general_one(text: str) -> None:
    assert tokenize(text) == _units(text)


# Few letters of every kind, so that random queries and posts share words, pairs and prefixes.
MIXED = "华为手机ソニーのช้างน้ำ삼성전자abc "


@given(
    st.lists(st.text(MIXED.strip(), min_size=1, max_size=4), min_size=1, max_size=8),
    st.lists(
        st.sampled_from(["{a}", "#{a}", '"{a} {b}"', "{a} NEAR/1 {b}", "{a} NOT {b}", "{a} OR #{b}"]),
        min_size=8,
        max_size=8,
    ),
    st.text(MIXED + "#@", max_size=40),
)
def test_the_index_never_drops_a_brand_the_query_matches(words: list[str], shapes: list[str], text: str) -> None:
    queries = []
    for n, shape in enumerate(shapes):
        try:
            queries.append(compile_query(f"b{n}", shape.format(a=words[n % len(words)], b=words[-n % len(words)])))
        except QuerySyntaxError:
            continue  # a random word that is an operator, or a tag that starts with a mark
    assume(queries)
    post = PostIndex(text)
    assert BrandCatalog(queries).match_index(post) == [q.brand for q in queries if q.predicate(post)]
