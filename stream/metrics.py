"""Prometheus metrics. Stage histograms are observed once per batch, not per post."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Sub-millisecond to tens of seconds: inference batches sit in the ms range, e2e under load in seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
STAGES = ("queue", "tokenize", "inference", "produce")
# Per-model series carry the serving model's manifest name (a worker may serve one model per language group).
MODEL_LABEL = "model"


class Metrics:
    """Every series the worker exports; one instance per registry so tests stay isolated."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.e2e_created = Histogram(
            "socialpulse_e2e_created_latency_seconds",
            "Post created_at to event acknowledged by Kafka.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_ingest = Histogram(
            "socialpulse_e2e_ingest_latency_seconds",
            "Post received by the worker to event acknowledged by Kafka.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "socialpulse_stage_latency_seconds",
            "Time per batch in each stage: queue (oldest post's wait), tokenize, inference, produce; by model.",
            ["stage", MODEL_LABEL],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "socialpulse_batch_size_posts",
            "Posts per inference batch, by model.",
            [MODEL_LABEL],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "socialpulse_batch_tokens",
            "Padded tokens per inference batch (posts x padded length), by model.",
            [MODEL_LABEL],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Gauge(
            "socialpulse_batch_padding_ratio",
            "Share of padding tokens in the model's last batch.",
            [MODEL_LABEL],
            registry=r,
        )
        self.inflight_tokens = Gauge(
            "socialpulse_inflight_tokens", "Tokens queued or in inference; bounded by max_inflight_tokens.", registry=r
        )
        self.dead_letters_inflight = Gauge(
            "socialpulse_dead_letters_inflight",
            "Dead letters sent and not yet acknowledged; bounded by max_inflight_dead_letters.",
            registry=r,
        )
        self.backend_busy = Gauge(
            "socialpulse_backend_busy_ratio",
            "Share of wall time the model's inference backend was running, over the last few seconds.",
            [MODEL_LABEL],
            registry=r,
        )
        self.posts_consumed = Counter(
            "socialpulse_posts_consumed_total", "Records read from the input topic.", registry=r
        )
        self.posts_delivered = Counter(
            "socialpulse_posts_delivered_total",
            "Valid posts whose every event was acknowledged by Kafka.",
            registry=r,
        )
        self.events_produced = Counter(
            "socialpulse_events_produced_total",
            "Events acknowledged by Kafka, by topic and label (a behaviour event counts once per flagged label,"
            " or once as none).",
            ["topic", "label"],
            registry=r,
        )
        self.dlq_records = Counter(
            "socialpulse_dlq_records_total", "Records sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.brand_posts = Counter(
            "socialpulse_brand_posts_total", "Posts matched to each brand.", ["brand"], registry=r
        )
        self.brand_hints_dropped = Counter(
            "socialpulse_brand_hints_dropped_total",
            "Brand hints dropped because SOCIALPULSE_MAX_HINTED_BRANDS other names already became brands.",
            registry=r,
        )
        self.brand_sentiment = Counter(
            "socialpulse_brand_sentiment_total",
            "Posts per brand and sentiment label.",
            ["brand", "sentiment"],
            registry=r,
        )
        self.brand_share = Gauge(
            "socialpulse_brand_share_of_voice",
            "A brand's share of its competitor set in the set's last published window, by measure (mentions, "
            "negative, reach); NaN when the set's total is 0. Only the brands file's sets and members.",
            ["set", "brand", "measure"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "socialpulse_consumer_lag_records",
            "End offset minus committed offset, per input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.rebalances = Counter(
            "socialpulse_rebalances_total", "Consumer group rebalances seen by this worker.", registry=r
        )
        self.worker_up = Gauge("socialpulse_worker_up", "1 while the worker is processing.", registry=r)
        self.model_info = Info(
            "socialpulse_model",
            "Each served model: name, version, variant, execution provider and the languages routed to it.",
            ["name"],
            registry=r,
        )
