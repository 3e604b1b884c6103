"""One typed settings object: every knob is an env var `SOCIALPULSE_<NAME>` with the default shown here."""

from __future__ import annotations

import os
import ssl
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

BackendChoice = Literal["auto", "cpu", "cuda", "tensorrt", "null"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOCIALPULSE_", frozen=True, extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers, comma separated.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    app_id: str = Field("socialpulse", description="Faust app id; also the consumer group id.")
    role: Literal["all", "pipeline", "brands"] = Field(
        "all",
        description="What this worker runs: all (ingest pipeline and brand monitor), pipeline, or brands. "
        "Each role scales as its own consumer group: the brands role's is `<app_id>-brands`.",
    )

    # Topics
    input_topic: str = "social.posts"
    sentiment_topic: str = "social.sentiment"
    behaviour_topic: str = "social.behaviour"
    dlq_topic: str = "social.posts.dlq"
    mentions_topic: str = Field("social.brand_mentions", description="Internal: one record per (post, brand).")
    brand_stats_topic: str = "social.brand_stats"
    alerts_topic: str = "social.alerts"
    stories_topic: str = Field("social.stories", description="Story updates (born, growing, faded), keyed by brand.")
    share_topic: str = Field(
        "social.brand_share",
        description="Internal: members' closed windows re-keyed by competitor set, for share of voice.",
    )
    topic_partitions: int = Field(4, description="Partitions for topics the worker creates.")
    topic_replication_factor: int = Field(
        1,
        description="Replication factor of topics the worker creates (and Faust's own). 1 suits one local broker; "
        "in production use 3 with min.insync.replicas=2 on the broker, so acks=all survives one broker down.",
    )

    # Model and backend
    model_dir: Path = Field(REPO_ROOT / ".cache/models/default", description="Folder holding manifest.json.")
    multilingual_model_dir: Path | None = Field(
        REPO_ROOT / ".cache/models/multilingual",
        description="A second model for the languages its manifest declares beyond model_dir's (a routed pair in "
        "one worker); empty turns routing off. The default folder absent: only model_dir's languages are served.",
    )
    model_variant: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="auto: int8 on CPU, fp16 on CUDA/TensorRT (falls back to fp32)."
    )
    backend: BackendChoice = Field(
        "auto",
        description="auto tries TensorRT, then CUDA, then CPU; null answers at no cost (measures the pipeline alone).",
    )
    intra_op_threads: int = Field(
        0, description="ONNX Runtime intra-op threads; 0: the usable cores but one (at least 1), see ort_threads."
    )
    tensorrt_cache_dir: Path = REPO_ROOT / ".cache/tensorrt"
    data_dir: Path = Field(REPO_ROOT / ".cache/faust", description="Faust's local state (one folder per app id).")

    # Validation
    max_record_bytes: int = Field(
        524_288, description="Records larger than this go to the DLQ (as a prefix past dlq_max_value_bytes)."
    )
    max_text_chars: int = Field(10_000, description="Texts longer than this go to the DLQ.")
    dlq_max_value_bytes: int = Field(
        1_000_000,
        description="Dead letters keep at most this many bytes of the original record (a prefix; its length "
        "and sha256 are in headers): whole up to the broker's default 1 MB message limit, and under the "
        "producer's 1 MiB request limit with room for headers.",
    )
    languages: list[str] | None = Field(
        None,
        description="Languages served (JSON list). Unset: those the loaded models' manifests declare; a listed "
        "language no model declares stops the worker at start; empty accepts every language.",
    )
    language_min_confidence: float = Field(
        0.80, description="Detected languages below this confidence are not grounds for rejection."
    )
    dedupe_window: int = Field(200_000, description="How many recent post ids are remembered for dedupe.")
    max_id_chars: int = Field(256, description="Longer post or author ids are dead-lettered (field_too_long).")
    max_brand_hints: int = Field(16, description="Posts with more brand hints are dead-lettered (too_many_brands).")
    max_brand_chars: int = Field(100, description="Longer brand hints are dead-lettered (field_too_long).")
    max_hinted_brands: int = Field(
        200,
        description="Distinct hinted brand names no brand query defines that become brands (mentions, monitor "
        "state, metric labels); hints past it are dropped and counted.",
    )

    # Batching and backpressure
    max_batch_tokens: int = Field(8192, description="Padded tokens per batch (n x padded length).")
    max_batch_size: int = Field(64, description="Posts per batch.")
    max_wait_ms: float = Field(20.0, description="Longest wait of the oldest queued post before a batch is cut.")
    sort_window: int = Field(512, description="Queued posts sorted by length together to cut padding.")
    pad_multiple: int = 8
    max_inflight_tokens: int = Field(
        65_536,
        description="Tokens queued or running, all models together; above it the agent stops taking records (pause).",
    )
    max_inflight_dead_letters: int = Field(
        1024, description="Dead letters being sent at once; past it the agent waits (rejections' backpressure)."
    )
    inference_probe_attempts: int = Field(
        3,
        description="When every post of a batch fails inference, tries (1 s apart) of input that ran before; if "
        "all fail, the model is broken (lost GPU, wrong model): the worker stops instead of dead-lettering.",
    )

    # Worker
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="The worker's event loop. uvloop (libuv) runs the loop, its sockets and callbacks in C: the "
        "null-backend ceiling drained 8-14 % more posts/s than with asyncio's (bench/README.md).",
    )
    broker_session_timeout_s: float = 10.0
    broker_heartbeat_interval_s: float = 1.0
    broker_commit_interval_s: float = 1.0
    stream_buffer_maxsize: int = Field(2048, description="Faust per-partition buffer before it pauses fetching.")
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, description="Faust web server: live page and /metrics.")
    web_faust_routes: bool = Field(
        False,
        description="Faust's own /router, /table and /graph routes on the web port; /table serves table contents "
        "(brand state: post texts, author ids), so they are off unless asked for.",
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, description="Standalone Prometheus exporter port; 0 disables it.")
    brands_file: Path | None = Field(
        None, description="YAML brand queries (docs/BRANDS.md); none disables matching and brand monitoring."
    )
    brand_spans: bool = Field(
        True,
        description="Classify each brand's part of a post naming several (one extra model row per such brand, "
        "in the post's batch), so its mentions carry the brand's own sentiment; false: every brand takes the "
        "post's.",
    )
    brands_webhook_url: str | None = Field(
        None, description="Alertmanager base URL; alerts are POSTed to {url}/api/v2/alerts. None disables."
    )

    @field_validator("multilingual_model_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def group_id(self) -> str:
        """The Faust app id (and consumer group) of this role. Faust assigns partitions as if every member ran
        the same agents, so a brands-only process must not join the pipeline's group."""
        return f"{self.app_id}-brands" if self.role == "brands" else self.app_id

    @model_validator(mode="after")
    def _kafka_security_agrees(self) -> Settings:
        """Refuse settings that mean different things to Faust and to our own clients.

        Faust enables SASL whenever it is given credentials, while aiokafka clients follow the protocol:
        a mechanism with PLAINTEXT gave the worker's Faust consumer SASL and its producer and admin none."""
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        sasl = protocol.startswith("SASL_")
        if mechanism and not sasl:
            raise ValueError(
                f"SOCIALPULSE_KAFKA_SASL_MECHANISM={mechanism} needs SOCIALPULSE_KAFKA_SECURITY_PROTOCOL=SASL_SSL "
                f"or SASL_PLAINTEXT, not {protocol}"
            )
        if sasl and not mechanism:
            raise ValueError(f"SOCIALPULSE_KAFKA_SECURITY_PROTOCOL={protocol} needs SOCIALPULSE_KAFKA_SASL_MECHANISM")
        if mechanism and not (self.kafka_sasl_username and self.kafka_password):
            raise ValueError(f"SASL {mechanism} needs SOCIALPULSE_KAFKA_SASL_USERNAME and _PASSWORD")
        files = {
            "CAFILE": self.kafka_ssl_cafile,
            "CERTFILE": self.kafka_ssl_certfile,
            "KEYFILE": self.kafka_ssl_keyfile,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and not protocol.endswith("SSL"):
            raise ValueError(f"SOCIALPULSE_KAFKA_SSL_{given[0]} is set but the security protocol is {protocol}")
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"SOCIALPULSE_KAFKA_SSL_{name}={path}: no such file")
        return self

    @property
    def ort_threads(self) -> int:
        """ONNX Runtime threads for the worker. By default one core is left to the event loop, tokenizer and
        producer: on 2 cores shared with a broker, every core in ONNX Runtime drained a backlog about 40 %
        faster but held live posts 1.5-1.9 s at p50 under 60 % load; one thread: 49 ms at 40 % load
        (`socialpulse bench`)."""
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        return max(1, len(os.sched_getaffinity(0)) - 1)

    @cached_property
    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
            certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
            keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
        )
        return context

    @property
    def kafka_password(self) -> str | None:
        return self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None

    @cached_property
    def kafka_client_options(self) -> dict[str, Any]:
        """Security options in aiokafka's spelling, passed through to every client we create."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_password
        if self.kafka_ssl_context is not None:
            options["ssl_context"] = self.kafka_ssl_context
        return options
