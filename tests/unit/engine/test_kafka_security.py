"""Kafka and Triton security settings, replication, access checks and the worker's own pages: pure logic.

The real broker with a SASL_SSL listener and ACLs is in tests/integration/engine/test_secured_kafka.py;
here are the rules that turn settings into client arguments and broker answers into messages.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from streams.config import EngineConfig, describe
from streams.infra.kafka_check import KafkaAccessError, missing_operations, replication
from streams.kafka_security import KafkaSecurity, explain_kafka_error
from tests.integration.secure_kafka import make_tls_files

SASL_ENV = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "engine", "KAFKA_SASL_PASSWORD": "pw-123"}


def test_security_settings_come_from_the_environment_and_the_file_like_the_others(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    f = tmp_path / "engine.toml"
    f.write_text(f'[engine]\nkafka_ssl_cafile = "{tls.cafile}"\nkafka_ssl_check_hostname = false\n'
                 'triton_ssl = true\n')
    cfg = EngineConfig.load(f, env={**SASL_ENV, "TRITON_SSL_ROOT_CERTS": str(tls.cafile)})
    sec = cfg.kafka_security()
    assert (sec.protocol, sec.sasl_mechanism, sec.username, sec.password) == ("SASL_SSL", "SCRAM-SHA-512",
                                                                             "engine", "pw-123")
    assert sec.ssl_cafile == str(tls.cafile) and sec.ssl_check_hostname is False
    assert cfg.triton_tls() is not None and cfg.triton_tls().client_kwargs()["root_certificates"] == str(tls.cafile)
    # Environment text for booleans; a worker process gets the same settings back from as_env().
    assert EngineConfig.load(env={"KAFKA_SSL_CHECK_HOSTNAME": "false"}).kafka_ssl_check_hostname is False
    assert EngineConfig.load(env=cfg.as_env()).kafka_security() == sec
    with pytest.raises(ValueError, match="KAFKA_SSL_CHECK_HOSTNAME"):
        EngineConfig.load(env={"KAFKA_SSL_CHECK_HOSTNAME": "maybe"})
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_PASSWORD", "TRITON_SSL", "EXPLORE_WEB_TOKEN",
                 "EXPLORE_REPLICATION_FACTOR", "EXPLORE_MIN_INSYNC_REPLICAS", "EXPLORE_KEY_PARTITIONER"):
        assert name in describe()


def test_secrets_stay_out_of_the_configs_repr() -> None:
    cfg = EngineConfig.load(env={**SASL_ENV, "EXPLORE_WEB_TOKEN": "tok-456"})
    assert "pw-123" not in repr(cfg) and "tok-456" not in repr(cfg)
    assert "pw-123" not in repr(cfg.kafka_security())
    assert "pw-123" not in cfg.kafka_security().describe()


@pytest.mark.parametrize(("env", "message"), [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs a SASL username and password"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({**SASL_ENV, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"KAFKA_SSL_CAFILE": "/ca.pem"}, "TLS files are set but the Kafka security protocol is PLAINTEXT"),
    ({"TRITON_SSL_ROOT_CERTS": "/ca.pem"}, "triton_ssl"),
    ({"TRITON_SSL": "true", "TRITON_SSL_ROOT_CERTS": "/nowhere/ca.pem"}, "does not exist"),
    ({"EXPLORE_KEY_PARTITIONER": "random"}, "murmur2 or crc32"),
    ({"EXPLORE_REPLICATION_FACTOR": "1", "EXPLORE_MIN_INSYNC_REPLICAS": "2"}, "cannot exceed"),
])
def test_inconsistent_security_settings_are_refused_before_any_connection(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig.load(env=env).triton_tls()


def test_client_arguments_for_each_protocol(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    assert KafkaSecurity().client_kwargs() == {"security_protocol": "PLAINTEXT"}
    sasl = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-256", "u", "p").client_kwargs()
    assert sasl == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                    "sasl_plain_username": "u", "sasl_plain_password": "p"}
    both = KafkaSecurity("SASL_SSL", "PLAIN", "u", "p", ssl_cafile=str(tls.cafile)).client_kwargs()
    context = both["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname and context.get_ca_certs()[0]["subject"] == ((("commonName", "explore test CA"),),)
    mutual = KafkaSecurity("SSL", ssl_cafile=str(tls.cafile), ssl_certfile=str(tls.certfile),
                           ssl_keyfile=str(tls.keyfile), ssl_check_hostname=False).client_kwargs()
    assert not mutual["ssl_context"].check_hostname and "sasl_mechanism" not in mutual


def test_faust_gets_the_same_credentials_as_its_own_classes(tmp_path: Path) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    tls = make_tls_files(tmp_path / "tls")
    assert KafkaSecurity().faust_settings() == {}
    creds = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "u", "p", ssl_cafile=str(tls.cafile)).faust_settings()
    auth = credentials_to_aiokafka_auth(creds["broker_credentials"])
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("u", "p")
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    plain_sasl = credentials_to_aiokafka_auth(
        KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "u", "p").faust_settings()["broker_credentials"])
    assert plain_sasl["security_protocol"] == "SASL_PLAINTEXT" and plain_sasl["ssl_context"] is None
    tls_only = KafkaSecurity("SSL", ssl_cafile=str(tls.cafile)).faust_settings()["broker_credentials"]
    assert isinstance(tls_only, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(tls_only)["security_protocol"] == "SSL"


def test_first_contact_failures_name_the_setting_to_change() -> None:
    sasl = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "engine", "x")
    timeout = type("KafkaTimeoutError", (Exception,), {})("Unable to bootstrap from h:1")
    refused = explain_kafka_error(timeout, "h:1", sasl, "SaslAuthenticationFailedError: Authentication failed")
    assert "refused the credentials" in refused and "KAFKA_SASL_PASSWORD" in refused and "'engine'" in refused
    untrusted = explain_kafka_error(timeout, "h:1", sasl, "Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED]")
    assert "KAFKA_SSL_CAFILE" in untrusted
    plaintext = explain_kafka_error(timeout, "h:1", KafkaSecurity(), "Invalid frame length: 352518912")
    assert "KAFKA_SECURITY_PROTOCOL" in plaintext and "PLAINTEXT" in plaintext
    wrong_listener = explain_kafka_error(timeout, "h:1", sasl, "socket disconnected")
    assert "speaks SASL_SSL" in wrong_listener


def test_replication_follows_the_cluster_unless_set() -> None:
    assert replication(0, 0, brokers=1) == (1, 1)  # the embedded broker
    assert replication(0, 0, brokers=3) == (3, 2)  # one broker may be down, no write on one copy only
    assert replication(0, 0, brokers=5) == (3, 2)
    assert replication(2, 0, brokers=3) == (2, 1)
    assert replication(3, 3, brokers=3) == (3, 3)
    with pytest.raises(KafkaAccessError, match="the cluster has 1"):
        replication(3, 0, brokers=1)


def test_missing_operations_follow_kafkas_implications() -> None:
    need = frozenset({"READ", "WRITE"})
    assert missing_operations(["DESCRIBE", "READ", "WRITE"], need) == set()
    assert missing_operations(["ALL"], need | {"DESCRIBE"}) == set()
    assert missing_operations(["DESCRIBE", "READ"], need) == {"WRITE"}
    assert missing_operations(["READ"], frozenset({"DESCRIBE"})) == set()  # READ implies DESCRIBE
    assert missing_operations([], need) == need
    assert missing_operations(None, need) == set()  # the broker did not say (Tansu)


def test_the_worker_serves_none_of_fausts_own_pages(tmp_path: Path) -> None:
    """/router/ lists every worker, /table/ any table's keys and values: neither is served."""
    import asyncio

    from streams.wiring.faust_app import make_app

    async def prefixes() -> list[str]:
        app = make_app("pages", "127.0.0.1:1", tmp_path, web_port=1)
        return [prefix for prefix, _ in app.web.blueprints._enabled]

    served = asyncio.run(prefixes())
    assert "/router" not in served and "/table" not in served and "/graph" not in served
