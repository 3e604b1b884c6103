"""What per-brand spans cost: posts/s through the model stage with 0 %, 10 % and 30 % multi-brand posts,
with spans (SOCIALPULSE_BRAND_SPANS, the default) and without (every brand takes the post's label).

    .venv/bin/python bench/brand_spans.py [--posts 1024] [--repeats 3] [--json]

The stream is real rated tweets (each with one brand hint: no spans) with a share replaced by the hand-written
multi-brand posts (models/data/multibrand/, cycled), each naming its brands. Every post goes the worker's way
from splitting to decoded heads: split_brands (as Pipeline._job does), tokenizing a window of 512 posts and
their spans in one call, sorting by length, slicing by the token budget with the spans as extra rows,
padding, ONNX Runtime (int8 on CPU, SOCIALPULSE_INTRA_OP_THREADS as the worker) and head decoding with the
lexicon fusion. Kafka, validation and emit are left out: they do not change with spans. The cost is the
process's CPU time per post (on a shared machine wall time swung by a quarter between identical runs; CPU time
holds still better), beside the padded tokens per post through the model (exact); posts/s is wall time, for
scale. Per share and mode: the run with the least CPU time of `--repeats`, the two modes alternating. Results
in docs/BRANDS.md (Per-brand sentiment).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.runtime import OnnxClassifier
from stream.batch import Batcher, Job, slice_by_budget
from stream.brands.aspects import split_brands
from stream.brands.aspects_eval import SPLITS, load_split
from stream.infer import predict
from stream.settings import Settings
from stream.tools.sample_posts import load_tweet_texts

SHARES = (0.0, 0.1, 0.3)


def stream_of(posts: int, share: float, seed: int = 7) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    tweets = load_tweet_texts()
    multi = [(p.text, list(p.labels)) for split in SPLITS for p in load_split(split)]
    count = round(posts * share)
    stream: list[tuple[str, list[str]]] = [(rng.choice(tweets), ["Acme"]) for _ in range(posts - count)]
    stream += [multi[i % len(multi)] for i in range(count)]
    rng.shuffle(stream)
    return stream


def run_once(
    model: OnnxClassifier, settings: Settings, stream: list[tuple[str, list[str]]], spans_on: bool
) -> dict[str, float]:
    batcher: Batcher[None] = Batcher(
        model.tokenizer,
        settings.max_batch_tokens,
        settings.max_batch_size,
        settings.max_wait_ms,
        settings.sort_window,
        settings.pad_multiple,
        settings.max_inflight_tokens,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    batches = rows = padded = 0
    for start in range(0, len(stream), settings.sort_window):
        window = []
        for text, brands in stream[start : start + settings.sort_window]:
            spans = (split_brands(text, brands) if spans_on else None) or []
            window.append(Job(text=text, ticket=None, tokens=0, extra_texts=[span.text for span in spans]))
        encoded = model.tokenizer.encode([job.text for job in window] + [t for job in window for t in job.extra_texts])
        extras = iter(encoded[len(window) :])
        for job, (ids, _) in zip(window, encoded[: len(window)], strict=True):
            job.ids, job.extra_ids = ids, [next(extras)[0] for _ in job.extra_texts]
        window.sort(key=lambda job: len(job.ids))
        lengths, job_rows = [len(job.ids) for job in window], [job.rows for job in window]
        budget = (settings.max_batch_tokens, settings.max_batch_size, settings.pad_multiple)
        for span in slice_by_budget(lengths, *budget, rows=job_rows):
            batch = batcher.make_batch(window[span.start : span.stop])
            predict(model.backend, model.manifest, batch.input_ids, batch.attention_mask, batch.texts)
            batches += 1
            rows += len(batch.input_ids)
            padded += batch.padded_tokens
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "seconds": round(elapsed, 3),
        "posts_per_s": round(len(stream) / elapsed, 1),
        "cpu_ms_per_post": round(1000 * cpu / len(stream), 3),
        "ms_per_batch": round(1000 * elapsed / batches, 2),
        "batches": batches,
        "rows_per_post": round(rows / len(stream), 3),
        "padded_tokens_per_post": round(padded / len(stream), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    model = OnnxClassifier.from_dir(settings.model_dir, threads=settings.ort_threads)
    run_once(model, settings, stream_of(256, 0.1), spans_on=True)  # warm-up
    results: dict[str, dict[str, dict[str, float]]] = {}
    for share in SHARES:
        stream = stream_of(args.posts, share)
        runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(run_once(model, settings, stream, spans_on=mode == "on"))
        best = {mode: min(found, key=lambda run: run["cpu_ms_per_post"]) for mode, found in runs.items()}
        on, off = best["on"], best["off"]
        on["extra_cpu"] = round(on["cpu_ms_per_post"] / off["cpu_ms_per_post"] - 1, 3)
        on["extra_tokens"] = round(on["padded_tokens_per_post"] / off["padded_tokens_per_post"] - 1, 3)
        results[f"{share:.0%}"] = best
    multi = [(p.text, list(p.labels)) for split in SPLITS for p in load_split(split)]
    started = time.perf_counter()
    for _ in range(20):
        for text, brands in multi:
            split_brands(text, brands)
    split_us = round(1e6 * (time.perf_counter() - started) / (20 * len(multi)), 1)
    output = {
        "variant": model.variant,
        "threads": settings.ort_threads,
        "posts": args.posts,
        "split_us_per_multi_brand_post": split_us,
        "results": results,
    }
    if args.json:
        print(json.dumps(output))
        return
    print(f"{model.variant}, {settings.ort_threads} ORT thread(s), {args.posts} posts, best of {args.repeats}")
    print(f"split_brands: {split_us} us per multi-brand post")
    header = f"{'multi-brand':>11} {'spans':>5} {'CPU ms/post':>11} {'posts/s':>8} {'rows/post':>9} {'tokens/post':>11}"
    print(f"{header} {'extra CPU':>9} {'extra tokens':>12}")
    for name, modes in results.items():
        for mode, r in modes.items():
            extra = f"{r['extra_cpu']:>+9.1%} {r['extra_tokens']:>+12.1%}" if "extra_cpu" in r else ""
            print(
                f"{name:>11} {mode:>5} {r['cpu_ms_per_post']:>11.3f} {r['posts_per_s']:>8.1f}"
                f" {r['rows_per_post']:>9.3f} {r['padded_tokens_per_post']:>11.1f} {extra}"
            )


if __name__ == "__main__":
    main()
