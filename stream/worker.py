"""The Faust worker: app settings, the pipeline service, topic creation, lag and busy gauges."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from mode import Service

from models.language import detect_language, primary_language
from models.manifest import Manifest
from stream.backends import InferenceBackend, select_backend
from stream.batch import Batcher, TokenBudget
from stream.brands.agent import register_brand_agents
from stream.brands.model import ShareOfVoice
from stream.brands.query import Matcher, ReloadingCatalog
from stream.brands.share import MEASURES, CompetitorSets
from stream.emit import Emitter, Topics
from stream.ingest import OffsetSequencer, register_ingest, worker_transport
from stream.kafka_auth import start_client
from stream.metrics import Metrics
from stream.pipeline import BatchObserver, Lane, Pipeline, Ticket
from stream.serving import UNDECLARED_LANGUAGES, LanePlan, ServingPlan, plan_serving
from stream.settings import Settings
from stream.tokenize import PostTokenizer
from stream.validate import Validator
from stream.web import BrandTimeline, LiveStats, MetricsServer, RecentAlerts, register_web, start_metrics_server

log = logging.getLogger(__name__)

LENGTH_BUCKETS = (16, 32, 64, 128)


def create_app(settings: Settings) -> faust.App:
    # Faust creates its app folder but not the folders above it.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=_faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_commit_interval=settings.broker_commit_interval_s,
        # Inference of a full window must never look like a dead consumer.
        broker_max_poll_interval=max(300.0, settings.broker_session_timeout_s * 10),
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_router_enabled=settings.web_faust_routes,
        web_tables_enabled=settings.web_faust_routes,
        web_graph_enabled=settings.web_faust_routes,
        store="memory://",
        # Faust's per-app data folder; under the cache, not wherever the worker was started.
        datadir=str(settings.data_dir / "{conf.name}-data"),
    )
    # Before anything builds Faust's default transport (declaring a topic does); the agents register the
    # topics whose commits the sequencer decides.
    app.transport = worker_transport(app, OffsetSequencer())
    return app


def _faust_credentials(settings: Settings) -> Any:
    if settings.kafka_sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=settings.kafka_ssl_context,
        )
    if settings.kafka_ssl_context is not None:
        return faust.SSLCredentials(settings.kafka_ssl_context)
    return None


def build_backend(settings: Settings, model_dir: Path, manifest: Manifest) -> InferenceBackend:
    backend = select_backend(
        model_dir,
        manifest,
        backend=settings.backend,
        variant=settings.model_variant,
        intra_op_threads=settings.ort_threads,
        max_batch_size=settings.max_batch_size,
        tensorrt_cache_dir=settings.tensorrt_cache_dir,
    )
    backend.warmup(warmup_shapes(settings, manifest.max_seq_len))
    return backend


def warmup_shapes(settings: Settings, max_seq_len: int) -> list[tuple[int, int]]:
    """Each length bucket at the largest batch the token budget lets the batcher cut.

    ONNX Runtime's CPU arena grows to the largest batch it has served and keeps that memory; sizing it
    here makes the worker's memory its start-up figure, not a step during the first backlog (the soak
    saw +38 MB an hour in).
    """
    buckets = [length for length in LENGTH_BUCKETS if length <= max_seq_len] or [max_seq_len]
    return [(max(1, min(settings.max_batch_size, settings.max_batch_tokens // length)), length) for length in buckets]


def build_validator(settings: Settings, served: frozenset[str] | None = None) -> Validator:
    """`served` (empty: every language): the worker's serving plan's; by default SOCIALPULSE_LANGUAGES, else
    the default model's English (what the offline tools that classify with model_dir alone serve)."""
    if served is None:
        served = UNDECLARED_LANGUAGES if settings.languages is None else frozenset(settings.languages)
    return Validator(
        detect_language=detect_language,
        parse_language_tag=primary_language,
        served_languages=served,
        language_min_confidence=settings.language_min_confidence,
        max_record_bytes=settings.max_record_bytes,
        max_text_chars=settings.max_text_chars,
        dedupe_window=settings.dedupe_window,
        max_id_chars=settings.max_id_chars,
        max_brand_hints=settings.max_brand_hints,
        max_brand_chars=settings.max_brand_chars,
    )


class PipelineService(Service):
    """Owns the producer, the model and the pipeline's tasks for the lifetime of the worker."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        metrics: Metrics,
        plan: ServingPlan,
        matcher: Matcher | None = None,
        observer: BatchObserver | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self._plan = plan
        self._matcher = matcher
        self._observer = observer
        self._ready: asyncio.Future[Pipeline] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._pipeline: Pipeline | None = None
        self._lag_probe = LagProbe(settings)
        # One bound for every lane's queued and running tokens.
        self._budget = TokenBudget(settings.max_inflight_tokens)

    async def pipeline(self) -> Pipeline:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
        return await self._ready

    async def on_start(self) -> None:
        settings = self.settings
        # Loaded and warmed side by side: each backend runs on its own ONNX Runtime threads.
        backends = await asyncio.gather(
            *(asyncio.to_thread(build_backend, settings, lane.model_dir, lane.manifest) for lane in self._plan.lanes)
        )
        lanes = [
            Lane(self._batcher(lane), backend, lane.manifest, lane.languages)
            for lane, backend in zip(self._plan.lanes, backends, strict=True)
        ]
        for lane in lanes:
            self.metrics.model_info.labels(lane.name).info(
                {
                    "version": lane.manifest.version,
                    "variant": lane.backend.variant,
                    "provider": lane.backend.provider,
                    "languages": ",".join(sorted(lane.languages)),
                }
            )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            client_id=f"{settings.app_id}-events",
            **settings.kafka_client_options,
        )
        await start_client(self._producer, settings.kafka_bootstrap, settings.kafka_client_options)
        await self._lag_probe.start()
        topics = Topics(
            sentiment=settings.sentiment_topic,
            behaviour=settings.behaviour_topic,
            dlq=settings.dlq_topic,
            mentions=settings.mentions_topic,
        )
        self._pipeline = Pipeline(
            validator=build_validator(settings, self._plan.served),
            lanes=lanes,
            emitter=Emitter(self._producer, topics, dlq_max_value_bytes=settings.dlq_max_value_bytes),
            metrics=self.metrics,
            matcher=self._matcher,
            observer=self._observer,
            probe_attempts=settings.inference_probe_attempts,
            hinted_brands=settings.max_hinted_brands,
            max_inflight_dead_letters=settings.max_inflight_dead_letters,
            brand_spans=settings.brand_spans,
        )
        self.add_future(self._pipeline.run())
        self.add_future(self._watch_failure(self._pipeline))
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
        self._ready.set_result(self._pipeline)
        # The models, lexicons and Faust are loaded: every full collection would walk them again, for nothing
        # (they live as long as the worker). Frozen, the ceiling drained 10 % more posts/s (bench/README.md).
        gc.collect()
        gc.freeze()
        self.metrics.worker_up.set(1)
        log.info(
            "socialpulse pipeline ready: %s; serving %s",
            "; ".join(
                f"model {lane.name} {lane.manifest.version} ({lane.backend.variant} on {lane.backend.provider}) "
                f"for {sorted(lane.languages)}"
                for lane in lanes
            ),
            sorted(self._plan.served) or "every language",
        )
        log.info("event loop: %s", type(asyncio.get_running_loop()).__module__)

    def _batcher(self, lane: LanePlan) -> Batcher[Ticket]:
        settings = self.settings
        return Batcher(
            PostTokenizer.for_model(lane.model_dir, lane.manifest),
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            sort_window=settings.sort_window,
            pad_multiple=settings.pad_multiple,
            budget=self._budget,
        )

    async def _watch_failure(self, pipeline: Pipeline) -> None:
        try:
            await pipeline.failure
        except Exception as error:
            log.error("stopping the worker: %s", error)
            await self.crash(error)

    @Service.timer(2.0)
    async def _update_gauges(self) -> None:
        if self._pipeline is not None:
            for lane in self._pipeline.lanes:
                self.metrics.backend_busy.labels(lane.name).set(lane.busy_ratio())
            self.metrics.inflight_tokens.set(self._pipeline.inflight_tokens)

    @Service.timer(5.0)
    async def _update_lag(self) -> None:
        try:
            lags = await self._lag_probe.measure()
        except Exception as error:  # the probe is advisory: a broker hiccup must not stop processing
            log.warning("consumer lag probe failed: %s", error)
            return
        for partition, lag in lags.items():
            self.metrics.consumer_lag.labels(self.settings.input_topic, str(partition)).set(lag)

    async def on_stop(self) -> None:
        self.metrics.worker_up.set(0)
        if self._pipeline is not None:
            await self._pipeline.drain(timeout=10.0)
            self._pipeline.close()
        if self._producer is not None:
            await self._producer.stop()
        await self._lag_probe.stop()


class MetricsExporter(Service):
    """The standalone Prometheus exporter (settings.metrics_port), in every role."""

    def __init__(self, settings: Settings, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._metrics = metrics
        self._server: MetricsServer | None = None

    async def on_start(self) -> None:
        self._server = start_metrics_server(self._settings, self._metrics)

    async def on_stop(self) -> None:
        if self._server is not None:
            self._server.close()


class TopicConfigError(RuntimeError):
    """A topic the worker relies on exists with a configuration that would lose data."""


async def ensure_topics(settings: Settings, extra_topics: Iterable[str] = ()) -> None:
    """Create the topics the worker reads and writes before Faust subscribes; check the changelogs.

    Faust ignores a missing source topic at subscription, and broker auto-create may be off. Table
    changelogs (`extra_topics`) are made here too: Faust creates them itself at start, but an agent that
    writes before the consumer's metadata has caught up sees 0 partitions and crashes (PartitionsMismatch).
    Made here, they must be compacted as Faust would make them: with the broker's default delete policy a
    restarted worker silently restored only what the retention (24 h locally) had kept. An existing
    changelog without compaction stops the worker with the command that fixes it.
    """
    changelogs = list(extra_topics)
    async with kafka_admin(settings) as admin:
        existing = set(await admin.list_topics())
        wanted = [
            settings.input_topic,
            settings.sentiment_topic,
            settings.behaviour_topic,
            settings.dlq_topic,
            settings.mentions_topic,
            settings.brand_stats_topic,
            settings.alerts_topic,
            settings.stories_topic,
            settings.share_topic,
        ]
        missing = [
            NewTopic(
                name,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                topic_configs={"cleanup.policy": "compact"} if name in changelogs else {},
            )
            for name in [*wanted, *changelogs]
            if name not in existing
        ]
        if missing:
            await admin.create_topics(missing)
        # Every changelog, not only those listed before: one may have been made meanwhile by someone else.
        if changelogs:
            policies = await cleanup_policies(admin, changelogs)
            # A topic made a moment ago can be unknown to the broker that answers describe_configs.
            deadline = time.monotonic() + 10.0
            while (unread := [n for n in changelogs if n not in policies]) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                policies.update(await cleanup_policies(admin, unread))
            if unread:
                raise TopicConfigError(f"could not read cleanup.policy of changelog topics {unread}")
            wrong = sorted(name for name, policy in policies.items() if "compact" not in policy.split(","))
            if wrong:
                raise TopicConfigError(
                    f"changelog topics {wrong} are not compacted (cleanup.policy={[policies[n] for n in wrong]}); "
                    "a restart would restore only what retention kept. Fix with: kafka-configs.sh --bootstrap-server "
                    f"{settings.kafka_bootstrap} --alter --entity-type topics --entity-name <topic> "
                    "--add-config cleanup.policy=compact (the local development broker: deploy/kafka/kafka.sh reset)"
                )


async def cleanup_policies(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, str]:
    """Each topic's effective cleanup.policy, asked of the cluster."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, configs={"cleanup.policy": None}) for name in topics]
    policies: dict[str, str] = {}
    for response in await admin.describe_configs(resources):
        for _error_code, _message, _kind, name, entries, *_ in response.resources:
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    policies[name] = str(entry[1])
    return policies


@asynccontextmanager
async def kafka_admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client for the configured cluster, closed on exit."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **settings.kafka_client_options)
    await start_client(admin, settings.kafka_bootstrap, settings.kafka_client_options)
    try:
        yield admin
    finally:
        await admin.close()


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    """The topic's partitions, asked of the cluster: a client subscribed to nothing has no metadata for it."""
    (description,) = await admin.describe_topics([topic])
    return [TopicPartition(topic, p) for p in sorted(part["partition"] for part in description["partitions"])]


class LagProbe:
    """End offset minus the group's committed offset, per partition, for the whole group of this role."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: tuple[AIOKafkaAdminClient, AIOKafkaConsumer] | None = None

    async def start(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here, not in __init__.
        bootstrap, options = self._settings.kafka_bootstrap, self._settings.kafka_client_options
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **options)
        await start_client(admin, bootstrap, options)
        await start_client(consumer, bootstrap, options)
        self._clients = (admin, consumer)

    async def stop(self) -> None:
        if self._clients is not None:
            admin, consumer = self._clients
            await consumer.stop()
            await admin.close()
            self._clients = None

    async def measure(self, topic: str | None = None) -> dict[int, int]:
        """Per partition of `topic` (the input topic unless named; the soak bench also reads mentions)."""
        if self._clients is None:
            return {}
        admin, consumer = self._clients
        tps = await topic_partitions(admin, topic or self._settings.input_topic)
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(self._settings.group_id, partitions=tps)
        return {tp.partition: ends[tp] - max(committed[tp].offset, 0) if tp in committed else ends[tp] for tp in tps}


def changelog_topics(app: faust.App) -> list[str]:
    return [table.changelog_topic_name for table in app.tables.values()]


class RoleError(ValueError):
    """The settings ask for a role that cannot run as configured."""


def record_share(metrics: Metrics, share: ShareOfVoice) -> None:
    """The share gauge: each member's shares of the set's last published window."""
    for member in share.brands:
        for measure, value in zip(
            MEASURES, (member.mention_share, member.negative_share, member.reach_share), strict=True
        ):
            gauge = metrics.brand_share.labels(share.competitor_set, member.brand, measure)
            gauge.set(math.nan if value is None else value)


def build_worker_app(settings: Settings, metrics: Metrics) -> tuple[faust.App, PipelineService | None]:
    """The Faust app of settings.role: the ingest pipeline, the brand monitor, or both (the default).

    Each role wires the existing stages; no stage knows about roles. The pipeline role needs the model;
    the brands role needs no model, only the brands file and the mentions topic the pipeline writes.
    """
    if settings.role == "brands" and not settings.brands_file:
        raise RoleError("the brands role needs SOCIALPULSE_BRANDS_FILE")
    app = create_app(settings)
    live, alerts, timeline = LiveStats(), RecentAlerts(), BrandTimeline()
    register_web(app, metrics, live, alerts=alerts, timeline=timeline)
    # Faust starts service instances as well as classes (App._prepare_subservice); its stub says classes.
    app.service(cast(Any, MetricsExporter(settings, metrics, loop=None)))
    service: PipelineService | None = None
    if settings.role in ("all", "pipeline"):
        matcher = ReloadingCatalog(settings.brands_file) if settings.brands_file else None
        plan = plan_serving(settings)
        service = PipelineService(app, settings, metrics, plan, matcher=matcher, observer=live, loop=None)
        app.service(cast(Any, service))
        register_ingest(app, settings, service.pipeline)
    if settings.role in ("all", "brands") and settings.brands_file:
        register_brand_agents(
            app,
            settings,
            webhook_url=settings.brands_webhook_url,
            on_alert=alerts.record,
            on_stats=timeline.record,
            # Read once: a changed set takes effect at the next start (the queries reload while running).
            sets=CompetitorSets.from_yaml(settings.brands_file),
            on_share=lambda share: record_share(metrics, share),
        )

    def count_rebalance(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalances.inc()

    app.on_rebalance_complete.connect(count_rebalance)

    return app, service
