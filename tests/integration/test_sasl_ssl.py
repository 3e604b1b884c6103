"""The processor behind a SASL_SSL listener with SCRAM-SHA-512 (issue 13).

The worker, `socialpulse replay` and the admin code are configured only through the documented
SOCIALPULSE_KAFKA_* security settings, against a broker of this module's own whose certificates and SCRAM
users are made here. Every record is counted over SASL_SSL; wrong credentials must stop each of them at once
with an error that names the user and mechanism, never the password.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream.kafka_auth import KafkaAuthenticationError
from stream.settings import Settings
from stream.tools.harness import WORKER_COMMAND
from stream.tools.kafka_local import LocalKafka, SaslSslListener
from stream.tools.sample_posts import labelled_stream, load_tweet_texts, write_jsonl
from stream.worker import ensure_topics
from tests.integration.harness import (
    TEST_KAFKA_PORT,
    Topics,
    WorkerProcess,
    fresh_broker,
    read_outputs,
    wait_for_commits,
)

T = TypeVar("T")

# This module's broker: PLAINTEXT (inter-broker only) on TEST_KAFKA_PORT + 2, controller + 3, SASL_SSL + 4.
PORT_OFFSET = 2
SASL_SSL_PORT = TEST_KAFKA_PORT + 4
USER = "socialpulse"
# Random, so finding it in a log cannot be a coincidence.
PASSWORD = f"pw-{secrets.token_hex(12)}"
RECORDS = 300
NO_AUTO_CREATE = {"auto.create.topics.enable": "false"}
# Refused credentials must end a command this soon (a worker's imports take a few seconds on a busy host).
REFUSED_WITHIN_S = 90.0


def make_tls(folder: Path, keystore_password: str) -> tuple[Path, Path]:
    """(CA certificate, broker PKCS12 keystore): a throwaway CA and a certificate for 127.0.0.1 signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=socialpulse test CA",
        "-keyout", "ca.key", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "broker.key", "-out", "broker.csr"
    )
    # Clients check the host name: the certificate must name the address they dial.
    (folder / "broker.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    openssl(
        "x509", "-req", "-days", "2", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-extfile", "broker.ext", "-out", "broker.pem",
    )  # fmt: skip
    openssl(
        "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-name", "broker",
        "-out", "broker.p12", "-passout", f"pass:{keystore_password}",
    )  # fmt: skip
    return folder / "ca.pem", folder / "broker.p12"


@dataclass(frozen=True)
class SaslCluster:
    broker: LocalKafka
    ca: Path

    @property
    def bootstrap(self) -> str:
        return self.broker.sasl_ssl_bootstrap

    def fields(self, username: str, password: str) -> dict[str, str]:
        """The Settings fields of a client logging in as `username`: the documented security settings only."""
        return {
            "kafka_bootstrap": self.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": username,
            "kafka_sasl_password": password,
            "kafka_ssl_cafile": str(self.ca),
        }

    def env(self, username: str, password: str) -> dict[str, str]:
        return {f"SOCIALPULSE_{name.upper()}": value for name, value in self.fields(username, password).items()}

    def settings(self, topics: Topics, username: str = USER, password: str = PASSWORD) -> Settings:
        return Settings(**self.fields(username, password), **topics.fields())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sasl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslCluster]:
    keystore_password = secrets.token_hex(8)
    ca, keystore = make_tls(tmp_path_factory.mktemp("tls"), keystore_password)
    listener = SaslSslListener(SASL_SSL_PORT, keystore, keystore_password, users={USER: PASSWORD})
    # Nothing auto-created: every topic the worker uses must come from its own admin code, over SASL_SSL.
    with fresh_broker(PORT_OFFSET, sasl_ssl=listener, server_properties=NO_AUTO_CREATE) as broker:
        yield SaslCluster(broker, ca)


async def with_admin(cluster: SaslCluster, action: Callable[[AIOKafkaAdminClient], Awaitable[T]]) -> T:
    settings = cluster.settings(Topics())
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, **settings.kafka_client_options)
    await admin.start()
    try:
        return await action(admin)
    finally:
        await admin.close()


def test_the_broker_takes_the_server_properties_it_is_given(sasl: SaslCluster) -> None:
    async def broker_config(admin: AIOKafkaAdminClient) -> dict[str, str]:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
        return {
            entry[0]: entry[1]
            for response in responses
            for _code, _message, _kind, _name, entries, *_ in response.resources
            for entry in entries
        }

    config = asyncio.run(with_admin(sasl, broker_config))
    assert {name: config[name] for name in NO_AUTO_CREATE} == NO_AUTO_CREATE


def replay_command(posts: Path) -> tuple[str, ...]:
    # Untimed, so every record goes out byte for byte as written, bad ones included.
    return ("-m", "stream", "replay", str(posts), "--rate", "0", "--no-retime")


def exit_code(process: WorkerProcess, timeout: float) -> int:
    assert process.process is not None
    try:
        return process.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{process.log_path.stem} still running after {timeout:.0f}s; log tail:\n{process.log_tail()}")


def test_worker_replay_and_admin_over_sasl_ssl_account_for_every_record(sasl: SaslCluster, tmp_path: Path) -> None:
    topics = Topics()
    records = labelled_stream(load_tweet_texts(), RECORDS, malformed_share=0.1, seed=41)
    valid = [r for r in records if r.expected is None]
    bad = [r for r in records if r.expected is not None]
    posts = write_jsonl(records, tmp_path / "posts.jsonl")
    env = sasl.env(USER, PASSWORD)
    options = sasl.settings(topics).kafka_client_options

    # The worker's own admin code (ensure_topics) creates every topic over SASL_SSL before Faust subscribes.
    worker = WorkerProcess(sasl.bootstrap, topics, tmp_path, "worker", **env).start()
    try:
        worker.wait_ready()
        replay = WorkerProcess(sasl.bootstrap, topics, tmp_path, "replay", replay_command(posts), **env).start()
        assert exit_code(replay, timeout=300) == 0, replay.log_tail()
        outputs = asyncio.run(read_outputs(sasl.bootstrap, topics, len(valid), len(bad), 600, options))
        group = topics.fields()["app_id"]
        ends, committed = asyncio.run(wait_for_commits(sasl.bootstrap, group, topics.posts, 60, options))
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()

    assert f"replayed {RECORDS} posts" in replay.log_path.read_text()
    assert sum(ends.values()) == RECORDS
    assert outputs.sentiment_posts() == Counter(r.post_id for r in valid)
    assert outputs.behaviour_posts() == Counter(r.post_id for r in valid)
    assert Counter(reason for reason, _, _ in outputs.dead_letters) == Counter(
        r.expected.value for r in bad if r.expected
    )
    assert sorted(raw for _, raw, _ in outputs.dead_letters) == sorted(r.raw for r in bad)
    assert committed == ends, "the group's offsets did not reach the end of the input"
    for process in (worker, replay):
        assert PASSWORD not in process.log_path.read_text(errors="replace"), f"{process.log_path.stem} logged it"
    print(f"SASL_SSL SCRAM-SHA-512: {RECORDS} records in, {len(valid)} posts out, {len(bad)} dead letters, 0 lost")


@pytest.mark.parametrize(
    ("username", "password"),
    [(USER, f"not-{PASSWORD}"), ("mallory", PASSWORD)],
    ids=["wrong password", "unknown user"],
)
def test_refused_credentials_stop_worker_replay_and_admin_with_a_clear_error(
    sasl: SaslCluster, tmp_path: Path, username: str, password: str
) -> None:
    topics = Topics()
    posts = write_jsonl(labelled_stream(load_tweet_texts(), 20, malformed_share=0.0, seed=42), tmp_path / "p.jsonl")
    env = sasl.env(username, password)

    def assert_clear_refusal(text: str, who: str) -> None:
        assert re.search("authentication failed", text, re.IGNORECASE), f"{who} did not say why:\n{text}"
        assert f"user {username!r}" in text and "SCRAM-SHA-512" in text, f"{who} did not say who:\n{text}"
        assert "Traceback" not in text, f"{who} ended in a traceback:\n{text}"
        assert password not in text and PASSWORD not in text, f"{who} printed a password"

    processes = [
        WorkerProcess(sasl.bootstrap, topics, tmp_path, "worker", WORKER_COMMAND, **env).start(),
        WorkerProcess(sasl.bootstrap, topics, tmp_path, "replay", replay_command(posts), **env).start(),
    ]
    try:
        codes = [exit_code(process, REFUSED_WITHIN_S) for process in processes]
    finally:
        for process in processes:
            process.stop()
    for process, code in zip(processes, codes, strict=True):
        assert code != 0, process.log_tail()
        assert_clear_refusal(process.log_path.read_text(errors="replace"), process.log_path.stem)

    started = time.monotonic()
    with pytest.raises(KafkaAuthenticationError) as refused:
        asyncio.run(ensure_topics(sasl.settings(topics, username, password)))
    assert time.monotonic() - started < REFUSED_WITHIN_S
    assert_clear_refusal(str(refused.value), "ensure_topics")

    # Refused before it did anything: the worker created none of its topics.
    names = asyncio.run(with_admin(sasl, lambda admin: admin.list_topics()))
    assert not [name for name in names if name.startswith(topics.prefix)]
