"""A native single-node Kafka broker for the demo and the integration tests, driven by deploy/kafka/kafka.sh.

Each `LocalKafka` is one state dir (config, data, logs, pid) plus one port pair (broker `port`, KRaft
controller `port + 1`), so a test broker and a demo broker can run side by side. A broker may also serve
a SASL_SSL listener (`SaslSslListener`) and take extra server properties.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 19092
DEFAULT_STATE_DIR = REPO_ROOT / ".cache/kafka"

# kafka.sh exits 3 from `status` when the broker is not running (LSB convention).
_STATUS_STOPPED = 3


# kafka.sh settings each LocalKafka decides, never inherited from the caller's environment: an inherited
# controller or SASL_SSL port would collide across brokers, and listeners or properties would not be the ones
# the broker was made with.
_NOT_INHERITED = (
    "SOCIALPULSE_KAFKA_CONTROLLER_PORT",
    "SOCIALPULSE_KAFKA_SASL_SSL_PORT",
    "SOCIALPULSE_KAFKA_SSL_KEYSTORE",
    "SOCIALPULSE_KAFKA_SSL_KEYSTORE_PASSWORD",
    "SOCIALPULSE_KAFKA_SCRAM_USERS",
    "SOCIALPULSE_KAFKA_SERVER_PROPERTIES",
)


class LocalKafkaError(RuntimeError):
    """kafka.sh failed; the message carries its stderr."""


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener on 127.0.0.1:`port` (SCRAM-SHA-256 and -512; controller and inter-broker traffic
    stay PLAINTEXT), its PKCS12 keystore, and the SCRAM users (name -> password) stored at format."""

    port: int
    keystore: Path
    keystore_password: str
    users: Mapping[str, str] = field(default_factory=dict)
    mechanism: str = "SCRAM-SHA-512"

    def env(self) -> dict[str, str]:
        return {
            "SOCIALPULSE_KAFKA_SASL_SSL_PORT": str(self.port),
            "SOCIALPULSE_KAFKA_SSL_KEYSTORE": str(self.keystore),
            "SOCIALPULSE_KAFKA_SSL_KEYSTORE_PASSWORD": self.keystore_password,
            "SOCIALPULSE_KAFKA_SCRAM_USERS": "\n".join(
                f"{self.mechanism}=[name={name},password={password}]" for name, password in self.users.items()
            ),
        }


def kafka_script() -> Path:
    """deploy/kafka/kafka.sh of this checkout, or `SOCIALPULSE_KAFKA_SCRIPT` (e.g. for a non-editable install)."""
    override = os.environ.get("SOCIALPULSE_KAFKA_SCRIPT")
    return Path(override) if override else REPO_ROOT / "deploy/kafka/kafka.sh"


class LocalKafka:
    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        port: int = DEFAULT_PORT,
        *,
        start_timeout_s: float = 90.0,
        stop_timeout_s: float = 30.0,
        sasl_ssl: SaslSslListener | None = None,
        server_properties: Mapping[str, str] | None = None,
    ) -> None:
        """`server_properties` replace or add to deploy/kafka/server.properties on every start (e.g.
        {"auto.create.topics.enable": "false"}); SCRAM users are stored only when the storage is formatted,
        so a changed `sasl_ssl.users` needs a `reset`."""
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.sasl_ssl = sasl_ssl
        self.server_properties = dict(server_properties or {})

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        if self.sasl_ssl is None:
            raise LocalKafkaError(f"the broker of {self.state_dir} has no SASL_SSL listener")
        return f"127.0.0.1:{self.sasl_ssl.port}"

    def start(self) -> str:
        """Start the broker (a no-op when it already runs) and return the bootstrap address once it serves."""
        # The first start may resolve the jars with Maven, which the script's own timeout does not cover.
        out = self._run("start", timeout_s=self.start_timeout_s + 600).stdout.strip()
        running_at = out.splitlines()[-1] if out else ""
        if running_at != self.bootstrap:
            raise LocalKafkaError(
                f"the broker of {self.state_dir} serves {running_at or 'nothing'}, not {self.bootstrap}; "
                "stop it or use another state dir"
            )
        log.info("Kafka broker ready at %s (state in %s)", self.bootstrap, self.state_dir)
        return self.bootstrap

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL after stop_timeout_s); a no-op when it is not running."""
        self._run("stop", timeout_s=self.stop_timeout_s + 30)

    def is_running(self) -> bool:
        result = self._run("status", timeout_s=30, ok_codes=(0, _STATUS_STOPPED))
        return result.returncode == 0

    def reset(self) -> None:
        """Stop the broker and delete its data and logs: the next start formats an empty cluster."""
        self._run("reset", timeout_s=self.stop_timeout_s + 30)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(
        self, command: str, *, timeout_s: float, ok_codes: tuple[int, ...] = (0,)
    ) -> subprocess.CompletedProcess[str]:
        env = {name: value for name, value in os.environ.items() if name not in _NOT_INHERITED}
        env.update(
            {
                "SOCIALPULSE_KAFKA_HOME": str(self.state_dir),
                "SOCIALPULSE_KAFKA_PORT": str(self.port),
                "SOCIALPULSE_KAFKA_START_TIMEOUT": str(int(self.start_timeout_s)),
                "SOCIALPULSE_KAFKA_STOP_TIMEOUT": str(int(self.stop_timeout_s)),
                **(self.sasl_ssl.env() if self.sasl_ssl else {}),
            }
        )
        if self.server_properties:
            env["SOCIALPULSE_KAFKA_SERVER_PROPERTIES"] = "\n".join(
                f"{k}={v}" for k, v in self.server_properties.items()
            )
        script = kafka_script()
        try:
            result = subprocess.run(
                [str(script), command],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError as exc:
            raise LocalKafkaError(f"{script} not found; set SOCIALPULSE_KAFKA_SCRIPT") from exc
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(f"{script} {command} did not finish within {timeout_s:.0f}s") from exc
        if result.returncode not in ok_codes:
            raise LocalKafkaError(
                f"{script} {command} failed (exit {result.returncode}):\n{result.stderr.strip()[-4000:]}"
            )
        for line in result.stderr.splitlines():
            log.debug("%s", line)
        return result
