"""Refused Kafka logins as one clear error, instead of aiokafka's "Unable to bootstrap".

An aiokafka client whose SASL login the broker refuses logs the reason and raises the same
`KafkaConnectionError` as for a broker that is not there, so a command stopped on wrong credentials
with a traceback that blamed the network. `start_client` asks the broker why before giving up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError


class KafkaAuthenticationError(RuntimeError):
    """The broker refused the configured SASL login. The message names the user and mechanism, never the
    password."""


class _Client(Protocol):
    async def start(self) -> None: ...


async def start_client(client: _Client, bootstrap: str, options: Mapping[str, Any]) -> None:
    """`await client.start()`; raises KafkaAuthenticationError when it failed because the broker refused the
    SASL login in `options` (the client's security options, as `Settings.kafka_client_options` spells them)."""
    try:
        await client.start()
    except KafkaConnectionError:
        if options.get("sasl_mechanism"):
            await _raise_if_refused(bootstrap, options)
        raise


async def _raise_if_refused(bootstrap: str, options: Mapping[str, Any]) -> None:
    """Log in to the bootstrap servers until one answers; raise if it refuses. Servers that cannot be
    reached, and other failures, are left to the caller's error."""
    for host, port, _family in collect_hosts(bootstrap, randomize=False):
        try:
            connection = await create_conn(host, port, **options)
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as error:
            raise KafkaAuthenticationError(
                f"Kafka authentication failed: {host}:{port} refused user {options.get('sasl_plain_username')!r} "
                f"with SASL {options['sasl_mechanism']} ({error}); check SOCIALPULSE_KAFKA_SASL_USERNAME, "
                "SOCIALPULSE_KAFKA_SASL_PASSWORD and SOCIALPULSE_KAFKA_SASL_MECHANISM"
            ) from error
        except (OSError, TimeoutError, KafkaError):
            continue
        connection.close()
        return
