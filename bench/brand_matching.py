"""Brand matching throughput: posts/s through BrandCatalog with N brands (default 500), on real tweet texts.

    .venv/bin/python bench/brand_matching.py [--brands 500] [--posts 20000] [--json]

Queries mix every construct (terms, phrases, tags, NEAR, NOT, field filters); about a third of the posts
mention one or two of the brands. Prints posts/s for the whole match step (tokenize once + candidates).
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    names = brand_names(args.brands, rng)
    catalog = BrandCatalog.from_mapping(
        {name.title(): SHAPES[i % len(SHAPES)].format(n=name, N=name.title()) for i, name in enumerate(names)}
    )
    tweets = [t.text for t in load_rated_tweets()]
    posts = []
    for _ in range(args.posts):
        text = rng.choice(tweets)
        if rng.random() < 0.33:
            for name in rng.sample(names, rng.choice((1, 1, 2))):
                text = rng.choice(("{t} #{n}", "@{n} {t}", "{N}: {t}", "{t} the {n} app")).format(
                    t=text, n=name, N=name.title()
                )
        posts.append((text, "en", rng.choice(("x", "reddit", "bluesky")), f"user-{rng.randrange(5000)}"))
    for text, lang, platform, author in posts[:1000]:  # warm-up
        catalog.match_post(text, lang, platform, author)
    started = time.perf_counter()
    matched = sum(len(catalog.match_post(*post)) for post in posts)
    elapsed = time.perf_counter() - started
    result = {
        "brands": args.brands,
        "posts": args.posts,
        "seconds": round(elapsed, 3),
        "posts_per_s": round(args.posts / elapsed),
        "us_per_post": round(1e6 * elapsed / args.posts, 1),
        "matches": matched,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['brands']} brands: {result['posts_per_s']:,} posts/s "
            f"({result['us_per_post']} us/post, {matched} brand matches in {args.posts} posts)"
        )


if __name__ == "__main__":
    main()
