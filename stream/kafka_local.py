"""A native single-node Kafka broker for the demo and the integration tests, driven by deploy/kafka/kafka.sh.

Each `LocalKafka` is one state dir (config, data, logs, pid) plus one port pair (broker `port`, KRaft
controller `port + 1`), so a test broker and a demo broker can run side by side.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 19092
DEFAULT_STATE_DIR = REPO_ROOT / ".cache/kafka"

# kafka.sh exits 3 from `status` when the broker is not running (LSB convention).
_STATUS_STOPPED = 3


class LocalKafkaError(RuntimeError):
    """kafka.sh failed; the message carries its stderr."""


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
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

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
        env = {
            **os.environ,
            "SOCIALPULSE_KAFKA_HOME": str(self.state_dir),
            "SOCIALPULSE_KAFKA_PORT": str(self.port),
            "SOCIALPULSE_KAFKA_START_TIMEOUT": str(int(self.start_timeout_s)),
            "SOCIALPULSE_KAFKA_STOP_TIMEOUT": str(int(self.stop_timeout_s)),
        }
        # The controller port is derived from the broker port; an inherited one would collide across brokers.
        env.pop("SOCIALPULSE_KAFKA_CONTROLLER_PORT", None)
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
