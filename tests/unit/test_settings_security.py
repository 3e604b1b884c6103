"""Kafka security settings are cross-checked at start: Faust and our own clients must mean the same thing."""

from __future__ import annotations

from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from stream.settings import Settings
from stream.worker import create_app


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # Faust took the credentials and used SASL; the producer and admin clients used none.
        ({"kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "needs"),
        ({"kafka_security_protocol": "SASL_SSL"}, "needs SOCIALPULSE_KAFKA_SASL_MECHANISM"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"}, "USERNAME and _PASSWORD"),
        ({"kafka_ssl_cafile": "/etc/hostname"}, "security protocol is PLAINTEXT"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"}, "no such file"),
    ],
)
def test_contradicting_security_settings_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**fields)  # type: ignore[arg-type]


def test_consistent_security_settings_reach_every_client(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="socialpulse",
        kafka_sasl_password="secret",  # type: ignore[arg-type]
    )
    assert settings.kafka_client_options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "socialpulse",
        "sasl_plain_password": "secret",
    }
    assert "secret" not in repr(settings)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_gets_the_security_options_our_own_clients_get(protocol: str, tmp_path: Path) -> None:
    # Faust builds its consumer, producer and topic admin from the app's credentials, not from our options.
    fields: dict[str, object] = {"kafka_security_protocol": protocol, "data_dir": tmp_path}
    if protocol.startswith("SASL_"):
        fields |= {
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": "socialpulse",
            "kafka_sasl_password": "secret",
        }
    settings = Settings(**fields)  # type: ignore[arg-type]
    app = create_app(settings)
    faust_options = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    # Faust spells an absent SSL context as None; aiokafka's default is the same.
    assert {name: value for name, value in faust_options.items() if value is not None} == settings.kafka_client_options
