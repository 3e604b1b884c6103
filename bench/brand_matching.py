"""Brand matching throughput: posts/s through BrandCatalog with N brands (default 500), on real tweet texts.

    .venv/bin/python bench/brand_matching.py [--brands 500] [--posts 20000] [--stream english|mixed] [--json]

Queries mix every construct (terms, phrases, tags, NEAR, NOT, field filters); about a third of the posts
mention one or two of the brands. Prints posts/s for the whole match step (tokenize once + candidates), by
the wall clock and by the process's CPU time.
`--stream mixed`: half the posts are Chinese, Japanese and Thai sentences (below) and a fifth of the brands
have Han or katakana names, written into those posts without spaces, as those scripts are written.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.brands.query import BrandCatalog
from stream.brands.synthetic import load_rated_tweets

SHAPES = (
    '{n} OR "{n} corp" OR #{n} OR @{n}',
    "({n} OR #{n}) NOT author:{n}_support",
    '"{n} app" OR ({n} NEAR/3 (refund OR outage OR support))',
    "{n} lang:en NOT platform:reddit",
    'case:{N} OR @{n} OR "{n} store"',
)


# Unspaced-script posts: everyday complaint and praise sentences, 2-3 joined per post.
UNSPACED_SENTENCES = (
    "今天的快递又晚了三天，客服电话一直打不通。",
    "新出的手机拍照效果真的很好，夜景也很清楚。",
    "我已经等了一个星期了，退款还是没有到账。",
    "这家店的服务态度太差了，再也不会来了。",
    "刚刚升级了系统，电池掉电特别快，有人遇到吗？",
    "周末和朋友去商场买了新耳机，音质不错。",
    "价格比去年便宜了不少，性价比很高，推荐大家购买。",
    "屏幕摔碎了，维修要等两周，真让人失望。",
    "昨日買ったばかりのイヤホンがもう壊れた。",
    "新しいスマホのカメラがすごくきれいで満足しています。",
    "サポートに電話したけど、全然つながらない。",
    "配送が三日も遅れて、とても困っています。",
    "アプリのアップデートの後、ログインできなくなりました。",
    "バッテリーの持ちが悪くて、一日に二回充電しています。",
    "วันนี้ส่งของช้ามาก รอมาสามวันแล้ว",
    "บริการแย่มาก จะไม่ซื้ออีกแล้ว",
)
# Brand-name material that also occurs in those sentences: the index must not pick every post as a candidate.
HAN = "华为小米天星光美乐达新科海尔联想京东云飞宝电手机"
KATAKANA = ("ソ", "ニ", "ー", "カ", "ナ", "ミ", "ラ", "テ", "ク", "ノ", "ル", "ト", "パ", "ロ", "ホ", "ン")


def unspaced_names(count: int, rng: random.Random) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        pool = HAN if rng.random() < 0.5 else KATAKANA
        names.add("".join(rng.choice(pool) for _ in range(rng.choice((2, 3, 4)))))
    return sorted(names)


def brand_names(count: int, rng: random.Random) -> list[str]:
    syllables = ["ka", "zo", "mi", "ter", "vox", "lu", "pra", "nex", "qui", "dor", "sel", "fin", "gra", "bel"]
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(syllables) for _ in range(3)))
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--brands", type=int, default=500)
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stream", choices=("english", "mixed"), default="english")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    mixed = args.stream == "mixed"
    unspaced = unspaced_names(args.brands // 5, rng) if mixed else []
    names = brand_names(args.brands - len(unspaced), rng) + unspaced
    catalog = BrandCatalog.from_mapping(
        {name.title(): SHAPES[i % len(SHAPES)].format(n=name, N=name.title()) for i, name in enumerate(names)}
    )
    tweets = [t.text for t in load_rated_tweets()]
    posts = []
    for _ in range(args.posts):
        if mixed and rng.random() < 0.5:
            text = "".join(rng.sample(UNSPACED_SENTENCES, rng.choice((2, 3))))
            if rng.random() < 0.33:
                for name in rng.sample(names, rng.choice((1, 1, 2))):
                    at = rng.randrange(len(text))
                    text = text[:at] + name + text[at:]
            posts.append((text, "zh", rng.choice(("x", "reddit", "bluesky")), f"user-{rng.randrange(5000)}"))
            continue
        text = rng.choice(tweets)
        if rng.random() < 0.33:
            for name in rng.sample(names, rng.choice((1, 1, 2))):
                text = rng.choice(("{t} #{n}", "@{n} {t}", "{N}: {t}", "{t} the {n} app")).format(
                    t=text, n=name, N=name.title()
                )
        posts.append((text, "en", rng.choice(("x", "reddit", "bluesky")), f"user-{rng.randrange(5000)}"))
    for text, lang, platform, author in posts[:1000]:  # warm-up
        catalog.match_post(text, lang, platform, author)
    started, cpu_started = time.perf_counter(), time.process_time()
    matched = sum(len(catalog.match_post(*post)) for post in posts)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    result = {
        "brands": args.brands,
        "stream": args.stream,
        "posts": args.posts,
        "seconds": round(elapsed, 3),
        "posts_per_s": round(args.posts / elapsed),
        "us_per_post": round(1e6 * elapsed / args.posts, 1),
        # CPU time of this process: steadier than the wall clock on a machine shared with other work.
        "cpu_posts_per_s": round(args.posts / cpu),
        "matches": matched,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['brands']} brands, {args.stream} stream: {result['posts_per_s']:,} posts/s "
            f"({result['us_per_post']} us/post, {matched} brand matches in {args.posts} posts)"
        )


if __name__ == "__main__":
    main()
